"""What a cell's LLM simulation costs per neuron, new path against old, measured in one run.

1. The cell's simulation work on the first 8 neurons of the frozen set v2 (test and calibration
   with the neuron's top-tokens explanation, then the floor: the same windows with another neuron's
   explanation, the cell's seeded pairing), on the tiny random-init Llama: windows run and CPU
   seconds with the window memo against without it (the memo emptied before every call, as the code
   was before), call by call in turn. Predictions must be equal; the window counts are
   deterministic, so asserted.
2. Threads on the real SmolLM2 (4 frozen-set windows, alternating, best of 2): CPU seconds with
   torch's default threads against one. Predictions must be equal.
CPU seconds are process time (every thread's). Timings are printed, never asserted. Runs once under
the default `--benchmark-disable`; `pytest tests/benchmarks/test_simulation_cost_benchmark.py -s`
shows the report.
"""

import time

import numpy as np
import pytest
import torch

from baselines.top_tokens import TopTokensExplainer
from harness.cell import floor_partners
from harness.paths import REPO_ROOT
from harness.records import load_set
from harness.simulate import AllAtOnceSimulator

V2 = REPO_ROOT / "leaderboard" / "sets" / "smollm2-135m-brown-v2"
N_NEURONS = 8


def cell_calls(neurons) -> list[tuple[str, list]]:
    """(explanation, windows) in the order a cell simulates them: every neuron, then the floor."""
    texts = [TopTokensExplainer().explain(n).text for n in neurons]
    own = [(texts[i], split) for i, n in enumerate(neurons) for split in (n.test, n.calibration)]
    partners = floor_partners(list(range(len(neurons))), seed=0)
    floor = [(texts[partners[i]], split) for i, n in enumerate(neurons) for split in (n.test, n.calibration)]
    return own + floor


def _interleaved(old, new, calls) -> tuple[dict, dict]:
    """Each call on the old path, then on the new one, so both see the same machine load: the
    CPU seconds and predictions of each."""
    t, out = {"old": 0.0, "new": 0.0}, {"old": [], "new": []}
    for explanation, windows in calls:
        old._memo.clear()  # the path before the memo: every call runs all its windows
        for name, sim in (("old", old), ("new", new)):
            t0 = time.process_time()
            out[name].append(sim.simulate(explanation, windows))
            t[name] += time.process_time() - t0
    return t, out


def test_cell_simulation_with_and_without_the_memo(benchmark, tiny_llama):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls = cell_calls(load_set(V2, limit=N_NEURONS).neurons)
        kw = dict(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer, max_context=4096, literal=True)
        old, new = AllAtOnceSimulator(**kw), AllAtOnceSimulator(**kw)
        for sim in (old, new):  # warm-up, and the few-shot block's keys/values cached
            sim.simulate(calls[0][0], calls[0][1][:1])
            sim._memo.clear()
        old.forward_passes = new.forward_passes = 0
        t, sims = benchmark.pedantic(lambda: _interleaved(old, new, calls), rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(sims["old"], sims["new"]):
        assert all(np.allclose(x, y, rtol=0, atol=1e-6) for x, y in zip(a, b))
    report = {"windows_old": old.forward_passes, "windows_new": new.forward_passes,
              "cpu_s_per_neuron_old": t["old"] / N_NEURONS, "cpu_s_per_neuron_new": t["new"] / N_NEURONS,
              "cpu_ratio_new_vs_old": t["new"] / t["old"]}
    benchmark.extra_info.update(report)
    print(f"\na cell's simulation of {N_NEURONS} v2 neurons (test, calibration, floor) on tiny_llama, 1 thread:\n"
          f"  windows run: {report['windows_old']} without the memo, {report['windows_new']} with it\n"
          f"  CPU s per neuron: {report['cpu_s_per_neuron_old']:.3f} -> {report['cpu_s_per_neuron_new']:.3f} "
          f"= {report['cpu_ratio_new_vs_old']:.3f}x")
    assert old.forward_passes == sum(len(w) for _, w in calls)
    assert new.forward_passes == len({(e, tuple(r.tokens)) for e, w in calls for r in w}) < old.forward_passes


@pytest.mark.slow
def test_threads_on_smollm2(benchmark, smollm2):
    windows = load_set(V2, limit=1).neurons[0].test[:4]
    explanation = TopTokensExplainer().explain(load_set(V2, limit=1).neurons[0]).text
    default = torch.get_num_threads()
    sims, best = {}, {}

    def once(threads: int) -> None:
        torch.set_num_threads(threads)
        sim = AllAtOnceSimulator(model=smollm2.model, tokenizer=smollm2.tokenizer)
        sim.simulate(explanation, windows[:1])  # few-shot block and warm-up outside the timing
        sim._memo.clear()
        t0 = time.process_time()
        sims[threads] = sim.simulate(explanation, windows)
        best[threads] = min(best.get(threads, float("inf")), time.process_time() - t0)

    def alternating() -> None:
        for _ in range(2):
            once(default)
            once(1)

    try:
        benchmark.pedantic(alternating, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(default)
    for a, b in zip(sims[default], sims[1]):
        assert np.allclose(a, b, rtol=0, atol=1e-6)
    report = {"threads_default": default, "cpu_s_per_window_default": best[default] / len(windows),
              "cpu_s_per_window_one": best[1] / len(windows), "cpu_ratio_one_vs_default": best[1] / best[default]}
    benchmark.extra_info.update(report)
    print(f"\nall_at_once on SmolLM2, {len(windows)} v2 windows, best of 2 alternating: CPU s per window "
          f"{report['cpu_s_per_window_default']:.2f} with {default} threads, {report['cpu_s_per_window_one']:.2f} "
          f"with 1 = {report['cpu_ratio_one_vs_default']:.2f}x")
