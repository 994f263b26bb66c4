"""Parity with a real server: llama.cpp's OpenAI-compatible server (llama-cpp-python[server], built
by `make llama`) on the SmolLM2 GGUF the project ships, against the in-process all_at_once on the
dequantized float32 weights of the same GGUF, on a real window of the frozen set. The server
computes with the Q4_1 weights and 8-bit quantized activations and returns only the top-20
logprobs, so the two agree to a stated tolerance, not bit for bit: within
0.05 for every value mass, no failed slot, and every expected value within 0.5 on the 0–10 scale
where the slot's value mass is at least 0.5 (SmolLM2 puts most of many slots' mass on non-value
tokens; there the expected value, a ratio of tiny masses,
magnifies the top-20 cut and quantisation noise: measured up to 1.8 on a mass of 0.007). The server
is the `llama_server` fixture (tests/conftest.py); tests/benchmarks/test_served_benchmark.py times it."""

import numpy as np
import pytest

from harness.records import load_set
from harness.simulate import AllAtOnceSimulator, expected_values, make_simulator

EXPLANATION = 'the word "the" and other articles'


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_served_all_at_once_equals_in_process_on_llama_cpp(llama_simulator, smollm2, tmp_path, capsys, record_property):
    neuron = load_set("smollm2-135m-brown-v1", limit=1).neurons[0]
    window = neuron.test[0]
    window = type(window)(tokens=window.tokens[:24], activations=window.activations[:24], kind=window.kind)
    served = make_simulator({**llama_simulator, "call_cache": str(tmp_path / "calls.sqlite")})
    local = AllAtOnceSimulator(model=smollm2.model, tokenizer=smollm2.tokenizer)
    [m_served] = served.masses(EXPLANATION, [window])
    [m_local] = local.masses(EXPLANATION, [window])
    assert served.served.failed_slots == 0 and m_served is not None
    ev_served, ev_local = expected_values(m_served), expected_values(m_local)
    value_mass = m_local.sum(1)  # the probability, in-process, that the slot is written as a value at all
    sure = value_mass >= 0.5
    gap = np.abs(ev_served - ev_local)
    record_property("served_max_ev_gap", float(gap[sure].max()))
    with capsys.disabled():
        print(f"\nllama.cpp parity on a {len(window.tokens)}-token frozen-set window: max |Δmass| "
              f"{np.abs(m_served - m_local).max():.4f}; max |ΔEV| {gap[sure].max():.3f} on the {sure.sum()} slots with "
              f"value mass ≥ 0.5, {gap.max():.3f} on all; corr of EVs {np.corrcoef(ev_served, ev_local)[0, 1]:.4f}")
        for j in range(len(window.tokens)):
            print(f"  {window.tokens[j]!r:>14} value mass local {value_mass[j]:.3f} served {m_served[j].sum():.3f}  "
                  f"EV local {ev_local[j]:.2f} served {ev_served[j]:.2f}")
    # The masses agree everywhere; the expected value, a ratio of masses, only where the slot's
    # value mass is not small (elsewhere the top-20 cut and quantisation noise are magnified).
    assert np.abs(m_served - m_local).max() <= 0.05
    assert sure.sum() >= 3 and gap[sure].max() <= 0.5
