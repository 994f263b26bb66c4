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
and `results.json` (every number and the resolved config). The perturbations live in
`harness/sanity/perturb.py`, the report and plot in `harness/sanity/report.py`; this module scores,
judges and runs them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness.cli import exit_on_harness_error, hydra_output_dir
from harness.corpus import load_corpus
from harness.errors import ConfigError
from harness.paths import CONF_DIR
from harness.records import load_set
from harness.components import SCORERS, RunContext, build
from harness.rundir import write_atomic, write_json
from harness.scoring import Scorer, Simulated, run_scorers, scorers_from
from harness.scoring.stats import metric_summary, paired_test
from harness.planted import CLASS, PLANTED, plant, planted_neuron
from harness.sanity.perturb import (DIRECTIONS, LabelPlan, Labeller, conditions, explained_batch, fewer_windows,
                                    perturbed_batch, planted_labels)
from harness.sanity.report import plot, report, verdict_table
from harness.subject import load_subject, subject_config

log = logging.getLogger(__name__)

# --- Scoring ------------------------------------------------------------------------------------

def score_grid(batches: Iterable[list[Simulated]], n: int, scorers: list[tuple[Scorer, dict]],
               context: RunContext | None, desc: str) -> dict[str, np.ndarray]:
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
        grids["planted"] = score_grid((perturbed_batch(planted, fractions, s) for s in seeds), draws, cheap, None,
                                      "planted: correlation, threshold")
    if costly:
        grids["planted"].update(score_grid((perturbed_batch(planted, fractions, s) for s in seeds), draws, costly,
                                           RunContext(given_subject=subject), "planted: ablation"))
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
                                  cheap, None, f"{neuron_set.name}: correlation, threshold")
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="check/metric_sanity")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    output_dir = hydra_output_dir()
    results = run_check(cfg, output_dir)
    print(verdict_table(results))
    print(f"\nwrote {output_dir / 'report.md'}, {output_dir / 'metric_sanity.png'} and {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
