"""Scorer agreement (issue 23): do two scoring rules rank the same explainers alike?

From the verified entries on one set, per pair of scorers (each scored by its headline metric):
- Kendall's τ-b between the entries' rankings by mean score over every neuron (an undefined value
  at the metric's no-information value, as the board ranks), with a seeded percentile-bootstrap
  95% CI over neurons: one resample of the set's neurons, shared by every entry and scorer, gives
  every entry's means and so one τ. With fewer than 3 entries τ is undefined, not computed.
- the per-neuron Spearman correlation of the two scorers' values within each entry, summarised
  as the median over entries with the min and max.
Values of a lower-is-better metric are negated first, so a positive τ or ρ always means agreement.

`python -m harness.agreement [--set NAME] [--resamples N] [--seed S]` prints a Markdown table per
set of the verified entries under the configured entries directory (`leaderboard/entries/`).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from harness.cli import exit_on_harness_error
from harness.errors import ConfigError
from harness.formatting import fmt
from harness.scoring.stats import percentile_ci, resample_indices
from harness.text import for_markdown as _md

MIN_ENTRIES = 3  # τ over fewer entries is a coin toss: reported as undefined
RESAMPLES, SEED = 1000, 0  # the board's bootstrap: deterministic and cheap enough for every render


@dataclass
class PairAgreement:
    scorers: tuple[str, str]
    metrics: tuple[str, str]  # each scorer's headline metric
    entries: list[str]  # the entries that ran both scorers, by name
    n_neurons: int
    tau: float  # NaN with fewer than MIN_ENTRIES entries, or when one ranking is all ties
    ci95: list[float]  # [NaN, NaN] where tau is NaN
    rho: list[float]  # per entry, Spearman over neurons; NaN where one side is constant

    @property
    def rho_defined(self) -> list[float]:
        return [r for r in self.rho if math.isfinite(r)]


@dataclass
class SetAgreement:
    set_name: str
    set_hash: str
    n_entries: int
    n_neurons: int
    pairs: list[PairAgreement]

    @property
    def has_tau(self) -> bool:
        """Whether some pair of scorers was run by enough entries for a τ."""
        return any(len(p.entries) >= MIN_ENTRIES for p in self.pairs)


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b between `x` and `y` along the last axis (as scipy.stats.kendalltau, vectorised
    over the leading axes): Σ sign(xᵢ−xⱼ)·sign(yᵢ−yⱼ) over pairs i < j, divided by the geometric mean of
    the pairs untied in x and in y. NaN where either side is all ties."""
    i, j = np.triu_indices(x.shape[-1], 1)
    sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    untied = np.count_nonzero(sx, axis=-1) * np.count_nonzero(sy, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(untied > 0, (sx * sy).sum(axis=-1) / np.sqrt(untied), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ over the neurons where both values are defined; NaN with fewer than 3 such
    neurons or a constant side."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(sps.spearmanr(a[ok], b[ok]).statistic)


def shared_neurons(entries: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The (layer, neuron) keys every entry lists, sorted: what paired comparisons run over."""
    return sorted(set.intersection(*({(n["layer"], n["neuron"]) for n in e["neurons"]} for e in entries)))


def headline_values(entry: dict[str, Any], keys: list[tuple[int, int]], scorer: str) -> np.ndarray:
    """The scorer's headline per neuron in `keys` order, undefined at the no-information value (NaN
    without one), negated when lower is better."""
    from harness.scoring import get_scorer

    s = get_scorer(scorer)
    metric = s.metric(s.headline)
    fill = math.nan if metric.no_information is None else metric.no_information
    column = f"{scorer}.{s.headline}"
    by_key = {(n["layer"], n["neuron"]): (n.get("scores") or {}).get(column) for n in entry["neurons"]}
    x = np.array([fill if by_key[k] is None else by_key[k] for k in keys], dtype=np.float64)
    return x if metric.higher_is_better else -x


def set_agreement(entries: list[dict[str, Any]], n_resamples: int = RESAMPLES, seed: int = SEED) -> SetAgreement:
    """Scorer agreement among `entries`, all on one set: every pair of scorers that some entry ran
    both of, over the neurons every entry lists."""
    from harness.scoring import get_scorer

    if not entries:
        raise ConfigError("scorer agreement needs at least one entry")
    sets = {(e["neuron_set"]["name"], e["neuron_set"]["hash"]) for e in entries}
    if len(sets) > 1:
        raise ConfigError(f"scorer agreement compares entries on one set; got {sorted(s for s, _ in sets)}")
    entries = sorted(entries, key=lambda e: e["name"])
    keys = shared_neurons(entries)
    idx = resample_indices(len(keys), n_resamples, seed) if keys else None
    scorers = sorted({s for e in entries for s in e["scorers"]})
    values, means = {}, {}  # scorer -> entry name -> per-neuron values; (mean, the mean in every resample)
    with warnings.catch_warnings():  # an entry undefined on every neuron, of a metric without a no-information value
        warnings.simplefilter("ignore", RuntimeWarning)
        for s in scorers:
            values[s] = {e["name"]: headline_values(e, keys, s) for e in entries if s in e["scorers"]}
            x = np.stack(list(values[s].values()))  # entries × neurons
            mean = np.nanmean if np.isnan(x).any() else np.mean  # np.mean is the faster where no value is NaN
            boot = mean(x[:, idx], axis=2) if keys else np.empty((len(x), 0))
            means[s] = dict(zip(values[s], zip(mean(x, axis=1), boot)))
    pairs = []
    for a, b in itertools.combinations(scorers, 2):
        names = [n for n in values[a] if n in values[b]]
        if not names:
            continue
        tau, ci = math.nan, [math.nan, math.nan]
        if len(names) >= MIN_ENTRIES and keys:
            (ma, ba), (mb, bb) = ([np.stack(m) for m in zip(*(means[s][n] for n in names))] for s in (a, b))
            tau = float(kendall_tau_b(ma, mb))
            boot = kendall_tau_b(ba.T, bb.T)  # resamples × entries
            boot = boot[np.isfinite(boot)]
            if math.isfinite(tau) and len(boot):
                ci = percentile_ci(boot)
        pairs.append(PairAgreement((a, b), (get_scorer(a).headline, get_scorer(b).headline), names, len(keys), tau,
                                   ci, [spearman(values[a][n], values[b][n]) for n in names]))
    name, set_hash = sets.pop()
    return SetAgreement(name, set_hash, len(entries), len(keys), pairs)


def agreements(entries: list[dict[str, Any]], n_resamples: int = RESAMPLES, seed: int = SEED) -> list[SetAgreement]:
    """`set_agreement` per set (name, hash) of `entries`, in order of set name."""
    by_set: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        by_set.setdefault((e["neuron_set"]["name"], e["neuron_set"]["hash"]), []).append(e)
    return [set_agreement(group, n_resamples, seed) for _, group in sorted(by_set.items())]


def _tau_cell(p: PairAgreement) -> str:
    return f"— (< {MIN_ENTRIES} entries)" if len(p.entries) < MIN_ENTRIES else fmt(p.tau, "+.2f")


def markdown_table(sa: SetAgreement) -> list[str]:
    """The set's pairs as Markdown table lines."""
    lines = ["| scorer A | scorer B | entries | neurons | Kendall τ | 95% CI | Spearman ρ per neuron: median "
             "over entries | min | max | ρ defined for |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sa.pairs:
        lo, hi = p.ci95
        rho = p.rho_defined
        med, low, high = (float(np.median(rho)), min(rho), max(rho)) if rho else (None, None, None)
        ci = f"[{fmt(lo, '+.2f')}, {fmt(hi, '+.2f')}]" if math.isfinite(p.tau) else "—"
        lines.append(f"| {_md(p.scorers[0])}: {_md(p.metrics[0])} | {_md(p.scorers[1])}: {_md(p.metrics[1])} | "
                     f"{len(p.entries)} | {p.n_neurons} | {_tau_cell(p)} | {ci} | {fmt(med, '+.2f')} | "
                     f"{fmt(low, '+.2f')} | {fmt(high, '+.2f')} | {len(rho)} of {len(p.rho)} entries |")
    return lines


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def reading(sa: SetAgreement) -> str:
    """A plain reading of the set's table, generated from its numbers."""
    parts = []
    for p in sa.pairs:
        a, b = (_md(s) for s in p.scorers)
        n = len(p.entries)
        if n < MIN_ENTRIES:
            parts.append(f"Fewer than {MIN_ENTRIES} entries ran both {a} and {b}: no τ.")
        elif not math.isfinite(p.tau):
            parts.append(f"{a} or {b} scores all {n} entries alike: τ is undefined.")
        else:
            lo, hi = p.ci95
            verdict = ("The same order in nearly every resample of the neurons." if lo == hi == 1 else
                       "The reverse order in nearly every resample of the neurons." if lo == hi == -1 else
                       "The CI lies above 0: they agree." if lo > 0 else
                       "The CI lies below 0: they disagree." if hi < 0 else "The CI includes 0: no agreement shown.")
            parts.append(f"{a} and {b} order the {n} entries with τ = {p.tau:+.2f} (95% CI [{lo:+.2f}, {hi:+.2f}]). "
                         f"{verdict} With {n} entries, swapping one pair of them moves τ by about "
                         f"{4 / (n * (n - 1)):.2f}.")
        rho = p.rho_defined
        if rho:
            spread = f", from {min(rho):+.2f} to {max(rho):+.2f}" if len(rho) > 1 else ""
            undefined = (f"; undefined for {len(p.rho) - len(rho)}, where one scorer is constant over the neurons"
                         if len(rho) < len(p.rho) else "")
            parts.append(f"Neuron by neuron, their values correlate with median Spearman ρ = {np.median(rho):+.2f} "
                         f"over {_entries(len(rho))}{spread}{undefined}.")
    return " ".join(parts)


def render_set(sa: SetAgreement, heading: str = "##") -> list[str]:
    """A set's section: heading, table and reading."""
    lines = [f"{heading} {_md(sa.set_name)} (`{_md(sa.set_hash[:12])}`): {sa.n_entries} verified entries, "
             f"{sa.n_neurons} neurons", ""]
    if not sa.pairs:
        return lines + ["Fewer than 2 scorers ran on this set: nothing to compare.", ""]
    return lines + markdown_table(sa) + ["", reading(sa), ""]


@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    from harness.leaderboard import assess, load_config

    parser = argparse.ArgumentParser(prog="python -m harness.agreement", description=__doc__.splitlines()[0])
    parser.add_argument("--set", default=None, help="only this set (by name)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples of the neurons")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--entries-dir", type=Path, default=None, help="default: leaderboard/entries")
    parser.add_argument("--sets-dir", type=Path, default=None, help="default: leaderboard/sets")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        raise ConfigError(f"--resamples must be at least 1, got {args.resamples}")
    cfg = load_config(entries_dir=args.entries_dir, sets_dir=args.sets_dir)
    entries = [a.entry for a in assess(cfg) if a.status == "verified"]
    if args.set is not None:
        known = sorted({e["neuron_set"]["name"] for e in entries})
        entries = [e for e in entries if e["neuron_set"]["name"] == args.set]
        if not entries:
            raise ConfigError(f"no verified entry on set {args.set!r}; sets with verified entries: {known}")
    if not entries:
        raise ConfigError(f"no verified entries under {cfg['entries_dir']}")
    print("\n".join(line for sa in agreements(entries, args.resamples, args.seed) for line in render_set(sa)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
