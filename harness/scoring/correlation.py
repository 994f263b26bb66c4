"""OpenAI's simulation scores (Bills et al. 2023, neuron-explainer), on raw activations.

Every metric is over the test tokens of the top and random records pooled (quantile-stratified
windows are not pooled); windows the simulator failed on (None) are left out.

- `ev_correlation_score`: Pearson correlation between true and simulated activations (OpenAI's
  preferred score; unchanged by any increasing affine map of the simulation, so it needs no
  calibration);
- `ev_correlation_random`: the same on random records only;
- `rsquared`: 1 − mean((r − p)²) / mean(r²) (uncentred), with p the *calibrated* simulation;
- `absolute_dev_explained`: 1 − mean|r − p| / mean|r|, with p calibrated;
- `rsquared_uncalibrated`, `absolute_dev_explained_uncalibrated`: the same two on the raw 0–10
  simulation. They are kept because they are what this harness reported before calibration was
  added, and the gap shows what the simulator's scale alone costs; they are not OpenAI's scores.

Calibration follows OpenAI's `LinearCalibratedNeuronSimulator`: an ordinary least-squares line
true ≈ slope · sim + intercept fitted on the **calibration** split (every calibration token with
a simulation: the split holds top and random windows) and applied unchanged to the test
simulation, so nothing fitted sees `test`. A constant calibration simulation carries no
information: the fit is slope 0 and intercept = the mean true calibration activation (what
least squares with a free intercept gives, and what scikit-learn's LinearRegression returns).
With no calibration token to fit on, the calibrated metrics are NaN.
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
    denom = np.mean(real**2) if len(real) else 0.0
    return float(1 - np.mean((real - pred) ** 2) / denom) if denom > 0 else float("nan")


def absolute_dev_explained(real: np.ndarray, pred: np.ndarray) -> float:
    denom = np.mean(np.abs(real)) if len(real) else 0.0
    return float(1 - np.mean(np.abs(real - pred)) / denom) if denom > 0 else float("nan")


def pooled(records: list[ActivationRecord], sims: list[list[float] | None], kinds: set[str] | None = None):
    """Concatenate true and simulated activations of the records of `kinds` (every kind when
    None); windows the simulator failed on (None) are left out."""
    pairs = [(r.activations, s) for r, s in zip(records, sims, strict=True)
             if (kinds is None or r.kind in kinds) and s is not None]
    real = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in pairs]) if pairs else np.zeros(0)
    pred = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in pairs]) if pairs else np.zeros(0)
    return real, pred


def fit_linear_calibration(records: list[ActivationRecord], sims: list[list[float] | None]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line true ≈ slope·sim + intercept over every token of
    `records` with a simulation; (0, mean true activation) for a constant simulation; (NaN, NaN)
    with no token to fit on. Pass the calibration split, never test."""
    y, x = pooled(records, sims)
    if len(x) == 0:
        return float("nan"), float("nan")
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        return 0.0, float(y.mean())
    slope = float(dx @ (y - y.mean())) / sxx
    return slope, float(y.mean() - slope * x.mean())


def correlation_scores(records: list[ActivationRecord], sims: list[list[float] | None],
                       calibration_records: list[ActivationRecord] | None = None,
                       calibration_sims: list[list[float] | None] | None = None) -> dict[str, float]:
    """The scores of `sims` on the test `records`; the linear calibration behind `rsquared` and
    `absolute_dev_explained` is fitted on (`calibration_records`, `calibration_sims`), and those
    two are NaN when no calibration is given."""
    real, pred = pooled(records, sims, {"top", "random"})
    real_random, pred_random = pooled(records, sims, {"random"})
    if calibration_records is not None and calibration_sims is not None:
        slope, intercept = fit_linear_calibration(calibration_records, calibration_sims)
    else:
        slope = intercept = float("nan")
    if np.isfinite(slope):
        calibrated = slope * pred + intercept
        r2, ade = rsquared(real, calibrated), absolute_dev_explained(real, calibrated)
    else:
        r2 = ade = float("nan")
    return {
        "ev_correlation_score": pearson(real, pred),
        "ev_correlation_random": pearson(real_random, pred_random),
        "rsquared": r2,
        "absolute_dev_explained": ade,
        "rsquared_uncalibrated": rsquared(real, pred),
        "absolute_dev_explained_uncalibrated": absolute_dev_explained(real, pred),
    }
