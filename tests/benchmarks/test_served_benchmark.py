"""Served against in-process all_at_once on SmolLM2-135M: windows per second of the simulator over
llama.cpp's OpenAI-compatible server (the `llama_server` fixture: the project's Q4_1 GGUF, one
thread, echo + top-20 logprobs, a fresh call cache) against the in-process simulator on the dequantized
float32 weights (one thread, prefix reused, windows batched), on the same real frozen-set windows.
Both are timed alternately in one process, best of `REPEATS`, each repeat with its own explanation
so that no request is answered from the call cache (asserted); the ratio is printed, not asserted.
Runs once under the default `--benchmark-disable`; `pytest tests/benchmarks/test_served_benchmark.py
-s` shows the report.
"""

import time

import pytest

from harness.records import load_set
from harness.simulate import AllAtOnceSimulator, make_simulator

N_WINDOWS, TOKENS, REPEATS = 1, 24, 2
EXPLANATIONS = ['the word "the" and other articles', "verbs in the past tense"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_served_against_in_process_windows_per_second(benchmark, llama_simulator, smollm2, tmp_path):
    windows = [type(w)(tokens=w.tokens[:TOKENS], activations=w.activations[:TOKENS], kind=w.kind)
               for w in load_set("smollm2-135m-brown-v1", limit=1).neurons[0].test[:N_WINDOWS]]
    served = make_simulator({**llama_simulator, "call_cache": str(tmp_path / "calls.sqlite")})
    local = AllAtOnceSimulator(model=smollm2.model, tokenizer=smollm2.tokenizer)
    local.masses(EXPLANATIONS[0], windows[:1])  # warm-up (and the few-shot block's cache, kept across calls)
    t_served = t_local = float("inf")

    def timed():
        nonlocal t_served, t_local
        for r in range(REPEATS):  # alternating, so load changes hit both alike
            explanation = EXPLANATIONS[r % len(EXPLANATIONS)]
            t0 = time.perf_counter()
            served.masses(explanation, windows)
            t1 = time.perf_counter()
            local.masses(explanation, windows)
            t2 = time.perf_counter()
            t_served, t_local = min(t_served, t1 - t0), min(t_local, t2 - t1)

    benchmark.pedantic(timed, rounds=1, iterations=1)
    ledger = served.served.llm.ledger
    assert ledger.cache_hits == 0  # every repeat asked the server
    print(f"\nall_at_once on SmolLM2-135M ({N_WINDOWS} frozen-set window(s) × {TOKENS} tokens, 1 thread each, best of "
          f"{REPEATS}): served by llama.cpp {N_WINDOWS / t_served:.3f} windows/s ({served.served.slots // REPEATS} slots, "
          f"{served.served.failed_slots // REPEATS} failed: no value in the top 20; {ledger.calls // REPEATS} requests: "
          f"one echoed prompt per window, one continuation per slot with \"1\" in its top 20), in-process "
          f"{N_WINDOWS / t_local:.3f} windows/s; served / in-process = {t_local / t_served:.3f}×")
