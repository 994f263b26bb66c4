"""Scorer agreement (issue 23): Kendall τ between scorers' rankings of entries with a bootstrap CI
over neurons, per-neuron Spearman ρ, and the board's section. Hand-built entries, except the last
tests: three verified entries on the leaderboard tests' tiny set (tiny_gpt2, no real model)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from harness import leaderboard as lb
from harness.agreement import agreements, kendall_tau_b, render_set, set_agreement
from harness.cell import run_cell
from harness.errors import ConfigError
from tests.cells import cell_cfg
from tests.leaderboard.test_leaderboard import lb_sets  # noqa: F401  (session fixture)

CORR, THR = "correlation.ev_correlation_score", "threshold.auroc_max50"


def entry(name, corr, thr, set_name="s", set_hash="a" * 64, scorers=("correlation", "threshold")):
    """An entry as agreement reads it: per-neuron headline values (None: undefined)."""
    return {"name": name, "neuron_set": {"name": set_name, "hash": set_hash}, "scorers": {s: {} for s in scorers},
            "neurons": [{"layer": 0, "neuron": i, "scores": {CORR: c, THR: t}}
                        for i, (c, t) in enumerate(zip(corr, thr))]}


NOISE = np.random.default_rng(1).normal(0, 0.05, size=40)  # shared by every entry: differences are exact shifts


def shifted(k: int, direction: int) -> dict:
    """Entry k: correlation rises with k; threshold rises (direction 1) or falls (-1) with k."""
    return entry(f"e{k}", list(0.1 * k + NOISE), list(0.5 + direction * 0.05 * k + NOISE))


def test_scorers_that_rank_alike_have_tau_one_with_a_ci_of_one():
    entries = [shifted(k, 1) for k in range(5)]
    entries[2]["neurons"].reverse()  # neurons are matched by (layer, neuron), not by position
    sa = set_agreement(entries, n_resamples=200, seed=3)
    (pair,) = sa.pairs
    assert pair.scorers == ("correlation", "threshold") and pair.metrics == ("ev_correlation_score", "auroc_max50")
    assert pair.entries == [f"e{k}" for k in range(5)] and pair.n_neurons == 40 and sa.n_entries == 5
    assert pair.tau == 1.0 and pair.ci95 == [1.0, 1.0]
    table = "\n".join(render_set(sa))
    assert "| 5 | 40 | +1.00 | [+1.00, +1.00] |" in table and "The same order in nearly every resample" in table


def test_scorers_that_rank_in_reverse_have_tau_minus_one():
    (pair,) = set_agreement([shifted(k, -1) for k in range(4)], n_resamples=200).pairs
    assert pair.tau == -1.0 and pair.ci95 == [-1.0, -1.0]


def test_tau_is_seeded_and_its_ci_spans_resampling_noise():
    rng = np.random.default_rng(0)
    # Entries 0 and 1 differ by a hair under correlation, so resamples swap them: the CI opens up.
    entries = [entry(f"e{k}", list(0.1 * (k > 0) + 0.001 * k + rng.normal(0, 0.2, 40)), list(0.5 + 0.05 * k + NOISE))
               for k in range(4)]
    first, again = (set_agreement(entries, n_resamples=300, seed=7).pairs[0] for _ in range(2))
    assert first.ci95 == again.ci95
    assert first.ci95[0] < first.ci95[1] <= 1.0 and first.ci95[0] <= first.tau


def test_per_neuron_spearman_is_computed_within_each_entry():
    x = [0.1, 0.2, 0.3, 0.4, 0.5]
    entries = [entry("a", x, [0.6, 0.5, 0.7, 0.8, 0.9]),  # one adjacent swap: ρ = 1 − 6·2/(5·24) = 0.9
               entry("b", x, [0.5, 0.6, 0.7, 0.8, 0.9]),  # monotone: ρ = 1
               entry("c", x, [0.9, 0.8, 0.7, 0.6, 0.5])]  # reversed: ρ = −1
    (pair,) = set_agreement(entries, n_resamples=50).pairs
    assert np.allclose(pair.rho, [0.9, 1.0, -1.0])
    row = render_set(set_agreement(entries, n_resamples=50))[4]
    assert "| +0.90 | -1.00 | +1.00 | 3 of 3 entries |" in row


def test_undefined_values_count_at_the_no_information_value():
    # Counted at 0, entry "a" (mean 0.45) ranks below "b" (0.6) under correlation, as under threshold;
    # were undefined neurons dropped, "a" (0.9) would rank above "b" and τ would fall to −1/3.
    entries = [entry("a", [None, None, 0.9, 0.9], [0.55, 0.55, 0.56, 0.57]),
               entry("b", [0.6, 0.6, 0.6, 0.61], [0.60, 0.61, 0.62, 0.63]),
               entry("c", [0.7, 0.7, 0.7, 0.71], [0.70, 0.71, None, 0.73])]
    (pair,) = set_agreement(entries, n_resamples=100).pairs
    assert pair.tau == 1.0
    # Per neuron, too: "a" compares [0, 0, 0.9, 0.9] with threshold; "c" has threshold 0.5 on neuron 2.
    want = [sps.spearmanr([0, 0, 0.9, 0.9], [0.55, 0.55, 0.56, 0.57]).statistic,
            sps.spearmanr([0.6, 0.6, 0.6, 0.61], [0.60, 0.61, 0.62, 0.63]).statistic,
            sps.spearmanr([0.7, 0.7, 0.7, 0.71], [0.70, 0.71, 0.5, 0.73]).statistic]
    assert np.allclose(pair.rho, want)


def test_a_constant_entry_has_no_spearman_and_is_counted_apart():
    entries = [entry("empty", [None] * 4, [None] * 4), entry("b", [0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.8, 0.9]),
               entry("c", [0.2, 0.3, 0.4, 0.5], [0.7, 0.8, 0.9, 1.0])]
    sa = set_agreement(entries, n_resamples=50)
    (pair,) = sa.pairs
    assert pair.entries == ["b", "c", "empty"] and math.isnan(pair.rho[2]) and np.allclose(pair.rho_defined, [1, 1])
    text = "\n".join(render_set(sa))
    assert "2 of 3 entries" in text and "undefined for 1" in text


def test_fewer_than_three_entries_leave_tau_undefined():
    sa = set_agreement([shifted(0, 1), shifted(1, 1)], n_resamples=50)
    (pair,) = sa.pairs
    assert math.isnan(pair.tau) and all(math.isnan(v) for v in pair.ci95) and not sa.has_tau
    assert np.allclose(pair.rho, [1.0, 1.0])  # per entry, still defined
    text = "\n".join(render_set(sa))
    assert "| — (< 3 entries) | — |" in text and "no τ" in text


def test_pairs_use_the_entries_that_ran_both_scorers_and_sets_stay_apart():
    entries = [shifted(k, 1) for k in range(3)] + [entry("solo", [0.1] * 40, [0.5] * 40, scorers=("correlation",))]
    (pair,) = set_agreement(entries, n_resamples=50).pairs
    assert pair.entries == ["e0", "e1", "e2"]
    other = entry("x", [0.1] * 40, [0.5] * 40, set_name="t", set_hash="b" * 64)
    assert [sa.set_name for sa in agreements([other, *entries], n_resamples=50)] == ["s", "t"]
    assert agreements([other], n_resamples=50)[0].pairs[0].entries == ["x"]
    with pytest.raises(ConfigError, match="one set"):
        set_agreement([other, *entries])
    (lone,) = agreements([entry("only", [0.1] * 3, [0.5] * 3, scorers=("correlation",))], n_resamples=50)
    assert lone.pairs == [] and "Fewer than 2 scorers" in "\n".join(render_set(lone))


def test_vectorised_tau_b_is_scipys():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, size=(50, 7)).astype(float), rng.integers(0, 4, size=(50, 7)).astype(float)  # ties
    ours = kendall_tau_b(x, y)
    for i in range(len(x)):
        want = sps.kendalltau(x[i], y[i]).statistic  # tau-b
        assert (math.isnan(want) and math.isnan(ours[i])) or abs(ours[i] - want) < 1e-9
    assert math.isnan(kendall_tau_b(np.ones(4), np.arange(4.0)))  # one side all ties


# --- on a rendered board ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_scorer_board(lb_sets, tmp_path_factory) -> dict:  # noqa: F811
    """A board of three verified entries on the tiny set, each scored by correlation and threshold."""
    root = tmp_path_factory.mktemp("agreement")
    cfg = lb.load_config(entries_dir=root / "board" / "entries", sets_dir=lb_sets)
    for explainer in ("baseline_top_tokens", "baseline_empty", "baseline_borrowed"):
        run_cell(cell_cfg(f"neuron_set.path={lb_sets / 'tiny'}", f"explainer={explainer}",
                          "scorer=[correlation,threshold]"), root / explainer)
        lb.submit(root / explainer, explainer, "tests", cfg)
    return cfg


def test_the_board_shows_scorer_agreement_with_three_verified_entries(two_scorer_board, tmp_path):
    cfg = two_scorer_board
    text = lb.render(cfg, out_dir=tmp_path / "one")[0].read_text()
    assert {a.status for a in lb.assess(cfg)} == {"verified"}
    section = text.split("## Scorer agreement")[1].split("## How entries")[0]
    assert "### tiny (`" in section and "3 verified entries, 8 neurons" in section
    assert "| correlation: ev\\_correlation\\_score | threshold: auroc\\_max50 | 3 | 8 |" in section
    assert "order the 3 entries with τ = " in section and "Spearman ρ" in section
    assert lb.render(cfg, out_dir=tmp_path / "two")[0].read_text() == text  # seeded: the same section again


@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_cli_prints_the_table_per_set_and_refuses_an_unknown_set(two_scorer_board):
    cfg = two_scorer_board
    base = [sys.executable, "-m", "harness.agreement", "--entries-dir", str(cfg["entries_dir"]),
            "--sets-dir", str(cfg["sets_dir"]), "--resamples", "100"]
    done = subprocess.run([*base, "--set", "tiny"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("## tiny (`") and "| 3 | 8 | " in done.stdout and "order the 3 entries" in done.stdout
    bad = subprocess.run([*base, "--set", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no verified entry on set 'nope'" in bad.stderr and "['tiny']" in bad.stderr
    assert "Traceback" not in bad.stderr
