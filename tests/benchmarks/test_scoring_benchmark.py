"""Scoring 300 synthetic neurons (30 test windows × 64 tokens, 10 calibration windows) with every
correlation and threshold metric. Prints the wall time of one pass and puts it in the
benchmark's extra_info; asserts no timing. Runs its code once under the default
`--benchmark-disable`; `pytest tests/benchmarks/test_scoring_benchmark.py --benchmark-enable -s`
repeats it and shows pytest-benchmark's table."""

import time

import numpy as np

from harness.records import ActivationRecord, NeuronRecord
from harness.scoring import Simulated, get_scorer, run_scorers

N_NEURONS, N_TEST, N_CAL, T = 300, 30, 10, 64
KINDS = ["top"] * 10 + ["random"] * 10 + ["quantile"] * 10


def synthetic_batch(seed: int = 0) -> list[Simulated]:
    """Sparse non-negative activations and a noisy simulation on the 0–10 scale."""
    rng = np.random.default_rng(seed)
    batch = []
    for i in range(N_NEURONS):
        def split(n, kinds):
            acts = np.maximum(rng.normal(-1.0, 1.5, size=(n, T)), 0.0)
            sims = np.clip(np.round(10 * acts / 4 + rng.normal(0, 2, size=(n, T))), 0, 10)
            return ([ActivationRecord(tokens=[""] * T, activations=a.tolist(), kind=k) for a, k in zip(acts, kinds)],
                    sims.tolist())
        test, test_sims = split(N_TEST, KINDS)
        cal, cal_sims = split(N_CAL, ["top"] * 5 + ["random"] * 5)
        acts = np.concatenate([r.activations for r in test])
        neuron = NeuronRecord(layer=i // 10, neuron=i % 10, test=test, calibration=cal, mean=float(acts.mean()),
                              max_activation=float(acts.max()) * 1.2)
        batch.append(Simulated(neuron, test_sims, cal_sims))
    return batch


def test_score_300_neurons(benchmark):
    batch = synthetic_batch()
    scorers = [(get_scorer("correlation"), {}),
               (get_scorer("threshold"), {"max_fractions": [0.25, 0.5, 0.75], "quantiles": [0.9, 0.99]})]
    t0 = time.perf_counter()
    rows = run_scorers(scorers, batch)
    once = time.perf_counter() - t0
    rows = benchmark(run_scorers, scorers, batch)
    n_metrics = len(rows[0])
    assert len(rows) == N_NEURONS and n_metrics == 6 + 15
    assert all(np.isfinite(r["threshold.auroc_max50"]) and np.isfinite(r["correlation.ev_correlation_score"])
               for r in rows)
    benchmark.extra_info.update({"neurons": N_NEURONS, "tokens_per_neuron": N_TEST * T, "metrics": n_metrics,
                                 "seconds_one_pass": round(once, 4)})
    print(f"\nscored {N_NEURONS} neurons × {N_TEST * T} test tokens with {n_metrics} correlation and threshold "
          f"metrics in {once:.3f} s ({once / N_NEURONS * 1e3:.2f} ms per neuron)")
