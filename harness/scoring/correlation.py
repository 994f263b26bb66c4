"""OpenAI's simulation scores (Bills et al. 2023, neuron-explainer), on raw activations.

- `ev_correlation_score`: Pearson correlation between true and simulated activations over all
  tokens of the top and random records pooled (OpenAI's preferred score);
- `ev_correlation_random`: the same on random records only;
- `rsquared`: 1 − mean((r − p)²) / mean(r²) (uncentred);
- `absolute_dev_explained`: 1 − mean|r − p| / mean|r|.
"""

from __future__ import annotations

import numpy as np

from harness.records import ActivationRecord


def pearson(real: np.ndarray, pred: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (the correlation is undefined)."""
    if len(real) < 2 or np.ptp(real) == 0 or np.ptp(pred) == 0:
        return float("nan")
    return float(np.corrcoef(real, pred)[0, 1])


def rsquared(real: np.ndarray, pred: np.ndarray) -> float:
    denom = np.mean(real**2)
    return float(1 - np.mean((real - pred) ** 2) / denom) if denom > 0 else float("nan")


def absolute_dev_explained(real: np.ndarray, pred: np.ndarray) -> float:
    denom = np.mean(np.abs(real))
    return float(1 - np.mean(np.abs(real - pred)) / denom) if denom > 0 else float("nan")


def pooled(records: list[ActivationRecord], sims: list[list[float] | None], kinds: set[str]):
    """Concatenate true and simulated activations of the records of `kinds`; windows the
    simulator failed on (None) are left out."""
    pairs = [(r.activations, s) for r, s in zip(records, sims, strict=True) if r.kind in kinds and s is not None]
    real = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in pairs]) if pairs else np.zeros(0)
    pred = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in pairs]) if pairs else np.zeros(0)
    return real, pred


def correlation_scores(records: list[ActivationRecord], sims: list[list[float] | None]) -> dict[str, float]:
    real, pred = pooled(records, sims, {"top", "random"})
    real_random, pred_random = pooled(records, sims, {"random"})
    return {
        "ev_correlation_score": pearson(real, pred),
        "ev_correlation_random": pearson(real_random, pred_random),
        "rsquared": rsquared(real, pred),
        "absolute_dev_explained": absolute_dev_explained(real, pred),
    }
