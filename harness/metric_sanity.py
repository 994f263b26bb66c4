"""Sanity checks of the metrics themselves: `python -m harness.metric_sanity [overrides]` (issues 17, 23).

A metric that measures explanation quality must get worse when the explanation gets worse. Following
the two label-perturbation tests of NeuronEval (Oikarinen et al., ICML 2025: a sound metric drops
when true concept labels are removed, and drops when wrong ones are added), each scorer's metrics
are measured on the *oracle* simulation, the true test (and calibration) activations quantised to
the simulators' 0–10 scale (`OracleQuantizedSimulator`, the cell's ceiling control), perturbed two
ways at several fractions f:

- *missing labels*: a share f of the truly active tokens (oracle value > 0, i.e. activation at
  least a tenth of the records' maximum) get simulation 0;
- *extra labels*: a share f of the inactive tokens (oracle value 0) get a label, each a value drawn
  from the neuron's own active labels, so added labels look like true ones.

Token choices are seeded per neuron and nested (a larger f perturbs a superset of the tokens), and
the calibration split is perturbed the same way as test, as a flawed explanation would be simulated
on both. Two kinds of neuron:

- the *planted neuron*: a copy of the random-init `tiny_llama` edited so that one neuron fires on
  the pronouns " he", " she", " it", " they" (and capitalised) and is exactly 0 elsewhere, recorded
  on Brown windows (`plant`, `planted_neuron`; its ground truth is known). Its CI is over
  `planted_draws` independent perturbation draws;
- real neurons of a frozen set (default v1), with the CI over neurons. The ablation scorer runs
  the subject model for every perturbation, so it is measured on the first
  `ablation.set_neurons` set neurons with fewer windows.

A metric *passes* when, for both perturbations and on both kinds of neuron, its mean (an undefined
value counting at the metric's no-information value, as on the board) falls at every step up the
fractions, and the drop from f = 0 to the largest f has a paired bootstrap 95% CI above 0
(`harness.scoring.stats.paired_test`). Metrics where lower is better (KLs) must rise instead;
metrics that do not read the simulation at all (the mean- and zero-ablation KLs) are listed as such.

The scorers that judge the explanation itself (embedding, detection, fuzzing; `Scorer.reads_simulation`
False) get the same two tests in *explanation space* (issue 23). The unperturbed explanation is a
list of true labels, written as the top-tokens baseline writes it (`the tokens "he", "she", ...`): the
planted neuron's class (CLASS, stripped of its leading space), or a set neuron's top-tokens baseline
list. *Missing labels* removes ceil(f · length) of them (every f > 0 removes at least one; none left
is the empty baseline's "nothing in particular"); *extra labels* inserts as many wrong labels at
seeded places, drawn from the planted neuron's other explain tokens or from the other set neurons'
lists (`LabelPlan`). Each explanation is scored by `run_scorers`, as in a cell. The LLM judges
(`llm_judges.scorers`) ask about every window under every condition, so they run on a few planted
draws and set neurons with fewer windows.

Outputs in the run directory (default `reports/metric_sanity/`): `report.md`, `metric_sanity.png`
and `results.json` (every number and the resolved config).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness.cli import exit_on_harness_error, hydra_output_dir
from harness.corpus import load_corpus
from harness.errors import ConfigError
from harness.formatting import fmt
from harness.paths import CONF_DIR
from harness.records import NeuronRecord, load_set
from harness.components import SCORERS, RunContext, build
from harness.rundir import write_atomic, write_figure, write_json
from harness.scoring import Scorer, Simulated, run_scorers, scorers_from
from harness.scoring.stats import metric_summary, paired_test
from harness.planted import CLASS, PLANTED, plant, planted_neuron
from harness.simulate import OracleQuantizedSimulator
from harness.subject import load_subject, subject_config

log = logging.getLogger(__name__)
DIRECTIONS = ("missing", "extra")

# --- Perturbations ------------------------------------------------------------------------------

@dataclass
class Plan:
    """One split's oracle labels, flattened, and the seeded order in which tokens are perturbed."""

    labels: np.ndarray        # the oracle simulation of every token of the split, flattened
    lengths: list[int]        # tokens per record, to unflatten
    active_order: np.ndarray  # indices of active tokens (label > 0), in removal order
    inactive_order: np.ndarray  # indices of inactive tokens, in labelling order
    extra_values: np.ndarray  # the label each inactive token gets, in that order

    @classmethod
    def draw(cls, sims: list[list[float]], rng: np.random.Generator) -> "Plan":
        labels = np.concatenate([np.asarray(s, dtype=np.float64) for s in sims]) if sims else np.zeros(0)
        active = np.flatnonzero(labels > 0)
        inactive = np.flatnonzero(labels <= 0)
        values = rng.choice(labels[active], size=len(inactive)) if len(active) else np.zeros(len(inactive))
        return cls(labels, [len(s) for s in sims], rng.permutation(active), rng.permutation(inactive), values)

    def perturbed(self, direction: str, fraction: float) -> list[list[float]]:
        out = self.labels.copy()
        if direction == "missing":
            out[self.active_order[:round(fraction * len(self.active_order))]] = 0.0
        elif direction == "extra":
            k = round(fraction * len(self.inactive_order))
            out[self.inactive_order[:k]] = self.extra_values[:k]
        else:
            raise ConfigError(f"unknown perturbation {direction!r}; known: {list(DIRECTIONS)}")
        return [part.tolist() for part in np.split(out, np.cumsum(self.lengths)[:-1])]


def conditions(fractions: list[float]) -> list[tuple[str, float]]:
    """(direction, fraction) pairs; f = 0 once, as ("missing", 0.0), shared by both directions."""
    return [("missing", 0.0)] + [(d, f) for d in DIRECTIONS for f in fractions if f > 0]


def perturbed_batch(neuron: NeuronRecord, fractions: list[float], seed: int) -> list[Simulated]:
    """The oracle simulation of `neuron` under every condition, one `Simulated` each (test and
    calibration perturbed alike, each split with its own seeded plan)."""
    oracle = OracleQuantizedSimulator()
    rng = np.random.default_rng(seed)
    plans = {split: Plan.draw(oracle.simulate("", neuron.split(split)), rng) for split in ("test", "calibration")}
    return [Simulated(neuron, test=plans["test"].perturbed(d, f), calibration=plans["calibration"].perturbed(d, f))
            for d, f in conditions(fractions)]


def score_grid(batches: Iterable[list[Simulated]], n: int, scorers: list[tuple[Scorer, dict]],
               context: RunContext | dict, desc: str) -> dict[str, np.ndarray]:
    """{"<scorer>.<metric>": array [n, len(conditions)]} of every metric under every condition; row i
    is `batches`' i-th batch (one neuron under every condition, made lazily: oracle simulations of
    hundreds of neurons do not fit in memory at once)."""
    out: dict[str, np.ndarray] = {}
    for i, batch in enumerate(tqdm(batches, total=n, desc=desc, unit="neuron")):
        for c, row in enumerate(run_scorers(scorers, batch, context)):
            for key, value in row.items():
                out.setdefault(key, np.full((n, len(batch)), np.nan))[i, c] = value
    return out


# --- Explanation perturbations: the scorers that judge the explanation itself ------------------

def label_count(fraction: float, n: int) -> int:
    """How many of n labels a fraction perturbs: ceil(f·n), so every f > 0 perturbs at least one
    (label lists are short: round(0.1 · 5) would perturb none of 5 top tokens)."""
    return min(n, math.ceil(round(fraction * n, 9)))


@dataclass
class LabelPlan:
    """One neuron's true label list and the seeded order in which it is perturbed."""

    labels: list[str]   # the true labels, in the explanation's order
    removal: list[int]  # indices into `labels`, in removal order
    extras: list[str]   # wrong labels in the order they are added, as many as `labels`
    slots: list[int]    # extras[j] goes before labels[slots[j]] (len(labels): after the last)

    @classmethod
    def draw(cls, labels: list[str], wrong: Iterable[str], rng: np.random.Generator) -> "LabelPlan":
        pool = sorted(set(wrong) - set(labels))
        if len(pool) < len(labels):
            raise ConfigError(f"only {len(pool)} wrong labels to draw {len(labels)} extra labels from for the list "
                              f"{labels}; give more neurons (set_neurons) so that other neurons' lists supply them")
        extras = [pool[i] for i in rng.choice(len(pool), size=len(labels), replace=False)]
        return cls(list(labels), rng.permutation(len(labels)).tolist(), extras,
                   rng.integers(0, len(labels) + 1, size=len(labels)).tolist())

    def perturbed(self, direction: str, fraction: float) -> list[str]:
        k = label_count(fraction, len(self.labels))
        if direction == "missing":
            gone = set(self.removal[:k])
            return [label for i, label in enumerate(self.labels) if i not in gone]
        if direction == "extra":
            # a fixed slot per extra label: a larger f inserts more of them, the rest stay in place
            placed = [((i, 1), label) for i, label in enumerate(self.labels)]
            placed += [((self.slots[j], 0), self.extras[j]) for j in range(k)]
            return [label for _, label in sorted(placed, key=lambda p: p[0])]
        raise ConfigError(f"unknown perturbation {direction!r}; known: {list(DIRECTIONS)}")


@dataclass(frozen=True)
class Labeller:
    """How a label list becomes an explanation: the top-tokens baseline's text, and the empty
    baseline's text ("nothing in particular") for a list with no labels left."""

    describe: Any  # list[str] → text
    empty: str

    @classmethod
    def from_baselines(cls) -> "Labeller":
        return cls(build("explainer", "baseline_top_tokens").describe, build("explainer", "baseline_empty").text)

    def text(self, labels: list[str]) -> str:
        return self.describe(labels) if labels else self.empty


def explained_batch(neuron: NeuronRecord, plan: LabelPlan, labeller: Labeller,
                    fractions: list[float]) -> list[Simulated]:
    """`neuron` with its perturbed explanation under every condition (no simulation: these scorers read none)."""
    return [Simulated(neuron, test=[], calibration=[], explanation=labeller.text(plan.perturbed(d, f)))
            for d, f in conditions(fractions)]


def planted_labels(neuron: NeuronRecord) -> tuple[list[str], list[str]]:
    """The planted neuron's true labels (its class, as tokens: " he" → "he", " He" → "He") and the
    wrong ones it may be given: every other token of its explain windows."""
    labels = [c.strip() for c in CLASS]
    wrong = {t.strip() for r in neuron.explain for t in r.tokens} - set(labels) - {""}
    return labels, sorted(wrong)


def fewer_windows(neuron: NeuronRecord, windows_per_kind: dict[str, int]) -> NeuronRecord:
    """`neuron` with only the first `windows_per_kind[kind]` test windows of each kind."""
    taken: dict[str, int] = {}
    test = []
    for r in neuron.test:
        if taken.get(r.kind, 0) < windows_per_kind.get(r.kind, 0):
            taken[r.kind] = taken.get(r.kind, 0) + 1
            test.append(r)
    return replace(neuron, test=test)


# --- Verdicts -----------------------------------------------------------------------------------

def curves(values: np.ndarray, fractions: list[float], metric, stats: Any) -> dict[str, Any]:
    """Per direction: the summary (mean with CI over rows, undefined at the no-information value)
    at each fraction, and the paired test of the drop from f = 0 to the largest fraction."""
    conds = conditions(fractions)
    no_info = metric.no_information
    filled = np.where(np.isfinite(values), values, no_info) if no_info is not None else values
    sign = 1.0 if metric.higher_is_better else -1.0
    out = {}
    for d in DIRECTIONS:
        cols = [0] + [c for c, (dd, f) in enumerate(conds) if dd == d and f > 0]
        points = [metric_summary(values[:, c], no_info, stats["bootstrap_resamples"], stats["seed"]) for c in cols]
        drop = paired_test(sign * filled[:, cols[0]], sign * filled[:, cols[-1]], stats["bootstrap_resamples"],
                           stats["seed"])
        means = [p["mean"] if no_info is not None else p["mean_defined"] for p in points]
        steps = [None if a is None or b is None else sign * (a - b) for a, b in zip(means, means[1:])]
        monotone = all(s is not None and s > 0 for s in steps)
        significant = drop["ci95"][0] is not None and drop["ci95"][0] > 0
        out[d] = {"fractions": [0.0] + [f for f in fractions if f > 0], "points": points, "means": means,
                  "drop": drop, "monotone": monotone, "significant": significant, "passes": monotone and significant}
    return out


def verdicts(grids: dict[str, dict[str, np.ndarray]], scorers: list[tuple[Scorer, dict]], fractions: list[float],
             stats: Any) -> dict[str, Any]:
    """Per metric: its curves on each kind of neuron and whether it passes (both directions, every
    kind). A metric is perturbed through what its scorer reads (the simulation, or the explanation);
    one whose values never change with it reads none of it."""
    by_name = {s.name: s for s, _ in scorers}
    out: dict[str, Any] = {}
    keys = sorted({k for grid in grids.values() for k in grid}, key=lambda k: (list(by_name).index(k.split(".")[0]), k))
    for key in keys:
        scorer_name, metric_name = key.split(".", 1)
        scorer = by_name[scorer_name]
        metric = scorer.metric(metric_name)
        block: dict[str, Any] = {"scorer": scorer_name, "metric": metric_name, "headline": metric_name == scorer.headline,
                                 "higher_is_better": metric.higher_is_better, "no_information": metric.no_information,
                                 "perturbs": "simulation" if scorer.reads_simulation else "explanation", "kinds": {}}
        reads = False
        for kind, grid in grids.items():
            if key not in grid:
                continue
            v = grid[key]
            reads |= bool(np.any(np.nan_to_num(v, nan=np.inf) != np.nan_to_num(v[:, :1], nan=np.inf)))
            block["kinds"][kind] = curves(v, fractions, metric, stats)
        block["reads_perturbed"] = reads
        block["passes"] = reads and all(c[d]["passes"] for c in block["kinds"].values() for d in DIRECTIONS)
        out[key] = block
    return out


# --- The check ----------------------------------------------------------------------------------

def run_check(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    fractions = sorted({float(f) for f in cfg.fractions})
    if len(fractions) < 2 or fractions[0] != 0.0 or not all(0.0 <= f <= 1.0 for f in fractions):
        raise ConfigError(f"fractions={list(cfg.fractions)}: give 0.0 and at least one more fraction in (0, 1]")
    scorers = scorers_from(cfg.scorer)
    budgeted = set(cfg.llm_judges.scorers or [])
    judging = [name for name in SCORERS if not SCORERS[name].reads_simulation]
    if budgeted - set(judging):
        raise ConfigError(f"llm_judges.scorers={sorted(budgeted)} must name scorers that judge the explanation: "
                          f"{judging}")
    cheap = [(s, p) for s, p in scorers if s.reads_simulation and not s.needs_context]
    costly = [(s, p) for s, p in scorers if s.reads_simulation and s.needs_context]
    if costly and cfg.ablation.windows_per_kind is not None:
        costly = [(s, {**p, "windows_per_kind": OmegaConf.to_container(cfg.ablation.windows_per_kind)}) for s, p in costly]
    judges = [(s, p) for s, p in scorers if not s.reads_simulation and s.name not in budgeted]
    llm_judges = [(s, p) for s, p in scorers if s.name in budgeted]
    llm_windows = OmegaConf.to_container(cfg.llm_judges.windows_per_kind)
    labeller = Labeller.from_baselines()
    stats = cfg.stats
    grids: dict[str, dict[str, np.ndarray]] = {"planted": {}, "set": {}}

    # The planted neuron: the random-init tiny Llama with one neuron edited to fire on pronouns.
    subject = plant(load_subject(subject_config("tiny_llama")))
    corpus_cfg = {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "corpus" / "brown.yaml")),
                  "max_documents": cfg.planted_documents}
    planted = planted_neuron(subject, [d.text for d in load_corpus(corpus_cfg).documents])
    draws = cfg.planted_draws
    seeds = [cfg.seed * 100_003 + k for k in range(draws)]
    if cheap:
        grids["planted"] = score_grid((perturbed_batch(planted, fractions, s) for s in seeds), draws, cheap, {},
                                      "planted: correlation, threshold")
    if costly:
        grids["planted"].update(score_grid((perturbed_batch(planted, fractions, s) for s in seeds), draws, costly,
                                           {"subject": subject}, "planted: ablation"))
    # The scorers that judge the explanation: window embeddings are cached per "set", here the planted corpus.
    key = hashlib.sha256(repr(corpus_cfg).encode()).hexdigest()[:16]
    judge_context = RunContext(manifest={"hash": f"metric-sanity-planted-{key}"})
    true, wrong = planted_labels(planted)
    plans = [LabelPlan.draw(true, wrong, np.random.default_rng(s)) for s in seeds]
    if judges:
        grids["planted"].update(score_grid((explained_batch(planted, p, labeller, fractions) for p in plans), draws,
                                           judges, judge_context, "planted: " + ", ".join(s.name for s, _ in judges)))
    if llm_judges and cfg.llm_judges.planted_draws:
        k = min(cfg.llm_judges.planted_draws, draws)
        few = fewer_windows(planted, llm_windows)
        grids["planted_llm"] = score_grid((explained_batch(few, p, labeller, fractions) for p in plans[:k]), k,
                                          llm_judges, judge_context, "planted: LLM judges")

    # Real neurons of the frozen set.
    neuron_set = load_set(cfg.neuron_set.path, limit=cfg.set_neurons)
    neurons = neuron_set.neurons
    seeds = [cfg.seed * 100_003 + 1_000 + i for i in range(len(neurons))]
    if cheap:
        grids["set"] = score_grid((perturbed_batch(n, fractions, s) for n, s in zip(neurons, seeds)), len(neurons),
                                  cheap, {}, f"{neuron_set.name}: correlation, threshold")
    if costly and cfg.ablation.set_neurons:
        k = min(cfg.ablation.set_neurons, len(neurons))
        grids["set_ablation"] = score_grid((perturbed_batch(n, fractions, s) for n, s in zip(neurons[:k], seeds[:k])),
                                           k, costly, RunContext(manifest=neuron_set.manifest),
                                           f"{neuron_set.name}: ablation")
    if judges or llm_judges:
        # True labels: the top-tokens baseline's list; wrong ones: the other neurons' lists.
        top = build("explainer", "baseline_top_tokens")
        lists = [top.tokens(n) for n in neurons]
        plans = [LabelPlan.draw(mine, {t for j, other in enumerate(lists) if j != i for t in other},
                                np.random.default_rng(s)) for i, (mine, s) in enumerate(zip(lists, seeds))]
        set_context = replace(judge_context, manifest=neuron_set.manifest)  # the same loaded models
        if judges:
            grids["set"].update(score_grid((explained_batch(n, p, labeller, fractions) for n, p in zip(neurons, plans)),
                                           len(neurons), judges, set_context,
                                           f"{neuron_set.name}: " + ", ".join(s.name for s, _ in judges)))
        if llm_judges and cfg.llm_judges.set_neurons:
            k = min(cfg.llm_judges.set_neurons, len(neurons))
            grids["set_llm"] = score_grid((explained_batch(fewer_windows(n, llm_windows), p, labeller, fractions)
                                           for n, p in zip(neurons[:k], plans[:k])), k, llm_judges, set_context,
                                          f"{neuron_set.name}: LLM judges")

    results = {
        "set": {"name": neuron_set.name, "hash": neuron_set.hash, "n_neurons": len(neurons),
                "n_ablation_neurons": min(cfg.ablation.set_neurons or 0, len(neurons)) if costly else 0,
                "n_llm_judge_neurons": min(cfg.llm_judges.set_neurons or 0, len(neurons)) if llm_judges else 0},
        "planted": {"layer": PLANTED[0], "neuron": PLANTED[1], "class": CLASS, "draws": cfg.planted_draws,
                    "llm_judge_draws": min(cfg.llm_judges.planted_draws or 0, draws) if llm_judges else 0,
                    "true_labels": true, "true_explanation": labeller.text(true),
                    "n_active_test_tokens": int(sum(a > 0 for r in planted.test for a in r.activations)),
                    "n_test_tokens": int(sum(len(r.activations) for r in planted.test))},
        "fractions": fractions,
        "empty_explanation": labeller.empty,
        "metrics": verdicts(grids, scorers, fractions, stats),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json(output_dir / "results.json", results)
    plot(results, output_dir / "metric_sanity.png")
    write_atomic(output_dir / "report.md", report(results))
    return results


# --- Outputs ------------------------------------------------------------------------------------

# Why each scorer's headline is its headline, beside the test it must pass (report.md says which pass).
HEADLINE_REASONS = {
    "correlation": "Bills et al.'s preferred score. Pearson correlation is unchanged by any increasing affine map of "
                   "the simulation, so the simulator's 0–10 scale cannot move it; the metrics of this scorer that do "
                   "compare scales (R² and absolute deviation without calibration) are the ones at risk of rewarding a "
                   "simulation for predicting less.",
    "threshold": "AUROC against \"above half the neuron's corpus maximum\" needs no fitted cut and is insensitive to the "
                 "simulator's scale; balanced accuracy and F1 depend on a cut fitted on calibration, and F1 has no "
                 "no-information value, so a neuron it leaves undefined cannot be counted on a common basis.",
    "ablation": "1 − KL(simulated)/KL(mean-ablated) asks whether the simulation stands in for the neuron in the model "
                "itself, on the real activation scale (linear calibration on the calibration split); the KLs alone "
                "are not comparable across neurons.",
    "embedding": "AUROC of the explanation's cosine similarity to each window against the window's active label needs no "
                 "cut; the similarity gap's size depends on the embedding model.",
    "detection": "AUROC of the judge's P(yes) against the window's active label needs no cut and is insensitive to the "
                 "judge's bias towards \"yes\", which moves precision, recall, F1 and the false-positive rate.",
    "fuzzing": "As detection: AUROC of P(yes) is insensitive to the judge's bias towards \"yes\".",
}

KIND_LABELS = {"planted": "planted neuron", "set": "set neurons", "set_ablation": "set neurons (ablation subset)",
               "planted_llm": "planted neuron (LLM-judge draws)", "set_llm": "set neurons (LLM-judge subset)"}


def verdict_table(results: dict[str, Any]) -> str:
    lines = ["| scorer | metric | missing labels: f=0 → max (kind) | extra labels: f=0 → max (kind) | monotone | "
             "drop CI > 0 | passes |", "|---|---|---|---|---|---|---|"]
    for key, m in results["metrics"].items():
        name = f"**{m['metric']}** (headline)" if m["headline"] else m["metric"]
        if not m["reads_perturbed"]:
            lines.append(f"| {m['scorer']} | {name} | — | — | — | — | n/a: does not read the {m['perturbs']} |")
            continue
        cells = []
        for d in DIRECTIONS:
            cells.append("<br>".join(f"{fmt(c[d]['means'][0])} → {fmt(c[d]['means'][-1])} ({KIND_LABELS[k]})"
                                     for k, c in m["kinds"].items()))
        mono = all(c[d]["monotone"] for c in m["kinds"].values() for d in DIRECTIONS)
        sig = all(c[d]["significant"] for c in m["kinds"].values() for d in DIRECTIONS)
        failing = [f"{d} on {KIND_LABELS[k]}" for k, c in m["kinds"].items() for d in DIRECTIONS if not c[d]["passes"]]
        verdict = "**yes**" if m["passes"] else "no: " + ", ".join(failing)
        lines.append(f"| {m['scorer']} | {name} | {cells[0]} | {cells[1]} | {'yes' if mono else 'no'} | "
                     f"{'yes' if sig else 'no'} | {verdict} |")
    return "\n".join(lines)


def curve_table(results: dict[str, Any], key: str) -> str:
    m = results["metrics"][key]
    lines = [f"`{key}`:", "", "| neurons | perturbation | " + " | ".join(f"f={f:g}" for f in results["fractions"]) + " |",
             "|---|---|" + "---|" * len(results["fractions"])]
    for kind, c in m["kinds"].items():
        for d in DIRECTIONS:
            cells = []
            for p in c[d]["points"]:
                mean, (lo, hi) = (p["mean"], p["ci95"]) if m["no_information"] is not None else (p["mean_defined"],
                                                                                                p["ci95_defined"])
                cells.append(f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]")
            lines.append(f"| {KIND_LABELS[kind]} | {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    s, p = results["set"], results["planted"]
    passing = [k for k, m in results["metrics"].items() if m["passes"]]
    failing = [k for k, m in results["metrics"].items() if m["reads_perturbed"] and not m["passes"]]
    headlines = {k: m for k, m in results["metrics"].items() if m["headline"]}
    windows = " + ".join(f"{n} {kind}" for kind, n in (results["config"]["ablation"]["windows_per_kind"] or {}).items() if n)
    llm_windows = " + ".join(f"{n} {kind}" for kind, n in results["config"]["llm_judges"]["windows_per_kind"].items() if n)
    judges = ", ".join(f"`{m}`" for m in results["config"]["llm_judges"]["scorers"] or []
                       if m in results["config"]["scorer"])
    lines = [
        "# Metric sanity: label-perturbation tests of every scorer", "",
        "Generated by `python -m harness.metric_sanity` (config `conf/check/metric_sanity.yaml`) — do not edit by hand.",
        "", "![metric sanity curves](metric_sanity.png)", "",
        "## What is measured", "",
        "A metric of explanation quality should get worse when the explanation gets worse. Following NeuronEval "
        "(Oikarinen et al., ICML 2025), whose two sanity tests ask that a metric drop when true concept labels are "
        "removed and drop when wrong ones are added, each scorer that reads a simulation is applied to the **oracle "
        "simulation** (the true "
        "activations quantised to the simulators' 0–10 scale, the cell's ceiling control) perturbed at fractions "
        f"f = {', '.join(f'{f:g}' for f in results['fractions'])}:", "",
        "- **missing labels**: a share f of the truly active tokens (oracle value > 0) are set to 0;",
        "- **extra labels**: a share f of the inactive tokens get a label, a value drawn from the neuron's own active "
        "labels.", "",
        "Token choices are seeded and nested; calibration is perturbed like test. Neurons: the **planted neuron** "
        f"(layer {p['layer']}, neuron {p['neuron']} of the random-init `tiny_llama`, edited to fire on the pronouns "
        f"{', '.join(repr(c) for c in p['class'])} and be exactly 0 elsewhere; {p['n_active_test_tokens']} of its "
        f"{p['n_test_tokens']} test tokens are active), with a CI over {p['draws']} perturbation draws; and the "
        f"**{s['n_neurons']} neurons of set `{s['name']}`** (`{s['hash'][:12]}`), with a CI over neurons; the "
        f"ablation scorer, which runs the subject model for every perturbation, on the first {s['n_ablation_neurons']} "
        f"of them with {windows} test windows each.", "",
        "The scorers that judge the explanation itself (embedding, detection, fuzzing) read no simulation, so for "
        "them the same two tests perturb the **explanation**, a list of true labels written as the top-tokens "
        f"baseline writes it: for the planted neuron its class ({p['true_explanation']}), for a set neuron the "
        "top-tokens baseline's own explanation. *Missing labels*: ceil(f × length) of the labels removed (every f > 0 "
        f"removes at least one; with none left the explanation is the empty baseline's \"{results['empty_explanation']}\"); "
        "*extra labels*: as many wrong labels inserted at seeded places, drawn from the other tokens of the planted "
        "neuron's explain windows, or from the other set neurons' lists. Choices are seeded and nested. Each "
        "perturbed explanation is scored as a cell scores it."
        + (f" The LLM judges ({judges}) ask their judge about every window under every condition, so they run on "
           f"{p['llm_judge_draws']} planted draws and the first {s['n_llm_judge_neurons']} set neurons, with "
           f"{llm_windows} test windows each." if judges else ""), "",
        "Means count an undefined value at the metric's no-information value (as the board does); metrics without "
        "one (F1, KLs) are averaged over the neurons where they are defined. A metric **passes** when, for both "
        "perturbations and on every kind of neuron, its mean falls at every step up the fractions (rises, for a KL) "
        "and the drop from f = 0 to the largest f has a paired bootstrap 95% CI above 0.", "",
        "## Verdicts", "", verdict_table(results), "",
        f"Pass: {', '.join(f'`{k}`' for k in passing) or 'none'}.", "",
        f"Fail: {', '.join(f'`{k}`' for k in failing) or 'none'}.", "",
        "## Headline metrics", "",
    ]
    lines += ["The board ranks each scoring rule on its headline metric, so a headline must pass both tests. Why each "
              "headline, among the metrics of its scorer that pass:", ""]
    for key, m in headlines.items():
        verdict = "passes both tests" if m["passes"] else ("**fails** (see the table above): it should not be a headline "
                                                           "until a passing metric replaces it")
        lines.append(f"- `{key}` {verdict}. {HEADLINE_REASONS.get(m['scorer'], '')}")
    lines += ["", "## Curves of the headline metrics (mean [95% CI])", ""]
    for key in headlines:
        lines += [curve_table(results, key), ""]
    lines += ["Every metric's curve, with its CI, is in `results.json`.", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, m in results["metrics"].items() if m["reads_perturbed"]]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    styles = {"planted": ":", "set": "-", "set_ablation": "-", "planted_llm": ":", "set_llm": "-"}
    for ax, key in zip(axes.flat, keys):
        m = results["metrics"][key]
        for kind, c in m["kinds"].items():
            for i, d in enumerate(DIRECTIONS):
                pts = c[d]["points"]
                use_all = m["no_information"] is not None
                mean = [p["mean"] if use_all else p["mean_defined"] for p in pts]
                ci = [p["ci95"] if use_all else p["ci95_defined"] for p in pts]
                xs = c[d]["fractions"]
                y = np.array([np.nan if v is None else v for v in mean], dtype=float)
                lo = np.array([np.nan if v[0] is None else v[0] for v in ci], dtype=float)
                hi = np.array([np.nan if v[1] is None else v[1] for v in ci], dtype=float)
                ax.plot(xs, y, styles[kind], marker="o", ms=3, color=f"C{i}",
                        label=f"{d}, {KIND_LABELS[kind]}")
                ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15)
        ax.set_title(("✓ " if m["passes"] else "✗ ") + key + (" (headline)" if m["headline"] else ""), fontsize=9)
        ax.set_xlabel("fraction perturbed", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, bbox_to_anchor=(0.5, 0.975))
    fig.suptitle("Label-perturbation sanity tests: a sound metric falls in both directions (✓ passes); "
                 "mean with 95% CI", y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    write_figure(path, fig, dpi=80)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="check/metric_sanity")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    output_dir = hydra_output_dir()
    results = run_check(cfg, output_dir)
    print(verdict_table(results))
    print(f"\nwrote {output_dir / 'report.md'}, {output_dir / 'metric_sanity.png'} and {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
