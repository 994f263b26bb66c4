"""Statistics: the paired comparison of two cells, per-neuron correlation p-values and
Benjamini–Hochberg FDR control, against hand-computed values and scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness.errors import ConfigError
from harness.scoring.stats import (benjamini_hochberg, bootstrap_ci, compare_cells, fdr_summary, holm, main,
                                   metric_summary, paired_test, pearson_p_value)


def test_paired_test_exact_sign_flip_by_hand():
    # d = [1, 2, 3]: of the 8 sign patterns only +++ and −−− reach |mean| ≥ 2 → p = 2/8
    out = paired_test([2.0, 4.0, 6.0, np.nan], [1.0, 2.0, 3.0, 0.0])
    assert out["mean_diff"] == pytest.approx(2.0) and out["p_value"] == pytest.approx(0.25)
    assert (out["n"], out["n_dropped"], out["wins"], out["losses"], out["ties"]) == (3, 1, 3, 0, 0)
    assert out["ci95"][0] <= 2.0 <= out["ci95"][1]
    # d = [1, -1]: every pattern has |mean| ≥ 0 → p = 1
    assert paired_test([1.0, 0.0], [0.0, 1.0])["p_value"] == 1.0
    assert paired_test([np.nan], [1.0])["p_value"] is None
    with pytest.raises(ConfigError):
        paired_test([1.0, 2.0], [1.0])


def test_paired_test_monte_carlo_detects_a_shift_and_is_seeded():
    rng = np.random.default_rng(1)
    b = rng.normal(size=200)
    shifted = paired_test(b + 0.3 + rng.normal(scale=0.5, size=200), b, n_resamples=2000, seed=3)
    assert shifted["p_value"] < 0.01 and shifted["ci95"][0] > 0
    same = paired_test(b + rng.normal(scale=0.5, size=200), b, n_resamples=2000, seed=3)
    assert same["p_value"] > 0.05 and same["ci95"][0] < 0 < same["ci95"][1]
    assert paired_test(b + 0.1, b, n_resamples=500, seed=7) == paired_test(b + 0.1, b, n_resamples=500, seed=7)
    # the permutation p-value is close to the paired t-test's on roughly normal differences
    d = rng.normal(0.1, 1.0, size=300)
    assert paired_test(d, np.zeros(300), n_resamples=20000)["p_value"] == pytest.approx(
        sps.ttest_1samp(d, 0).pvalue, abs=0.02)


def test_benjamini_hochberg_by_hand():
    # sorted p: 0.01, 0.03, 0.04, 0.5 (m = 4) → p·m/rank: 0.04, 0.06, 0.0533, 0.5 → running min from the top
    q = benjamini_hochberg([0.04, 0.01, np.nan, 0.5, 0.03])
    assert q[[1, 4, 0, 3]] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert math.isnan(q[2])
    assert fdr_summary([0.04, 0.01, np.nan, 0.5, 0.03], q=0.05) == {"q": 0.05, "n_tested": 4, "n_significant": 1,
                                                                    "n_nominal": 3}


def test_holm_by_hand():
    # sorted p: 0.005, 0.01, 0.03, 0.04 (m = 4) → p·(m − i + 1): 0.02, 0.03, 0.06, 0.04 → running max: 0.06 for the last
    p = holm([0.01, 0.04, np.nan, 0.03, 0.005])
    assert p[[4, 0, 3, 1]] == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert math.isnan(p[2])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0] and holm([]).tolist() == []


def test_pearson_p_value_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 0.3 * x + rng.normal(size=50)
    assert pearson_p_value(x, y) == pytest.approx(sps.pearsonr(x, y).pvalue)
    assert math.isnan(pearson_p_value(x, np.ones(50)))  # constant prediction: undefined
    assert math.isnan(pearson_p_value([1.0, 2.0], [1.0, 3.0]))


def test_metric_summary_ranks_on_every_neuron():
    """Two cells with the same defined scores but different coverage: the mean over defined
    neurons ties them; the mean over every neuron (undefined at 0) ranks the better-covered first."""
    full = metric_summary([0.4, 0.4, 0.4, 0.4], 0.0, 500, 0)
    sparse = metric_summary([0.4, np.nan, np.nan, np.nan], 0.0, 500, 0)
    assert full["mean_defined"] == sparse["mean_defined"] == pytest.approx(0.4)
    assert full["mean"] == pytest.approx(0.4) and sparse["mean"] == pytest.approx(0.1)
    assert sparse["coverage"] == 0.25 and sparse["n"] == 4 and sparse["n_defined"] == 1 and sparse["n_failed"] == 3
    assert sparse["ci95"][0] <= sparse["mean"] <= sparse["ci95"][1]
    # No no-information value: no mean over every neuron, only over the defined ones.
    kl = metric_summary([0.1, np.nan], None, 500, 0)
    assert kl["mean"] is None and kl["ci95"] == [None, None] and kl["mean_defined"] == pytest.approx(0.1)
    empty = metric_summary([], 0.5, 500, 0)
    assert empty["mean"] is None and empty["coverage"] is None


def test_bootstrap_ci_counts_failures():
    out = bootstrap_ci([1.0, 2.0, 3.0, np.nan], n_resamples=500, seed=0)
    assert out["mean"] == 2.0 and out["n"] == 3 and out["n_failed"] == 1
    assert bootstrap_ci([1.0, 2.0, 3.0], 500, 0) == bootstrap_ci([1.0, 2.0, 3.0], 500, 0)


def _cell(path, set_hash, scores):
    path.mkdir()
    pd.DataFrame({"layer": [0, 0, 1], "neuron": [1, 2, 3], "correlation.ev_correlation_score": scores}).to_parquet(
        path / "neurons.parquet")
    (path / "summary.json").write_text(json.dumps({"set_hash": set_hash}))
    return path


def test_compare_cells(tmp_path, capsys):
    a = _cell(tmp_path / "a", "h1", [0.5, 0.6, np.nan])
    b = _cell(tmp_path / "b", "h1", [0.1, 0.4, 0.2])
    out = compare_cells(a, b)
    assert out["mean_diff"] == pytest.approx(0.3) and out["n"] == 2 and out["n_dropped"] == 1
    assert main([str(a), str(b)]) == 0 and json.loads(capsys.readouterr().out)["n"] == 2
    other = _cell(tmp_path / "c", "h2", [0.1, 0.4, 0.2])
    with pytest.raises(ConfigError, match="different neuron sets"):
        compare_cells(a, other)
    with pytest.raises(ConfigError, match="no column"):
        compare_cells(a, b, metric="threshold.auroc_max50")
    assert main([str(a), str(other)]) == 2
