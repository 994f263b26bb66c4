"""Statistics over neurons: seeded bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over neurons with a percentile bootstrap CI; NaN values are failures, excluded
    from the mean and counted. Returns {mean, ci95: [lo, hi], n, n_failed}."""
    x = np.asarray(values, dtype=np.float64)
    ok = x[np.isfinite(x)]
    out = {"n": int(len(ok)), "n_failed": int(len(x) - len(ok))}
    if len(ok) == 0:
        return {"mean": None, "ci95": [None, None], **out}
    rng = np.random.default_rng(seed)
    means = ok[rng.integers(0, len(ok), size=(n_resamples, len(ok)))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": float(ok.mean()), "ci95": [float(lo), float(hi)], **out}
