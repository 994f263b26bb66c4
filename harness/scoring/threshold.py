"""The flexible-threshold scores: how well the simulation separates "the neuron is on" from "off".

The true activations of `test` are binarised at several thresholds `t` (a token is positive when
its activation is strictly above `t`):
- `max<P>`: `t = (P/100) · neuron.max_activation` (the neuron's maximum over the whole corpus);
- `q<P>`: `t` = the P-th percentile (np.quantile, linear interpolation) of the neuron's pooled
  **calibration** activations: every token of every calibration window (top and random), whether
  or not the simulator failed on it (0.999 is named `q99_9`). The threshold is something fitted,
  so it is taken from calibration, never from `test`: test labels then depend on the test
  activations only through the comparison with a fixed `t`. Calibration is drawn from the same
  document pool as test by the same top + random selection, so its per-token quantiles estimate
  the share of positive tokens (about 1 − P/100 of the top + random test tokens; test's
  quantile-stratified windows shift the pooled share somewhat); the set's stored
  `quantile_boundaries` are quantiles of *window maxima* and would not. Ignoring the simulation
  makes `t` a property of the neuron alone, the same for every explainer and simulator.

Against each binarisation, per neuron:
- `auroc_<name>`: the area under the ROC curve of the simulation as a score for the positive
  class (Mann–Whitney U / (n₊·n₋), ties counted ½; 0.5 for a constant simulation; NaN when a
  class is empty);
- `balacc_<name>` and `f1_<name>`: balanced accuracy and F1 of the rule "simulation > cut" on
  `test`, where the cut is fitted on the **calibration** split (true labels from calibration at
  the same threshold value `t`): among the midpoints between consecutive distinct calibration
  simulation values (and one cut below all, one above all), the cut maximising calibration
  balanced accuracy, the lowest on ties. NaN when calibration has an empty class (no cut can be
  fitted) or, on `test`, when the metric is undefined (an empty class for balanced accuracy;
  no true and no predicted positive for F1).

Every test token is pooled (top + random + quantile windows); windows the simulator failed on
(None) are left out. The headline is `auroc_max50`: AUROC against "above half the neuron's
corpus maximum", which needs no fitting and is insensitive to the simulator's scale.
"""

from __future__ import annotations

import numpy as np

from harness.records import ActivationRecord

HEADLINE = "auroc_max50"


def _pool(records: list[ActivationRecord], sims: list[list[float] | None]) -> tuple[np.ndarray, np.ndarray]:
    real: list[float] = []
    pred: list[float] = []
    for r, sim in zip(records, sims, strict=True):
        if sim is not None:
            real += r.activations
            pred += sim
    return np.asarray(real, dtype=np.float64), np.asarray(pred, dtype=np.float64)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata's default)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def _label(p: float) -> str:
    """0.5 → "50", 0.25 → "25", 0.999 → "99_9" (no dots: metric names join scorer names with ".")."""
    return f"{100 * p:g}".replace(".", "_")


def auroc(labels: np.ndarray, scores: np.ndarray, ranks: np.ndarray | None = None) -> float:
    """Area under the ROC curve of `scores` for boolean `labels` (ties ½); NaN if a class is empty.
    `ranks` (average ranks of `scores`) may be passed to reuse them across several labellings."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    if ranks is None:
        ranks = average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """(TPR + TNR) / 2; NaN when a class is empty."""
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(((predicted & labels).sum() / n_pos + (~predicted & ~labels).sum() / n_neg) / 2)


def f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    """2·TP / (2·TP + FP + FN); NaN when there is no true and no predicted positive."""
    tp = int((predicted & labels).sum())
    denom = 2 * tp + int((predicted & ~labels).sum()) + int((~predicted & labels).sum())
    return float(2 * tp / denom) if denom else float("nan")


class _CutFitter:
    """Fits "sim > cut" on one split's simulations for many labellings: the candidate cuts
    (midpoints of consecutive distinct values, one below all and one above all) and the sort
    are computed once."""

    def __init__(self, sims: np.ndarray):
        self.order = np.argsort(sims, kind="stable")
        values = np.unique(sims)
        if len(values) == 0:
            values = np.zeros(1)
        self.cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
        self.at_or_below = np.searchsorted(sims[self.order], self.cuts, side="right")  # tokens with sim <= cut

    def fit(self, labels: np.ndarray) -> float:
        n_pos = int(labels.sum())
        n_neg = len(labels) - n_pos
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        pos_le = np.concatenate([[0], np.cumsum(labels[self.order])])[self.at_or_below]
        tpr = 1 - pos_le / n_pos
        tnr = (self.at_or_below - pos_le) / n_neg
        return float(self.cuts[int(np.argmax((tpr + tnr) / 2))])  # argmax: the lowest on ties


def fit_cut(labels: np.ndarray, sims: np.ndarray) -> float:
    """The cut c of the rule "sim > c" with the best balanced accuracy on (labels, sims): the
    lowest among midpoints of consecutive distinct values and one cut below/above all of them.
    NaN when a class is empty."""
    return _CutFitter(np.asarray(sims, dtype=np.float64)).fit(np.asarray(labels, dtype=bool))


def thresholds(neuron, max_fractions, quantiles) -> dict[str, float]:
    """{name: threshold value} for the neuron's configured binarisations: `max<P>` from the neuron's
    corpus maximum, `q<P>` from the per-token activations of its calibration split (never test;
    NaN when calibration has no token)."""
    out = {f"max{_label(p)}": float(p) * float(neuron.max_activation) for p in max_fractions}
    cal_real = np.asarray([a for r in neuron.calibration for a in r.activations], dtype=np.float64)
    if len(cal_real):
        values = np.quantile(cal_real, list(quantiles)) if len(quantiles) else []
        out.update({f"q{_label(q)}": float(v) for q, v in zip(quantiles, values)})
    else:
        out.update({f"q{_label(q)}": float("nan") for q in quantiles})
    return out


def threshold_scores(neuron, test_sims: list[list[float] | None], calibration_sims: list[list[float] | None],
                     max_fractions=(0.25, 0.5, 0.75), quantiles=(0.9, 0.99)) -> dict[str, float]:
    real, pred = _pool(neuron.test, test_sims)
    cal_real, cal_pred = _pool(neuron.calibration, calibration_sims)
    ranks = average_ranks(pred)
    fitter = _CutFitter(cal_pred) if len(cal_real) else None
    auc: dict[str, float] = {}
    balacc: dict[str, float] = {}
    f1s: dict[str, float] = {}
    for name, t in thresholds(neuron, max_fractions, quantiles).items():
        auc[name] = balacc[name] = f1s[name] = float("nan")
        if not np.isfinite(t) or len(real) == 0:
            continue
        labels = real > t
        auc[name] = auroc(labels, pred, ranks)
        cut = fitter.fit(cal_real > t) if fitter is not None else float("nan")
        if np.isfinite(cut):
            predicted = pred > cut
            balacc[name] = balanced_accuracy(labels, predicted)
            f1s[name] = f1(labels, predicted)
    return {**{f"auroc_{k}": v for k, v in auc.items()}, **{f"balacc_{k}": v for k, v in balacc.items()},
            **{f"f1_{k}": v for k, v in f1s.items()}}
