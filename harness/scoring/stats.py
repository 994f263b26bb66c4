"""Statistics over neurons: seeded bootstrap confidence intervals, a paired comparison of two
cells on the same set, the minimum detectable difference of such a comparison, Holm's
family-wise correction, and per-neuron significance of the correlation with Benjamini–Hochberg
false-discovery-rate control.

`python -m harness.scoring.stats CELL_A CELL_B [--metric correlation.ev_correlation_score]`
compares two cell output directories (each with neurons.parquet and summary.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import stats as sps

from harness.errors import ConfigError


def bootstrap_ci(values, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over neurons with a percentile bootstrap CI; NaN values are failures, excluded
    from the mean and counted. Returns {mean, ci95: [lo, hi], n, n_failed}."""
    x = np.asarray(values, dtype=np.float64)
    ok = x[np.isfinite(x)]
    out = {"n": int(len(ok)), "n_failed": int(len(x) - len(ok))}
    if len(ok) == 0:
        return {"mean": None, "ci95": [None, None], **out}
    means = ok[resample_indices(len(ok), n_resamples, seed)].mean(axis=1)
    return {"mean": float(ok.mean()), "ci95": percentile_ci(means, level), **out}


@functools.lru_cache(maxsize=4)
def resample_indices(n: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """The seeded bootstrap draw every CI here uses: `n_resamples` rows of `n` indices in [0, n),
    drawn with replacement. Statistics computed on the same rows share one resample of the neurons.
    Memoised (a board render draws the same rows for every entry and pair), so read-only."""
    rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    rows.flags.writeable = False
    return rows


@functools.lru_cache(maxsize=2)
def _sign_flips(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """The seeded random signs of the sign-flip permutation test, drawn in chunks of 1000 rows (as
    before memoising) and kept as int8 (n_resamples × n bytes), read-only."""
    rng = np.random.default_rng(seed)
    signs = np.concatenate([rng.choice([-1.0, 1.0], size=(min(1000, n_resamples - lo), n)).astype(np.int8)
                            for lo in range(0, n_resamples, 1000)])
    signs.flags.writeable = False
    return signs


def percentile_ci(samples, level: float = 0.95) -> list[float]:
    """The percentile interval [lo, hi] of bootstrap `samples` at `level`."""
    alpha = (1 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return [float(lo), float(hi)]


def metric_summary(values, no_information: float | None, n_resamples: int = 2000, seed: int = 0) -> dict:
    """One metric over every neuron of a cell, on a common basis: `mean`/`ci95` over all neurons,
    an undefined value (NaN) counting as the metric's `no_information` value (None when it has
    none), beside `mean_defined`/`ci95_defined` over the neurons where it is defined and the
    `coverage` (n_defined / n). Equal seeds draw the same resamples for both means."""
    x = np.asarray(values, dtype=np.float64)
    defined = bootstrap_ci(x, n_resamples, seed)
    out = {"mean": None, "ci95": [None, None], "n": int(len(x)), "n_defined": defined["n"],
           "n_failed": defined["n_failed"], "coverage": defined["n"] / len(x) if len(x) else None,
           "mean_defined": defined["mean"], "ci95_defined": defined["ci95"], "no_information": no_information}
    if no_information is not None and len(x):
        every = bootstrap_ci(np.where(np.isfinite(x), x, no_information), n_resamples, seed)
        out.update(mean=every["mean"], ci95=every["ci95"])
    return out


# --- Paired comparison of two cells -----------------------------------------------------------

def paired_test(a, b, n_resamples: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired comparison of per-neuron scores `a` and `b` (same neurons, same order).

    Pairs where either side is NaN (a failure) are dropped and counted. Returns the mean
    difference a − b with a seeded percentile bootstrap CI over neurons, and a two-sided
    sign-flip permutation p-value for "mean difference = 0" (each difference's sign flipped at
    random; p = (1 + #{|mean*| ≥ |mean|}) / (1 + resamples); exact, over all 2ⁿ sign patterns,
    when 2ⁿ ≤ n_resamples). Returns {mean_diff, ci95, p_value, n, n_dropped, wins, losses, ties}."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"paired test needs the same neurons on both sides: got {a.shape} and {b.shape} scores")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    n = len(d)
    out = {"n": int(n), "n_dropped": int((~ok).sum()), "wins": int((d > 0).sum()),
           "losses": int((d < 0).sum()), "ties": int((d == 0).sum())}
    if n == 0:
        return {"mean_diff": None, "ci95": [None, None], "p_value": None, **out}
    ci = bootstrap_ci(d, n_resamples, seed, level)["ci95"]
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)
    if n <= 20 and 2**n <= n_resamples:  # every sign pattern
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
        p = float((np.abs(signs @ d / n) >= observed - tol).mean())
    else:
        signs = _sign_flips(n, n_resamples, seed)
        count = 0
        for lo in range(0, n_resamples, 1000):  # float chunks bound memory for large n
            count += int((np.abs(signs[lo:lo + 1000].astype(np.float64) @ d / n) >= observed - tol).sum())
        p = (1 + count) / (1 + n_resamples)
    return {"mean_diff": float(d.mean()), "ci95": ci, "p_value": float(p), **out}


def difference_ci(a, b, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Difference of means a − b of two *independent* samples (e.g. the neurons of two different
    sets): a seeded percentile bootstrap resampling each side on its own (an unpaired, two-sample
    bootstrap). NaN values are failures, excluded and counted. Returns {mean_a, mean_b, diff,
    ci95, n_a, n_b}; None where a side has no value."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"n_a": int(len(a)), "n_b": int(len(b))}
    if len(a) == 0 or len(b) == 0:
        return {"mean_a": float(a.mean()) if len(a) else None, "mean_b": float(b.mean()) if len(b) else None,
                "diff": None, "ci95": [None, None], **out}
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, len(a), size=(n_resamples, len(a)))].mean(axis=1)
             - b[rng.integers(0, len(b), size=(n_resamples, len(b)))].mean(axis=1))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(a.mean() - b.mean()),
            "ci95": [float(lo), float(hi)], **out}


def minimum_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired test at level `alpha` detects with
    probability `power` over `n` neurons whose paired differences have standard deviation `sd`
    (normal approximation): (z_{1−α/2} + z_{power})·sd/√n; 2.80·sd/√n at α = 0.05 and 80% power."""
    if n < 1:
        raise ConfigError(f"a minimum detectable difference needs at least one neuron, got n={n}")
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd / np.sqrt(n))


def compare_cells(dir_a: str | Path, dir_b: str | Path, metric: str = "correlation.ev_correlation_score",
                  n_resamples: int = 10000, seed: int = 0) -> dict:
    """Paired test of `metric` (a neurons.parquet column, `<scorer>.<metric>`) between two cell
    output directories; refuses cells on different sets. Neurons are matched on (layer, neuron)."""
    import pandas as pd

    dirs = [Path(dir_a), Path(dir_b)]
    summaries = []
    for d in dirs:
        if not (d / "summary.json").is_file():
            raise ConfigError(f"{d} is not a complete cell (no summary.json); run `python -m harness` first")
        summaries.append(json.loads((d / "summary.json").read_text()))
    if summaries[0]["set_hash"] != summaries[1]["set_hash"]:
        raise ConfigError(f"the cells ran on different neuron sets ({summaries[0]['set_hash'][:12]}… vs "
                          f"{summaries[1]['set_hash'][:12]}…); a paired test needs the same set")
    tables = [pd.read_parquet(d / "neurons.parquet") for d in dirs]
    for d, t in zip(dirs, tables):
        if metric not in t.columns:
            known = sorted(c for c in t.columns if "." in c and not c.startswith(("floor.", "ceiling.")))
            raise ConfigError(f"{d} has no column {metric!r}; known: {known}")
    merged = tables[0][["layer", "neuron", metric]].merge(tables[1][["layer", "neuron", metric]],
                                                          on=["layer", "neuron"], suffixes=("_a", "_b"))
    result = paired_test(merged[f"{metric}_a"].to_numpy(float), merged[f"{metric}_b"].to_numpy(float),
                         n_resamples, seed)
    return {"metric": metric, "set_hash": summaries[0]["set_hash"], "a": str(dirs[0]), "b": str(dirs[1]),
            "n_unmatched": int(max(len(tables[0]), len(tables[1])) - len(merged)), **result}


# --- Per-neuron significance with FDR control -------------------------------------------------

def pearson_p_value(real, pred) -> float:
    """Two-sided p-value of Pearson r (scipy.stats.pearsonr) over pooled tokens; NaN when r is
    undefined (fewer than 3 tokens or a constant side). Tokens of one window are not independent,
    so this p-value is optimistic: read the FDR count as a screen, not an exact error rate."""
    real, pred = np.asarray(real, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if len(real) < 3 or np.ptp(real) == 0 or np.ptp(pred) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.pearsonr(real, pred).pvalue)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point: neuron i borrows from perm[i] != i."""
    if n < 2:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def benjamini_hochberg(p_values) -> np.ndarray:
    """BH-adjusted q-values (scipy.stats.false_discovery_control); NaN p-values stay NaN and are
    not counted among the tests."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = sps.false_discovery_control(p[ok], method="bh")
    return q


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control): the i-th smallest of m
    p-values times m − i + 1, made non-decreasing in that order, capped at 1. Rejecting where the
    adjusted value is below α keeps the chance of any false rejection at most α. NaN p-values stay
    NaN and are not counted among the tests."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    order = np.flatnonzero(np.isfinite(p))
    order = order[np.argsort(p[order], kind="stable")]
    m = len(order)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


def fdr_summary(p_values, q: float = 0.05) -> dict:
    """{q, n_tested, n_significant (BH at level q), n_nominal (p < q, uncorrected)}."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = benjamini_hochberg(p)
    return {"q": q, "n_tested": int(np.isfinite(p).sum()), "n_significant": int((adjusted <= q).sum()),
            "n_nominal": int((p[np.isfinite(p)] < q).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Paired test of one metric between two cells on the same set.")
    parser.add_argument("cell_a")
    parser.add_argument("cell_b")
    parser.add_argument("--metric", default="correlation.ev_correlation_score")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        print(json.dumps(compare_cells(args.cell_a, args.cell_b, args.metric, args.resamples, args.seed), indent=1))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
