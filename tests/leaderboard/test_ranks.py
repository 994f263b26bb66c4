"""Rankings with their uncertainty (issue 24): neighbour gaps with paired CIs and Holm-adjusted p,
groups, rank intervals, the minimum detectable difference, and the ranking's stability within and
across sets. Hand-built entries, except the last tests: the leaderboard tests' tiny board."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sps

from harness import leaderboard as lb
from harness.errors import ConfigError
from harness.leaderboard.__main__ import main
from harness.leaderboard.ranks import (cross_set, cross_sets, group_name, rank_intervals, ranking, rankings,
                                      redrawn_pairs, render_section)
from harness.scoring import Metric, get_scorer
from harness.scoring.stats import minimum_detectable_difference
from tests.leaderboard.test_leaderboard import board, lb_cells, lb_sets  # noqa: F401  (fixtures)

CORR = "correlation.ev_correlation_score"
N = 60


def entry(name, values, set_name="s", set_hash="a" * 64, explainer="baseline_top_tokens", prompt=None,
          scorer_params=None):
    """An entry as the ranking reads it: per-neuron correlation headline values (None: undefined)."""
    return {"name": name, "neuron_set": {"name": set_name, "hash": set_hash},
            "explainer": {"kind": explainer, "backend": None, "model": None, "parameters": {}},
            "prompt": prompt, "simulator": {"kind": "token_match", "backend": None, "model": None,
                                            "parameters": {"high": 10.0}},
            "scorers": {"correlation": scorer_params or {}},
            "neurons": [{"layer": i // 10, "neuron": i % 10, "scores": {CORR: None if v is None else float(v)}}
                        for i, v in enumerate(values)]}


def noisy(levels, seed=0, sd=0.1, **kwargs) -> list[dict]:
    """One entry per level: that level plus its own seeded noise on each of N neurons."""
    rng = np.random.default_rng(seed)
    return [entry(f"e{k}", level + rng.normal(0, sd, N), **kwargs) for k, level in enumerate(levels)]


def test_a_clear_gap_has_a_ci_excluding_zero_and_separate_groups():
    r = ranking(noisy([0.0, 0.5]), "correlation", n_resamples=300)
    assert [e.name for e in r.entries] == ["e1", "e0"] and [e.rank for e in r.entries] == [1, 2]
    (gap,) = r.gaps
    assert 0 < gap.ci95[0] <= gap.diff <= gap.ci95[1] and abs(gap.diff - 0.5) < 0.1
    assert gap.p_holm == gap.p_value < 0.05 and gap.resolved  # one comparison: Holm changes nothing
    assert [e.group for e in r.entries] == ["a", "b"] and [e.rank_ci for e in r.entries] == [(1, 1), (2, 2)]
    assert r.n_neurons == N and r.metric == "ev_correlation_score" and r.higher_is_better


def test_identical_entries_share_a_group_and_their_rank_intervals_overlap():
    (a,) = noisy([0.2])
    twin = {**a, "name": "twin"}
    r = ranking([twin, a, {**noisy([0.8], seed=5)[0], "name": "top"}], "correlation", n_resamples=300)
    assert [e.name for e in r.entries] == ["top", "e0", "twin"]  # tied means: by name
    top, first, second = r.entries
    assert r.gaps[1].diff == 0 and r.gaps[1].p_value == 1.0 and not r.gaps[1].resolved
    assert first.group == second.group != top.group
    # Tied in every resample, each may take either place: both intervals are 2–3.
    assert first.rank_ci == second.rank_ci == (2, 3) and top.rank_ci == (1, 1)


def test_groups_are_cut_at_the_resolved_neighbour_gaps_only():
    r = ranking(noisy([0.6, 0.6, 0.3, 0.0, 0.0], seed=2), "correlation", n_resamples=300)
    assert [g.resolved for g in r.gaps] == [False, True, True, False]
    assert [e.group for e in r.entries] == ["a", "a", "b", "c", "c"] and r.n_groups == 3
    # Holm: the i-th smallest of the 4 p-values times 4 − i + 1, made non-decreasing.
    p = np.array([g.p_value for g in r.gaps])
    order = np.argsort(p)
    want = np.minimum(1, np.maximum.accumulate((4 - np.arange(4)) * p[order]))
    assert np.allclose([r.gaps[i].p_holm for i in order], want)
    assert [group_name(i) for i in (0, 25, 26, 27, 701, 702)] == ["a", "z", "aa", "ab", "zz", "aaa"]


def test_rank_intervals_contain_the_point_rank_and_widen_where_means_are_close():
    r = ranking(noisy([0.10, 0.11, 0.12, 0.13, 0.5, 0.9], seed=3, sd=0.3), "correlation", n_resamples=500)
    for e in r.entries:
        assert e.rank_ci[0] <= e.rank <= e.rank_ci[1]
    assert r.entries[0].rank_ci == (1, 1)  # 0.9: far ahead of every other
    close = [e.rank_ci for e in r.entries[2:]]  # the four within 0.03, with noise of SD 0.3
    assert all(hi - lo >= 2 for lo, hi in close)


def test_rank_intervals_count_ties_as_spanning_their_places():
    boot = np.array([[3.0, 1.0, 1.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]] * 40)
    assert rank_intervals(boot) == [(1, 3), (2, 3), (1, 3)]  # the middle entry is never first
    assert rank_intervals(np.array([[2.0, 1.0, 1.0]] * 10)) == [(1, 1), (2, 3), (2, 3)]


def test_the_minimum_detectable_difference_is_the_formula_on_the_median_neighbour_sd():
    assert abs(minimum_detectable_difference(0.1, 100) - (1.959964 + 0.841621) * 0.01) < 1e-6
    assert abs(minimum_detectable_difference(0.1, 100, alpha=0.01, power=0.9)
               - (sps.norm.ppf(0.995) + sps.norm.ppf(0.9)) * 0.01) < 1e-6
    with pytest.raises(ConfigError, match="at least one neuron"):
        minimum_detectable_difference(0.1, 0)
    entries = noisy([0.0, 0.2, 0.4, 0.6], seed=4, sd=0.2)
    r = ranking(entries, "correlation", n_resamples=100)
    x = [np.array([n["scores"][CORR] for n in e["neurons"]]) for e in reversed(entries)]  # best first
    sds = [np.std(x[i] - x[i + 1], ddof=1) for i in range(3)]
    assert np.allclose([g.sd for g in r.gaps], sds) and abs(r.sd - np.median(sds)) < 1e-9
    assert abs(r.mdd - 2.8015848 * np.median(sds) / math.sqrt(N)) < 1e-6
    lone = ranking(entries[:1], "correlation", n_resamples=50)
    assert lone.mdd is None and lone.gaps == []  # no pair, no SD
    assert f"{N} neurons, a single entry; no MDD (no pair of entries)." in "\n".join(render_section([lone], []))


def test_undefined_values_count_at_the_no_information_value():
    # Counted at 0, "a" (mean 0.45) ranks below "b" (0.6); were undefined neurons dropped, "a" (0.9) would lead.
    r = ranking([entry("a", [None, None, 0.9, 0.9]), entry("b", [0.6, 0.6, 0.6, 0.61])], "correlation",
                n_resamples=50)
    assert [e.name for e in r.entries] == ["b", "a"] and abs(r.entries[1].mean - 0.45) < 1e-9


def test_a_lower_is_better_metric_ranks_its_lowest_first(monkeypatch):
    real = get_scorer("correlation")
    lower = dataclasses.replace(real, metrics=(Metric("ev_correlation_*", 0.0, higher_is_better=False, low=-1, high=1),
                                               *real.metrics))
    fake = lambda name: lower if name == "correlation" else get_scorer(name)  # noqa: E731
    monkeypatch.setattr("harness.scoring.get_scorer", fake)  # what agreement.headline_values looks up
    monkeypatch.setattr("harness.leaderboard.ranks.get_scorer", fake)
    r = ranking(noisy([0.0, 0.5, 0.2]), "correlation", n_resamples=200)
    assert [e.name for e in r.entries] == ["e0", "e2", "e1"] and not r.higher_is_better
    assert r.entries[0].mean < r.entries[1].mean < r.entries[2].mean  # the metric's own values
    assert all(g.diff > 0 and g.ci95[0] > 0 for g in r.gaps)  # Δ: how much better, next − this
    assert "Lower is better" in "\n".join(render_section([r], []))


def test_the_ranking_and_its_bootstrap_are_seeded():
    entries = noisy([0.10, 0.12, 0.14, 0.3], seed=6, sd=0.2)
    first, again = (ranking(entries, "correlation", n_resamples=200, seed=9) for _ in range(2))
    assert first.entries == again.entries and first.gaps == again.gaps
    assert first.tau == again.tau and first.tau_ci == again.tau_ci and np.array_equal(first.boot, again.boot)
    other = ranking(entries, "correlation", n_resamples=200, seed=10)
    assert not np.array_equal(first.boot, other.boot)
    # Entries are ranked by value, never by their order in the list.
    assert ranking(entries[::-1], "correlation", n_resamples=200, seed=9).entries == first.entries


def test_bootstrap_stability_is_the_median_tau_against_the_full_ranking():
    clear = ranking(noisy([0.0, 0.3, 0.6, 0.9]), "correlation", n_resamples=200)
    assert clear.tau == 1.0 and clear.tau_ci == [1.0, 1.0]
    close = ranking(noisy([0.0, 0.01, 0.02, 0.03], sd=0.3), "correlation", n_resamples=200)
    assert close.tau_ci[0] < close.tau <= close.tau_ci[1] <= 1.0
    two = ranking(noisy([0.0, 0.3]), "correlation", n_resamples=50)
    assert math.isnan(two.tau) and "fewer than 3 entries" in "\n".join(render_section([two], []))


def test_sets_are_matched_by_explainer_prompt_and_simulator_not_by_name():
    kinds = ["baseline_top_tokens", "baseline_empty", "baseline_borrowed", "baseline_weight_in"]
    rng = np.random.default_rng(7)
    v1 = [entry(k, 0.1 * i + rng.normal(0, 0.05, N), set_name="v1", explainer=k) for i, k in enumerate(kinds)]
    # On v2 the names differ and two explainers swap places.
    v2_levels = [0.0, 0.2, 0.1, 0.3]
    v2 = [entry(f"v2-{k}", v2_levels[i] + rng.normal(0, 0.05, N), set_name="v2", set_hash="b" * 64, explainer=k)
          for i, k in enumerate(kinds)]
    v2.append(entry("v2-other-prompt", np.full(N, 0.5), set_name="v2", set_hash="b" * 64, explainer=kinds[0],
                    prompt={"variant": "top_tokens", "parameters": {}}))  # another prompt: not the same explainer
    a, b = ranking(v1, "correlation", n_resamples=200), ranking(v2, "correlation", n_resamples=200)
    c = cross_set(a, b)
    assert c.explainers == [f"{k} / —" for k in reversed(kinds)] and c.unmatched == (0, 1)
    want = sps.kendalltau([0.0, 0.1, 0.2, 0.3], v2_levels).statistic  # one swapped pair of four: 2/3
    assert abs(c.tau - want) < 1e-9 and c.ci95[0] <= c.tau <= c.ci95[1]
    # An explainer that two entries of a set claim is left out.
    b2 = ranking([*v2, {**v2[1], "name": "v2-copy"}], "correlation", n_resamples=200)
    assert len(cross_set(a, b2).explainers) == 3 and cross_set(a, b2).unmatched == (1, 3)
    # Other scorer parameters: another configuration.
    b3 = ranking([entry(e["name"], [n["scores"][CORR] for n in e["neurons"]], set_name="v2", set_hash="b" * 64,
                        explainer=e["explainer"]["kind"], scorer_params={"x": 1}) for e in v2[:4]], "correlation",
                 n_resamples=200)
    assert cross_set(a, b3).explainers == [] and math.isnan(cross_set(a, b3).tau)
    text = "\n".join(render_section([a, b], cross_sets([a, b], [("v1", "v2")])))
    assert "### Across re-drawn sets" in text
    assert f"| v1 vs v2 | correlation: ev\\_correlation\\_score | 4 | {want:+.2f} |" in text


def test_bad_input_gets_a_config_error():
    with pytest.raises(ConfigError, match="one set"):
        ranking([*noisy([0.1]), *noisy([0.2], set_name="t", set_hash="b" * 64)], "correlation")
    with pytest.raises(ConfigError, match="did not run scorer 'threshold'"):
        ranking(noisy([0.1]), "threshold")
    with pytest.raises(ConfigError, match="at least one entry"):
        ranking([], "correlation")
    with pytest.raises(ConfigError, match="redrawn_sets"):
        redrawn_pairs({"redrawn_sets": [["only-one"]]})
    assert redrawn_pairs({}) == [] and redrawn_pairs(None) == []


def test_rankings_group_entries_by_set_and_scorer():
    entries = [*noisy([0.1, 0.2]), *noisy([0.3], set_name="t", set_hash="b" * 64)]
    assert [(r.set_name, r.scorer, len(r.entries)) for r in rankings(entries, n_resamples=50)] == \
        [("s", "correlation", 2), ("t", "correlation", 1)]


# --- on a rendered board ----------------------------------------------------------------------

def test_the_board_shows_rank_uncertainty_in_readme_and_page(board, tmp_path):  # noqa: F811
    cfg = board["cfg"]
    md, page = lb.render(cfg, out_dir=tmp_path / "one")
    text = md.read_text()
    section = text.split("## Rank uncertainty")[1].split("## How entries")[0]
    assert "### tiny (`" in section and "— correlation: ev\\_correlation\\_score" in section
    assert ("| # | entry | explainer / prompt | score | rank 95% interval | group | Δ to next | 95% CI | p (Holm) |"
            in section)
    assert "| 1 | top-tokens | baseline\\_top\\_tokens / — |" in section
    assert "| 2 | empty | baseline\\_empty / — |" in section
    assert "8 neurons, 2 entries in" in section and "MDD " in section and "Stability over 1000 bootstrap" in section
    assert lb.render(cfg, out_dir=tmp_path / "two")[0].read_text() == text  # seeded: the same section again
    data, _ = lb.page_data(lb.assess(cfg), cfg)
    summaries = {e["name"]: e["summary"]["correlation"] for e in data["entries"]}
    r = ranking([a.entry for a in lb.assess(cfg)], "correlation")
    for e in r.entries:
        assert summaries[e.name]["rank_ci"] == list(e.rank_ci) and summaries[e.name]["group"] == e.group
    assert '"rank_ci":' in page.read_text()


def test_cli_prints_the_tables_and_refuses_an_unknown_set(board, capsys):  # noqa: F811
    cfg = board["cfg"]
    base = ["--entries-dir", str(cfg["entries_dir"]), "--sets-dir", str(cfg["sets_dir"]), "ranks"]
    assert main([*base, "--set", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Rank uncertainty") and "### tiny (`" in out and "| 1 | top-tokens |" in out
    with pytest.raises(SystemExit) as exc:
        main([*base, "--set", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no verified entry on set 'nope'" in err and "['tiny']" in err
