"""One benchmark cell: (neuron set, explainer, prompt, simulator, scorers) → neurons.parquet + summary.json.

Every neuron is explained from its `explain` split, simulated on `test` (and on `calibration` where a
scorer reads it), and scored on `test`. Beside each score the cell reports two controls computed with
the same simulator and scorers: the *floor* (each neuron scored with another neuron's explanation, a
seeded derangement) and the *ceiling* (the test activations themselves quantised to the
simulator's 0–10 scale).

With `evaluate_on=calibration` (to choose a component, e.g. a prompt, without touching test) the
calibration split takes test's place everywhere (scores, controls, significance) and the cell never
reads test. No split is then left to fit on, so every metric fitted on calibration is undefined
(NaN): correlation's calibrated rsquared and absolute_dev_explained, threshold's q<P> metrics and
every balacc/f1 (their cut is fitted on calibration). Metrics that need no fit are scored as on
test; validation refuses what needs a fit for its headline, and explainers that choose among
explanations on calibration (harness/validation.py, calibration_problems).

A neuron that fails for good (a malformed answer twice, a refused request)
gets its error in its row and the cell goes on; more than `max_failed_fraction` of them fail the
cell. A model call that fails for a reason that may pass (TransientLLMError: no connection,
timeouts, 429/5xx after the SDK's retries) stops the cell incomplete: an outage is not a result.
`summary.json` is written last, and only for a complete cell, so its presence marks one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness import __version__
from harness.components import RunContext
from harness.errors import CellFailedError, ConfigError, HarnessError, TransientLLMError
from harness.explain import make_explainer
from harness.formatting import fmt
from harness.llm.cache import CallCache, Ledger
from harness.records import NeuronRecord, load_set
from harness.redact import redact
from harness.rundir import mark_done, write_atomic
from harness.scoring import Scorer, Simulated, reporting, run_scorers, score_batch, scorers_from
from harness.scoring.correlation import pooled
from harness.scoring.stats import derangement, fdr_summary, metric_summary, pearson_p_value
from harness.simulate import OracleQuantizedSimulator, Simulator, make_simulator
from harness.types import CONTROLS
from harness.validation import validate_cell_config

log = logging.getLogger(__name__)


def simulate(simulator: Simulator, neuron: NeuronRecord, text: str,
             scorers: list[tuple[Scorer, dict[str, Any]]]) -> Simulated:
    """Simulate `test`, and `calibration` only where a scorer reads it (an LLM simulator's time)."""
    calibration = any(scorer.needs_calibration for scorer, _ in scorers)
    return Simulated(neuron, test=simulator.simulate(text, neuron.test),
                     calibration=simulator.simulate(text, neuron.calibration) if calibration else [], explanation=text)


def run_cell(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    t0 = time.time()
    validate_cell_config(cfg)
    neuron_set = load_set(cfg.neuron_set.path, limit=cfg.neuron_set.limit)
    neurons = [evaluation_view(n, cfg.evaluate_on) for n in neuron_set.neurons]
    explainer_reads_the_sets_subject(cfg, neuron_set.manifest)
    ledger = Ledger(prices=OmegaConf.to_container(cfg.pricing, resolve=True))  # explainer's and simulator's calls
    cache = CallCache(cfg.call_cache) if cfg.call_cache else None
    simulator = make_simulator(cfg.simulator, ledger=ledger)
    scorers = scorers_from(cfg.scorer)
    # What the run's components share: the ledger and call cache, and the set's subject, loaded once
    # (digest-checked) for every component that reads it (a weight baseline's explainer, the ablation scorer).
    context = RunContext(manifest=neuron_set.manifest, ledger=ledger, cache=cache)

    def judge(neuron: NeuronRecord, text: str) -> float:
        """The first scorer's headline metric on the calibration split (never on test)."""
        scorer, params = scorers[0]
        on_calibration = replace(neuron, test=neuron.calibration)
        sims = simulator.simulate(text, neuron.calibration)
        return score_batch(scorer, params, [Simulated(on_calibration, sims, sims, text)], context)[0][scorer.headline]

    context.judge = judge  # for an explainer that chooses among candidates (n samples, hypothesis_loop)
    explainer = make_explainer(cfg.explainer, cfg.get("prompt"), context)
    if hasattr(explainer, "prepare"):  # e.g. baseline_borrowed explains every neuron first
        explainer.prepare(neurons)
    explain_batch = getattr(explainer, "explain_batch", None) or (lambda ns: [_try(explainer.explain, n) for n in ns])

    rows: list[dict[str, Any]] = []
    simulated: dict[int, Simulated] = {}
    outage: list[str] = []  # transient failures: the cell stops after the batch that met them
    with tqdm(total=len(neurons), desc="explain + simulate", unit="neuron") as bar:
        for lo in range(0, len(neurons), cfg.batch_neurons):
            chunk = neurons[lo:lo + cfg.batch_neurons]
            for i, (neuron, explanation) in enumerate(zip(chunk, explain_batch(chunk)), lo):
                row = {"layer": neuron.layer, "neuron": neuron.neuron, "explanation": None, "failure": None,
                       "cost_usd": 0.0, "details": None, "test_simulation": None}
                try:
                    if isinstance(explanation, HarnessError):
                        raise explanation
                    row.update(explanation=explanation.text, cost_usd=explanation.cost_usd,
                               details=json.dumps(explanation.details) if explanation.details else None)
                    simulated[i] = simulate(simulator, neuron, explanation.text, scorers)
                    row["test_simulation"] = simulated[i].test
                except HarnessError as exc:  # recorded for this neuron; the cell goes on
                    row["failure"] = f"{type(exc).__name__}: {exc}"
                    log.warning("layer %d neuron %d failed: %s", neuron.layer, neuron.neuron, exc)
                    if isinstance(exc, TransientLLMError):
                        outage.append(f"layer {neuron.layer} neuron {neuron.neuron}: {exc}")
                rows.append(row)
            bar.update(len(chunk))
            if outage:
                raise _incomplete(outage)

    done = sorted(simulated)
    try:
        partners = floor_partners(done, cfg.stats.seed, cfg.controls.get("floor_neurons"))
        floor = score_neurons(neurons, rows, simulated, simulator, scorers, cfg.controls, partners,
                              range(len(neurons)), context)
    except TransientLLMError as exc:
        raise _incomplete([f"a floor simulation: {exc}"]) from exc
    significance = None
    if "correlation" in cfg.scorer:
        significance = _significance(rows, simulated, cfg.stats)
        if cfg.controls.floor:
            significance["floor"] = fdr_summary([_correlation_p(floor[i]) for i in sorted(floor)],
                                                cfg.stats.get("fdr_q", 0.05))
    table = pd.DataFrame(rows)
    n_failed = int(table["failure"].notna().sum())
    write_atomic(output_dir / "neurons.parquet", lambda f: table.to_parquet(f, index=False))
    if n_failed > cfg.max_failed_fraction * len(rows):
        common = table["failure"].dropna().str.split(":").str[0].value_counts()
        raise CellFailedError(
            f"{n_failed} of {len(rows)} neurons failed ({', '.join(f'{n} {kind}' for kind, n in common.items())}), "
            f"more than max_failed_fraction={cfg.max_failed_fraction} allows: the cell failed and wrote no "
            f"summary.json; {output_dir / 'neurons.parquet'} has each neuron's failure. Fix the cause, or raise "
            "max_failed_fraction to accept the result.")

    summary = {
        "harness_version": __version__,
        "set_name": neuron_set.name,
        "set_hash": neuron_set.hash,
        "n_neurons": len(rows),
        "n_failed": n_failed,
        "evaluate_on": cfg.evaluate_on,
        "scores": summarise(table, scorers, "", cfg.stats),
        **{control: summarise(control_rows(table, control, cfg.controls, partners), reporting(scorers, control),
                              control + ".", cfg.stats)
           for control in CONTROLS if cfg.controls[control]},
        **({"significance": significance} if significance is not None else {}),
        "cost": ledger.summary(),
        "wall_seconds": round(time.time() - t0, 2),
        "config": redact(OmegaConf.to_container(cfg, resolve=True)),
    }
    mark_done(output_dir, summary)
    return summary


def evaluation_view(neuron: NeuronRecord, evaluate_on: str) -> NeuronRecord:
    """The neuron as the cell's scorers see it: unchanged for `test`; for `calibration`, its
    calibration split in test's place and no split to fit on (the module docstring)."""
    return neuron if evaluate_on == "test" else replace(neuron, test=neuron.calibration, calibration=[])


def explainer_reads_the_sets_subject(cfg: DictConfig, manifest: dict[str, Any]) -> None:
    """An explainer that reads a subject's weights (a `subject:` in its config: the connection-weight
    baselines) must read the model the set was built on: null means that one (filled in, so the
    cell's config records it); another subject is refused, since its weights describe other neurons."""
    if "subject" not in cfg.explainer:
        return
    built_on = manifest["subject"]["name"]
    if cfg.explainer.subject is None:
        cfg.explainer.subject = built_on
    elif cfg.explainer.subject != built_on:
        raise ConfigError(f"explainer {cfg.explainer.kind} reads the weights of subject {cfg.explainer.subject!r}, but "
                          f"neuron set {manifest['name']} was built on {built_on!r}: set explainer.subject={built_on} "
                          "(or null: the set's subject)")


def floor_partners(explained: list[int], seed: int, sample: int | None = None) -> dict[int, int]:
    """The random-explanation floor's pairing: neuron i borrows the explanation of neuron
    partners[i], a seeded derangement of the explained neurons. Empty with fewer than two: there
    is no other explanation to borrow, so the floor is undefined (never the neuron's own). With
    `sample` (controls.floor_neurons), only a seeded sample of that many explained neurons gets a
    floor: it then costs that many neurons' simulations, for a wider CI."""
    if len(explained) < 2:
        return {}
    partners = dict(zip(explained, np.asarray(explained)[derangement(len(explained), seed)].tolist()))
    if sample is None or sample >= len(explained):
        return partners
    kept = np.random.default_rng([seed, 1]).choice(explained, size=sample, replace=False)
    return {i: partners[i] for i in sorted(kept.tolist())}


def control_rows(table: pd.DataFrame, control: str, controls, partners: dict[int, int]) -> pd.DataFrame:
    """The rows a control's summary is over: every neuron, except for a floor on a sample
    (controls.floor_neurons), which is summarised over its sample alone."""
    if control == "floor" and controls.get("floor_neurons") is not None:
        return table.iloc[sorted(partners)]
    return table


def score_neurons(neurons: list[NeuronRecord], rows: list[dict[str, Any]], simulated: dict[int, Simulated],
                  simulator: Simulator, scorers, controls, partners: dict[int, int], indices,
                  context: RunContext | None = None) -> dict[int, Simulated]:
    """Score every simulated neuron into its row (`rows[i]`, in place) and, where `controls` asks,
    the controls of the neurons in `indices`: the floor (simulated with the explanation of
    `partners[i]`) and the ceiling. Returns the floor simulations. A cell and the verification of
    a leaderboard entry both score through here, so an entry is re-scored by the code that made it."""
    _add_scores(rows, "", scorers, simulated, context)
    floor: dict[int, Simulated] = {}
    if controls["floor"]:
        for i in indices:
            if i in simulated and i in partners:
                try:
                    floor[i] = simulate(simulator, neurons[i], rows[partners[i]]["explanation"], scorers)
                except TransientLLMError:
                    raise  # an outage is not a result
                except HarnessError as exc:
                    log.warning("floor for layer %d neuron %d failed: %s", neurons[i].layer, neurons[i].neuron, exc)
        _add_scores(rows, "floor.", scorers, floor, context)
    ceiling_scorers = reporting(scorers, "ceiling")
    if controls["ceiling"] and ceiling_scorers:
        oracle = OracleQuantizedSimulator()
        _add_scores(rows, "ceiling.", ceiling_scorers,
                    {i: simulate(oracle, neurons[i], "", ceiling_scorers) for i in indices}, context)
    return floor


def _incomplete(outage: list[str]) -> CellFailedError:
    return CellFailedError(
        f"{len(outage)} model call(s) failed for a reason that may pass ({outage[0]}): an outage is not a result, "
        "so the cell stopped incomplete and wrote no summary.json. Re-run the same command (a sweep with the "
        "same hydra.sweep.dir) when the API answers again; every answer already received is cached.")


def _correlation_p(s: Simulated) -> float:
    return pearson_p_value(*pooled(s.neuron.test, s.test, {"top", "random"}))


def _significance(rows, simulated: dict[int, Simulated], stats: DictConfig) -> dict[str, Any]:
    """Per-neuron p-value of ev_correlation_score (Pearson over pooled top+random test tokens) in
    each row (`significance.p_value`); the count surviving BH at q across the cell's neurons (a
    q-value depends on which neurons were run, so it is not stored per row)."""
    keys = sorted(simulated)
    p = [_correlation_p(simulated[i]) for i in keys]
    for i, pi in zip(keys, p):
        rows[i]["significance.p_value"] = pi
    return {"metric": "correlation.ev_correlation_score", "test": "Pearson r = 0, two-sided, BH-FDR across neurons",
            **fdr_summary(p, stats.get("fdr_q", 0.05))}


def _add_scores(rows, prefix: str, scorers, simulations: dict[int, Simulated], context=None) -> None:
    keys = sorted(simulations)
    for i, scores in zip(keys, run_scorers(scorers, [simulations[i] for i in keys], context)):
        rows[i].update({f"{prefix}{k}": v for k, v in scores.items()})


def summarise(table: pd.DataFrame, scorers, prefix: str, stats: Any) -> dict[str, Any]:
    """Per scorer: the headline metric's summary at the top level, every metric's under `metrics`
    (`metric_summary`: the mean over every row of `table`, undefined values at the metric's
    no-information value, beside the mean over defined rows and the coverage). A metric column
    missing from `table` (no neuron was scored) is all undefined."""
    out = {}
    for scorer, _ in scorers:
        start = f"{prefix}{scorer.name}."
        names = [c[len(start):] for c in table.columns if c.startswith(start)]
        if scorer.headline not in names:
            names.insert(0, scorer.headline)
        metrics = {m: metric_summary(table[start + m] if start + m in table else np.full(len(table), np.nan),
                                     scorer.metric(m).no_information, stats["bootstrap_resamples"], stats["seed"])
                   for m in names}
        out[scorer.name] = {"metric": scorer.headline, **metrics[scorer.headline], "metrics": metrics}
    return out


def _try(fn, *args):
    try:
        return fn(*args)
    except HarnessError as exc:
        return exc


def results_table(summary: dict[str, Any]) -> str:
    """A small Markdown table of every metric: the mean over every neuron (undefined at the
    metric's no-information value) with its CI, the mean over defined neurons and the coverage,
    and the floor and ceiling beside it."""
    on = summary.get("evaluate_on", "test")
    lines = [f"neuron set {summary['set_name']} (hash {summary['set_hash'][:12]}…), "
             f"{summary['n_neurons']} neurons, {summary['n_failed']} failed"
             + (f", scored on the {on} split (not a result on test)" if on != "test" else ""), "",
             "| scorer | metric | mean (all) | 95% CI | mean (defined) | coverage | floor | ceiling |",
             "|---|---|---|---|---|---|---|---|"]
    for name, block in summary["scores"].items():
        for metric, s in block["metrics"].items():
            mark = " (headline)" if metric == block["metric"] else ""
            controls = [fmt(summary.get(c, {}).get(name, {}).get("metrics", {}).get(metric, {}).get("mean"))
                        for c in CONTROLS]
            lo, hi = s["ci95"]
            lines.append(f"| {name} | {metric}{mark} | {fmt(s['mean'])} | [{fmt(lo)}, {fmt(hi)}] | "
                         f"{fmt(s['mean_defined'])} | {s['n_defined']}/{s['n']} | {controls[0]} | {controls[1]} |")
    sig = summary.get("significance")
    if sig:
        floor = sig.get("floor")
        lines += ["", f"correlation significant after BH-FDR at q={sig['q']}: {sig['n_significant']} of "
                      f"{sig['n_tested']} neurons" + (f" (floor: {floor['n_significant']} of {floor['n_tested']})"
                                                       if floor else "")]
    return "\n".join(lines)

