"""Pass-1 speed of building a neuron set on SmolLM2-135M: tokens per second of pass 1 (every
neuron of every layer: exact sums, maxima, active counts, running top-k per pool, sampled window
maxima) against the hooked forward pass alone (the same windows, batches and layers, activations
only read). Goal ≥0.9×. Both are timed alternately in one process, best of `REPEATS`; timings are
printed, not asserted. Runs once under the default `--benchmark-disable`; `pytest
tests/benchmarks/test_build_set_benchmark.py -s` shows the report.
"""

import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.build_set import POOLS, Pass1, make_windows, run_pass1
from harness.corpus import load_corpus
from harness.paths import CONF_DIR

N_WINDOWS, BATCH, THREADS, REPEATS, SAMPLE = 256, 16, 2, 2, 64


@pytest.mark.slow
def test_pass1_throughput_against_the_hooked_forward(benchmark, smollm2):
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        cfg = OmegaConf.load(CONF_DIR / "build_set.yaml")
        corpus = load_corpus(OmegaConf.load(CONF_DIR / "corpus" / "brown.yaml"))
        win, _, _ = make_windows(corpus, smollm2.tokenizer, cfg.window, cfg.explain_fraction, 0, N_WINDOWS)
        layers = list(range(smollm2.neurons.n_layers))
        n_total = len(layers) * smollm2.neurons.n_neurons
        rng = np.random.default_rng(0)
        sample = {p: np.sort(rng.choice(np.flatnonzero(win.pool == i), SAMPLE, replace=False))
                  for i, p in enumerate(POOLS)}
        k_top = {"explain": cfg.counts.explain_top, "scoring": cfg.counts.calibration_top + cfg.counts.test_top}

        def hooked():
            for lo in range(0, len(win.ids), BATCH):
                smollm2.record(torch.from_numpy(win.ids[lo:lo + BATCH]), layers)

        def pass1():
            state = Pass1(n_total, k_top, cfg.window, sample, 0, len(win.ids), smollm2.device)
            run_pass1(smollm2, win, layers, BATCH, state, cfg.alive.min_activation)

        hooked()  # warm-up
        t_hooked = t_pass1 = float("inf")

        def timed():
            nonlocal t_hooked, t_pass1
            for _ in range(REPEATS):  # alternating, so load changes hit both alike
                t0 = time.perf_counter()
                hooked()
                t1 = time.perf_counter()
                pass1()
                t2 = time.perf_counter()
                t_hooked, t_pass1 = min(t_hooked, t1 - t0), min(t_pass1, t2 - t1)

        benchmark.pedantic(timed, rounds=1, iterations=1)
        n_tokens = win.ids.size
        print(f"\npass 1 on SmolLM2-135M ({N_WINDOWS} windows × {cfg.window} tokens, batch {BATCH}, {THREADS} "
              f"threads, best of {REPEATS}): hooked forward {n_tokens / t_hooked:.0f} tok/s, pass 1 "
              f"{n_tokens / t_pass1:.0f} tok/s; pass 1 / hooked = {t_hooked / t_pass1:.2f}× (goal ≥ 0.9×)")
    finally:
        torch.set_num_threads(threads)
