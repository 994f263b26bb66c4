"""Rankings with their uncertainty (issue 24): which gaps between ranked entries are real.

For the verified entries on one frozen set, ranked by one scorer's headline metric as the board
ranks them (the mean over every neuron, an undefined value at the metric's no-information value; a
lower-is-better metric negated, so that below "higher" always means "better"):
- each pair of neighbours in the ranking: the paired difference better − next over the shared
  neurons (`paired_test`: a seeded percentile-bootstrap 95% CI and a two-sided sign-flip
  permutation p-value), its p-value Holm-adjusted over the k − 1 neighbour pairs;
- groups: the ranking is cut below every neighbour pair whose Holm-adjusted p is below α = 0.05;
  each run between cuts is a group (a, b, c, ...): its entries are joined by steps none of which
  is told apart (its two ends may still differ);
- each entry's 95% rank interval: one seeded resample of the set's neurons, shared by every entry,
  gives every mean and so every rank; over RESAMPLES resamples, from the 2.5th percentile of the
  entry's best rank to the 97.5th of its worst (entries tied in a resample may take any of their
  places), rounded outward to whole ranks;
- the minimum detectable difference at 80% power and α = 0.05 (two-sided), from the median over
  the neighbour pairs of the SD of their per-neuron paired differences;
- stability: Kendall τ-b between each resample's ranking and the full ranking (median, 95% CI),
  and between two sets' rankings of the same explainers (`cross_set`; the set pairs are
  `redrawn_sets` in conf/leaderboard.yaml).

`python -m harness.leaderboard ranks [--set NAME]` prints the tables.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.agreement import MIN_ENTRIES, RESAMPLES, SEED, headline_values, kendall_tau_b, shared_neurons
from harness.errors import ConfigError
from harness.formatting import fmt
from harness.leaderboard.rows import explainer_label, pairing_key, prompt_label
from harness.scoring import get_scorer
from harness.scoring.stats import holm, minimum_detectable_difference, paired_test, percentile_ci, resample_indices
from harness.text import canonical_json, for_markdown as _md

ALPHA, POWER = 0.05, 0.8
# Sign flips per paired test: Holm over k − 1 neighbour pairs can resolve one only if the smallest
# p-value, 1 / (PERMUTATIONS + 1), is below α / (k − 1): up to about 500 entries.
PERMUTATIONS = 10_000


@dataclass
class Ranked:
    name: str
    label: str  # explainer / prompt
    mean: float  # the board's score, in the metric's own units
    rank: int  # the board's order: 1 is the best, ties by name
    rank_ci: tuple[int, int]
    group: str
    match: str = field(repr=False)  # what the same explainer shares on another set (`cross_set`)


@dataclass
class Gap:
    """An entry against the next one down: the mean paired difference better − next (≥ 0)."""
    diff: float
    ci95: list[float]
    p_value: float
    p_holm: float  # Holm-adjusted over the ranking's neighbour pairs
    sd: float  # of the per-neuron paired differences (NaN over a single neuron)

    @property
    def resolved(self) -> bool:
        return self.p_holm < ALPHA


@dataclass
class Ranking:
    set_name: str
    set_hash: str
    scorer: str
    metric: str
    higher_is_better: bool
    n_neurons: int
    entries: list[Ranked]  # best first
    gaps: list[Gap]  # gaps[i]: entries[i] against entries[i + 1]
    tau: float  # median τ-b of a resample's ranking against the full one; NaN below MIN_ENTRIES entries
    tau_ci: list[float]
    boot: np.ndarray = field(repr=False)  # resamples × entries: each entry's mean in each resample, higher better

    @property
    def sd(self) -> float | None:
        """The median over neighbour pairs of the SD of their per-neuron paired differences."""
        sds = [g.sd for g in self.gaps if math.isfinite(g.sd)]
        return float(np.median(sds)) if sds else None

    @property
    def mdd(self) -> float | None:
        return None if self.sd is None else minimum_detectable_difference(self.sd, self.n_neurons, ALPHA, POWER)

    @property
    def n_groups(self) -> int:
        return len({r.group for r in self.entries})


@dataclass
class CrossSet:
    """Two sets' rankings of the same explainers under one scorer."""
    sets: tuple[str, str]
    scorer: str
    metric: str
    explainers: list[str]  # matched on both sets, in the first set's order
    unmatched: tuple[int, int]  # entries of each set with no single match on the other
    tau: float  # NaN with fewer than MIN_ENTRIES explainers
    ci95: list[float]


def group_name(i: int) -> str:
    """0 → a, 25 → z, 26 → aa."""
    return (group_name(i // 26 - 1) if i >= 26 else "") + chr(ord("a") + i % 26)


def rank_intervals(boot: np.ndarray, level: float = 0.95) -> list[tuple[int, int]]:
    """Per column of `boot` (resamples × entries, higher is better) its rank interval at `level`:
    in each resample an entry's best rank is 1 + the number of entries above it and its worst adds
    those tied with it; the interval runs from the lower percentile of the best rank to the upper
    percentile of the worst, rounded outward."""
    above = (boot[:, None, :] > boot[:, :, None]).sum(axis=2)  # [b, i]: entries above i in resample b
    tied = (boot[:, None, :] == boot[:, :, None]).sum(axis=2) - 1
    best, worst = 1 + above, 1 + above + tied
    return [(math.floor(percentile_ci(best[:, i], level)[0]), math.ceil(percentile_ci(worst[:, i], level)[1]))
            for i in range(boot.shape[1])]


def _match_key(entry: dict[str, Any], scorer: str) -> str:
    """The explainer, prompt and simulator (as trained-vs-random pairs them) and the scorer's parameters."""
    return pairing_key(entry) + canonical_json(entry["scorers"][scorer])


def ranking(entries: list[dict[str, Any]], scorer: str, n_resamples: int = RESAMPLES, seed: int = SEED) -> Ranking:
    """The uncertainty of `entries`' ranking under `scorer`'s headline metric, over the neurons every
    entry lists. The entries must all be on one set and have run `scorer`."""
    if not entries:
        raise ConfigError("a ranking needs at least one entry")
    sets = {(e["neuron_set"]["name"], e["neuron_set"]["hash"]) for e in entries}
    if len(sets) > 1:
        raise ConfigError(f"a ranking compares entries on one set; got {sorted(s for s, _ in sets)}")
    missing = sorted(e["name"] for e in entries if scorer not in e["scorers"])
    if missing:
        raise ConfigError(f"entries {missing} did not run scorer {scorer!r}")
    s = get_scorer(scorer)
    metric = s.metric(s.headline)
    if metric.no_information is None:
        raise ConfigError(f"{scorer}'s headline metric {s.headline!r} has no no-information value: the board "
                          "ranks it by no mean over every neuron")
    keys = shared_neurons(entries)
    if not keys:
        raise ConfigError("the entries share no neuron")
    x = np.stack([headline_values(e, keys, scorer) for e in entries])  # entries × neurons, higher is better
    order = sorted(range(len(entries)), key=lambda i: (-x[i].mean(), entries[i]["name"]))
    entries, x = [entries[i] for i in order], x[order]
    means = x.mean(axis=1)
    idx = resample_indices(len(keys), n_resamples, seed)  # one resample of the neurons, shared by every entry
    boot = np.stack([row[idx].mean(axis=1) for row in x], axis=1)

    tests = [paired_test(x[i], x[i + 1], PERMUTATIONS, seed) for i in range(len(x) - 1)]
    adjusted = holm([t["p_value"] for t in tests])
    gaps = [Gap(t["mean_diff"], t["ci95"], t["p_value"], float(q),
                float(np.std(x[i] - x[i + 1], ddof=1)) if len(keys) > 1 else math.nan)
            for i, (t, q) in enumerate(zip(tests, adjusted))]
    groups = np.concatenate([[0], np.cumsum([g.resolved for g in gaps])]).astype(int)

    tau, tau_ci = math.nan, [math.nan, math.nan]
    if len(entries) >= MIN_ENTRIES:
        taus = kendall_tau_b(boot, np.broadcast_to(means, boot.shape))
        taus = taus[np.isfinite(taus)]
        if math.isfinite(float(kendall_tau_b(means, means))) and len(taus):
            tau, tau_ci = float(np.median(taus)), percentile_ci(taus)
    sign = 1.0 if metric.higher_is_better else -1.0
    ranked = [Ranked(e["name"], f"{explainer_label(e)} / {prompt_label(e)}", float(sign * m), i + 1, ci,
                     group_name(int(g)), _match_key(e, scorer))
              for i, (e, m, ci, g) in enumerate(zip(entries, means, rank_intervals(boot), groups))]
    (set_name, set_hash), = sets
    return Ranking(set_name, set_hash, scorer, s.headline, metric.higher_is_better, len(keys), ranked, gaps,
                   tau, tau_ci, boot)


def rankings(entries: list[dict[str, Any]], n_resamples: int = RESAMPLES, seed: int = SEED) -> list[Ranking]:
    """`ranking` per (set, scorer) of `entries`, in order of set name and scorer: every scorer whose
    headline metric the board ranks by a mean over every neuron (it has a no-information value)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for e in entries:
        for scorer in e["scorers"]:
            s = get_scorer(scorer)
            if s.metric(s.headline).no_information is not None:
                groups.setdefault((e["neuron_set"]["name"], e["neuron_set"]["hash"], scorer), []).append(e)
    return [ranking(group, scorer, n_resamples, seed) for (_, _, scorer), group in sorted(groups.items())]


def cross_set(a: Ranking, b: Ranking) -> CrossSet:
    """Kendall τ-b between two sets' rankings of the same explainers, matched by explainer, prompt,
    simulator and scorer parameters (never by entry name); an explainer that more than one entry of
    a set claims is left out. Its 95% CI: the τ in each resample, both sets' neurons drawn by the
    board's seeded resample by position in (layer, neuron) order."""
    if a.scorer != b.scorer or len(a.boot) != len(b.boot):
        raise ConfigError(f"cross-set τ compares rankings by one scorer over as many resamples; got {a.scorer} "
                          f"({len(a.boot)}) and {b.scorer} ({len(b.boot)})")
    count_a, count_b = Counter(r.match for r in a.entries), Counter(r.match for r in b.entries)
    where_b = {r.match: i for i, r in enumerate(b.entries)}
    ia = [i for i, r in enumerate(a.entries) if count_a[r.match] == 1 and count_b[r.match] == 1]
    ib = [where_b[a.entries[i].match] for i in ia]
    tau, ci = math.nan, [math.nan, math.nan]
    if len(ia) >= MIN_ENTRIES:
        tau = float(kendall_tau_b(np.array([a.entries[i].mean for i in ia]), np.array([b.entries[i].mean for i in ib])))
        taus = kendall_tau_b(a.boot[:, ia], b.boot[:, ib])
        taus = taus[np.isfinite(taus)]
        if math.isfinite(tau) and len(taus):
            ci = percentile_ci(taus)
    return CrossSet((a.set_name, b.set_name), a.scorer, a.metric, [a.entries[i].label for i in ia],
                    (len(a.entries) - len(ia), len(b.entries) - len(ib)), tau, ci)


def redrawn_pairs(cfg: dict[str, Any] | None) -> list[tuple[str, str]]:
    """conf/leaderboard.yaml `redrawn_sets`: pairs of set names whose rankings the board compares."""
    pairs = (cfg or {}).get("redrawn_sets") or []
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
                                              for p in pairs):
        raise ConfigError(f"redrawn_sets must be a list of [set name, set name] pairs, got {pairs!r}")
    return [(p[0], p[1]) for p in pairs]


def cross_sets(ranks: list[Ranking], pairs: list[tuple[str, str]]) -> list[CrossSet]:
    """`cross_set` for each pair of set names and each scorer ranked on both."""
    by = {(r.set_name, r.scorer): r for r in ranks}
    return [cross_set(by[(a, scorer)], by[(b, scorer)]) for a, b in pairs
            for scorer in sorted({s for n, s in by if n == a}) if (b, scorer) in by]


# --- Markdown ---------------------------------------------------------------------------------

NOTE = (
    "Which gaps between ranked entries are real? Per set and scoring rule (its headline metric, the verified "
    "entries as ranked above, every neuron counted, an undefined value at the metric's no-information value): "
    "**Δ to next** is the entry's mean paired difference to the entry ranked next over the set's neurons, signed so "
    "that positive means better (for a lower-is-better metric, next − this), with a seeded percentile-bootstrap 95% "
    f"CI and a two-sided sign-flip permutation p-value ({PERMUTATIONS} resamples each), Holm-adjusted over the k − 1 "
    f"neighbour pairs of the ranking. **Groups**: the ranking is cut below every neighbour pair whose Holm-adjusted "
    f"p is below {ALPHA}; the entries between two cuts share a letter. They are joined by steps none of which is "
    "told apart, so the two ends of a long group may still differ. **Rank 95% interval**: in each of "
    f"{RESAMPLES} seeded resamples of the set's neurons (one resample shared by every entry) every entry's mean and "
    "so its rank is recomputed; the interval runs from the 2.5th percentile of the entry's best rank to the 97.5th "
    "of its worst (entries tied in a resample may take any of their places). **MDD**: the minimum detectable "
    f"difference of a paired comparison at {POWER:.0%} power and α = {ALPHA} (two-sided), "
    "(z₀.₉₇₅ + z₀.₈)·SD/√n = 2.80·SD/√n, with SD the median over neighbour pairs of the SD of their per-neuron "
    "differences and n the set's neurons. **Stability**: the median Kendall τ-b between each resample's ranking "
    "and the full ranking, with its 95% CI; and below, τ between two sets' rankings of the same explainers "
    "(matched by explainer, prompt, simulator and scorer parameters). The intervals resample neurons, not windows "
    "or explainers. `python -m harness.leaderboard ranks` prints the same tables.")


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _tau(tau: float, ci: list[float], n: int) -> str:
    if n < MIN_ENTRIES:
        return f"undefined (fewer than {MIN_ENTRIES} entries)"
    if not math.isfinite(tau):
        return "undefined (every entry scores alike)"
    return f"{tau:+.2f} (95% CI [{ci[0]:+.2f}, {ci[1]:+.2f}])"


def render_ranking(r: Ranking, heading: str = "###") -> list[str]:
    """A (set, scorer)'s section: heading, table and the set's MDD and stability."""
    lines = [f"{heading} {_md(r.set_name)} (`{_md(r.set_hash[:12])}`) — {_md(r.scorer)}: {_md(r.metric)}", "",
             "| # | entry | explainer / prompt | score | rank 95% interval | group | Δ to next | 95% CI | p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(r.entries):
        g = r.gaps[i] if i < len(r.gaps) else None
        gap = (f"{fmt(g.diff, '+.3f')} | [{fmt(g.ci95[0], '+.3f')}, {fmt(g.ci95[1], '+.3f')}] | {p_text(g.p_holm)}"
               if g else "— | — | —")
        lines.append(f"| {e.rank} | {_md(e.name)} | {_md(e.label)} | {fmt(e.mean)} | "
                     f"{e.rank_ci[0]}–{e.rank_ci[1]} | {e.group} | {gap} |")
    k, n_gaps = len(r.entries), len(r.gaps)
    groups = (f"{k} entries in {r.n_groups} group{'s' if r.n_groups > 1 else ''} "
              f"({sum(g.resolved for g in r.gaps)} of {n_gaps} neighbour gaps resolved after Holm)"
              if n_gaps else "a single entry")
    mdd = (f"MDD {r.mdd:.3f} (median SD of the paired differences {r.sd:.3f} over {n_gaps} neighbour "
           f"pair{'s' if n_gaps > 1 else ''})" if r.mdd is not None else "no MDD (no pair of entries)")
    direction = "" if r.higher_is_better else " Lower is better: the scores are the metric's own; Δ is next − this."
    lines += ["", f"{r.n_neurons} neurons, {groups}; {mdd}. Stability over {len(r.boot)} bootstrap re-draws of the "
                  f"neurons: median τ = {_tau(r.tau, r.tau_ci, k)}.{direction}", ""]
    return lines


def render_cross_sets(rows: list[CrossSet]) -> list[str]:
    """The cross-set τ's as a Markdown table."""
    lines = ["| sets | scorer | explainers on both | Kendall τ | 95% CI | entries unmatched |",
             "|---|---|---|---|---|---|"]
    for c in rows:
        n = len(c.explainers)
        tau = fmt(c.tau, "+.2f") if n >= MIN_ENTRIES else f"— (< {MIN_ENTRIES})"
        ci = f"[{c.ci95[0]:+.2f}, {c.ci95[1]:+.2f}]" if math.isfinite(c.tau) else "—"
        lines.append(f"| {_md(c.sets[0])} vs {_md(c.sets[1])} | {_md(c.scorer)}: {_md(c.metric)} | {n} | {tau} | "
                     f"{ci} | {c.unmatched[0]}, {c.unmatched[1]} |")
    return lines


def render_section(ranks: list[Ranking], across: list[CrossSet], heading: str = "##") -> list[str]:
    """The board's "Rank uncertainty" section: the note, a table per (set, scorer), the cross-set τ's."""
    if not ranks:
        return []
    sub = heading + "#"
    lines = [f"{heading} Rank uncertainty", "", NOTE, ""]
    for r in ranks:
        lines += render_ranking(r, sub)
    if across:
        lines += [f"{sub} Across re-drawn sets", "",
                  "The same explainers ranked on two sets built by the same rules on the same subject "
                  "(`conf/leaderboard.yaml` `redrawn_sets`). The 95% CI resamples each set's neurons as for its rank "
                  "intervals (the same seeded draw of positions in (layer, neuron) order: sets of the same neurons "
                  "are resampled neuron for neuron alike).", ""] + render_cross_sets(across) + [""]
    return lines
