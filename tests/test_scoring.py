import math

import numpy as np
import pytest

from harness.records import ActivationRecord
from harness.scoring import get_scorer
from harness.scoring.correlation import absolute_dev_explained, correlation_scores, pearson, rsquared
from harness.scoring.stats import bootstrap_ci
from harness.errors import ConfigError


def _records():
    return [ActivationRecord(tokens=list("abcd"), activations=[0.0, 1.0, 3.0, 0.0], kind="top"),
            ActivationRecord(tokens=list("efgh"), activations=[0.0, 0.5, 0.0, 0.0], kind="random"),
            ActivationRecord(tokens=list("ijkl"), activations=[9.0, 9.0, 9.0, 9.0], kind="quantile")]


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
    scores = correlation_scores(_records(), sims)
    # A perfect prediction on top+random: the wildly wrong quantile record is not pooled.
    assert scores["ev_correlation_score"] == pytest.approx(1.0)
    assert scores["ev_correlation_random"] == pytest.approx(1.0)
    assert scores["rsquared"] == pytest.approx(1.0)


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
