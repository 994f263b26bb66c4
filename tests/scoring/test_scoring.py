import math

import numpy as np
import pytest

from harness.records import ActivationRecord
from harness.scoring import get_scorer
from harness.scoring import SCORERS, Simulated, run_scorers
from harness.records import NeuronRecord
from harness.scoring.correlation import (absolute_dev_explained, correlation_scores, fit_linear_calibration, pearson,
                                         rsquared)
from harness.scoring.stats import bootstrap_ci
from harness.errors import ConfigError


def _records():
    return [ActivationRecord(tokens=list("abcd"), activations=[0.0, 1.0, 3.0, 0.0], kind="top"),
            ActivationRecord(tokens=list("efgh"), activations=[0.0, 0.5, 0.0, 0.0], kind="random"),
            ActivationRecord(tokens=list("ijkl"), activations=[9.0, 9.0, 9.0, 9.0], kind="quantile")]


def _calibration():
    return [ActivationRecord(tokens=list("mnop"), activations=[1.0, 3.0, 5.0, 7.0], kind="top"),
            ActivationRecord(tokens=list("qrst"), activations=[0.0, 2.0, 0.0, 4.0], kind="random")]


def test_scores_match_hand_computed_values():
    real = np.array([0.0, 1.0, 3.0, 0.0])
    pred = np.array([0.0, 2.0, 2.0, 1.0])
    # Pearson by hand: means 1 and 1.25; cov = sum((r-1)(p-1.25)) = 1.25+(-.75*0)+... computed explicitly
    dr, dp = real - 1.0, pred - 1.25
    r = (dr * dp).sum() / math.sqrt((dr**2).sum() * (dp**2).sum())
    assert pearson(real, pred) == pytest.approx(r)
    # rsquared = 1 - mean((r-p)^2)/mean(r^2) = 1 - (0+1+1+1)/4 / (0+1+9+0)/4 = 1 - 3/10
    assert rsquared(real, pred) == pytest.approx(0.7)
    # absolute_dev_explained = 1 - mean|r-p|/mean|r| = 1 - 3/4 / (4/4) = 0.25
    assert absolute_dev_explained(real, pred) == pytest.approx(0.25)


def test_ev_correlation_pools_top_and_random_only():
    sims = [[0.0, 1.0, 3.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]]
    cal = _calibration()
    scores = correlation_scores(_records(), sims, cal, [r.activations for r in cal])  # identity calibration
    # A perfect prediction on top+random: the wildly wrong quantile record is not pooled.
    assert scores["ev_correlation_score"] == pytest.approx(1.0)
    assert scores["ev_correlation_random"] == pytest.approx(1.0)
    assert scores["rsquared"] == pytest.approx(1.0, rel=1e-5)
    assert scores["rsquared_uncalibrated"] == pytest.approx(1.0)
    assert scores["absolute_dev_explained"] == pytest.approx(1.0, rel=1e-5)


def _affine(records, slope, intercept):
    """Simulations with true = slope·sim + intercept exactly."""
    return [[(a - intercept) / slope for a in r.activations] for r in records]


def test_calibrated_scores_of_an_affine_simulation_are_perfect():
    test, cal = _records(), _calibration()
    sims, cal_sims = _affine(test, 0.5, -1.0), _affine(cal, 0.5, -1.0)  # sim = 2·true + 2 on both splits
    scores = correlation_scores(test, sims, cal, cal_sims)
    assert scores["rsquared"] == pytest.approx(1.0, rel=1e-5)
    assert scores["absolute_dev_explained"] == pytest.approx(1.0, rel=1e-5)
    # uncalibrated, the same simulation is far off: top+random true [0,1,3,0,0,.5,0,0], sim 2·true+2
    real = np.array([0, 1, 3, 0, 0, 0.5, 0, 0])
    assert scores["rsquared_uncalibrated"] == pytest.approx(rsquared(real, 2 * real + 2), rel=1e-5)
    assert scores["rsquared_uncalibrated"] < 0 and scores["absolute_dev_explained_uncalibrated"] < 0
    assert scores["ev_correlation_score"] == pytest.approx(1.0, rel=1e-5)


def test_calibration_is_fitted_on_calibration_only():
    test, cal = _records(), _calibration()
    cal_sims = _affine(cal, 2.0, 1.0)  # calibration says true = 2·sim + 1
    assert fit_linear_calibration(cal, cal_sims) == pytest.approx((2.0, 1.0), rel=1e-5)
    # a test simulation that is exactly affine in the truth, but with another map than calibration's:
    # fitting on test would make it perfect; fitted on calibration it is scored as 2·sim + 1
    sims = _affine(test, 0.5, 0.0)  # sim = 2·true
    scores = correlation_scores(test, sims, cal, cal_sims)
    real = np.array([0, 1, 3, 0, 0, 0.5, 0, 0])
    assert scores["rsquared"] == pytest.approx(rsquared(real, 2 * (2 * real) + 1), rel=1e-5)
    assert scores["absolute_dev_explained"] == pytest.approx(absolute_dev_explained(real, 4 * real + 1), rel=1e-5)
    assert scores["rsquared"] < 0.9
    # changing test-only data leaves the fitted map alone …
    other = correlation_scores(test, _affine(test, 0.25, 3.0), cal, cal_sims)
    pred = 2 * (4 * real - 12) + 1
    assert other["rsquared"] == pytest.approx(rsquared(real, pred), rel=1e-5)
    # … and changing calibration changes it (and the scores)
    moved = correlation_scores(test, sims, cal, _affine(cal, 0.5, 0.0))
    assert moved["rsquared"] == pytest.approx(1.0, rel=1e-5) and moved["rsquared"] != pytest.approx(scores["rsquared"])
    # calibration windows the simulator failed on are left out of the fit
    assert fit_linear_calibration(cal, [cal_sims[0], None]) == pytest.approx((2.0, 1.0), rel=1e-5)
    assert fit_linear_calibration(cal + cal, cal_sims + [[0.0] * 4, None]) != pytest.approx((2.0, 1.0), rel=1e-5)


def test_constant_calibration_simulation_predicts_the_calibration_mean():
    test, cal = _records(), _calibration()
    slope, intercept = fit_linear_calibration(cal, [[3.0] * 4, [3.0] * 4])
    assert (slope, intercept) == pytest.approx((0.0, 22 / 8), rel=1e-5)  # mean of 1,3,5,7,0,2,0,4
    scores = correlation_scores(test, [[1.0, 2.0, 3.0, 4.0]] * 3, cal, [[3.0] * 4, [3.0] * 4])
    real = np.array([0, 1, 3, 0, 0, 0.5, 0, 0])
    assert scores["rsquared"] == pytest.approx(rsquared(real, np.full(8, 22 / 8)), rel=1e-5)
    # nothing to fit on (no calibration given, or every calibration window failed) → NaN, not 0
    assert math.isnan(correlation_scores(test, [[1.0] * 4] * 3)["rsquared"])
    failed = correlation_scores(test, [[1.0] * 4] * 3, cal, [None, None])
    assert math.isnan(failed["rsquared"]) and math.isnan(failed["absolute_dev_explained"])
    assert not math.isnan(failed["rsquared_uncalibrated"])


def test_correlation_scorer_reads_the_calibration_simulation():
    assert SCORERS["correlation"].needs_calibration
    test, cal = _records(), _calibration()
    neuron = NeuronRecord(layer=0, neuron=0, calibration=cal, test=test)
    batch = [Simulated(neuron, _affine(test, 0.5, -1.0), _affine(cal, 0.5, -1.0))]
    row = run_scorers([(SCORERS["correlation"], {})], batch)[0]
    assert row["correlation.rsquared"] == pytest.approx(1.0, rel=1e-5)
    assert row["correlation.rsquared_uncalibrated"] < 0


def test_constant_prediction_is_nan_not_zero():
    sims = [[5.0] * 4, [5.0] * 4, [5.0] * 4]
    scores = correlation_scores(_records(), sims)
    assert math.isnan(scores["ev_correlation_score"])


def test_misaligned_simulation_is_an_error():
    with pytest.raises(ValueError):
        correlation_scores(_records(), [[0.0] * 4])


def test_bootstrap_ci_is_seeded_and_counts_failures():
    values = [0.1, 0.5, float("nan"), 0.3, 0.9, 0.2]
    a, b = bootstrap_ci(values, seed=3), bootstrap_ci(values, seed=3)
    assert a == b
    assert a["n"] == 5 and a["n_failed"] == 1
    assert a["mean"] == pytest.approx(np.mean([0.1, 0.5, 0.3, 0.9, 0.2]))
    lo, hi = a["ci95"]
    assert lo < a["mean"] < hi
    assert bootstrap_ci([float("nan")])["mean"] is None


def test_unknown_scorer_lists_known_ones():
    with pytest.raises(ConfigError, match="correlation"):
        get_scorer("nope")
