"""One benchmark cell: (neuron set, explainer, simulator, scorers) → neurons.parquet + summary.json.

Every neuron is explained from its `explain` split and scored on its `test` split. A neuron that
fails gets its error in its row instead of a score; the cell goes on. `summary.json` is written
last, so its presence marks a complete cell.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness import __version__
from harness.errors import HarnessError
from harness.explain import Explanation, make_explainer
from harness.llm.cache import CallCache, Ledger
from harness.records import load_set
from harness.scoring import get_scorer
from harness.scoring.stats import bootstrap_ci
from harness.simulate import make_simulator

log = logging.getLogger(__name__)


def run_cell(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    t0 = time.time()
    neuron_set = load_set(cfg.neuron_set.path, limit=cfg.neuron_set.limit)
    simulator = make_simulator(cfg.simulator)
    scorers = [get_scorer(name) for name in cfg.scorer]
    ledger = Ledger(prices=OmegaConf.to_container(cfg.pricing, resolve=True))

    def judge(neuron, text: str) -> float:
        """The first scorer's headline metric on the calibration split (never on test)."""
        simulation = simulator.simulate(text, neuron.calibration)
        return scorers[0].score(neuron.calibration, simulation)[scorers[0].headline]

    explainer = make_explainer(cfg.explainer, cfg.get("prompt"), ledger=ledger, judge=judge,
                               cache=CallCache(cfg.call_cache) if cfg.call_cache else None)
    explain_batch = getattr(explainer, "explain_batch", None) or (lambda ns: [_try(explainer.explain, n) for n in ns])

    rows = []
    with tqdm(total=len(neuron_set.neurons), desc="neurons", unit="neuron") as bar:
        for lo in range(0, len(neuron_set.neurons), cfg.batch_neurons):
            chunk = neuron_set.neurons[lo:lo + cfg.batch_neurons]
            for neuron, explanation in zip(chunk, explain_batch(chunk)):
                rows.append(_score_row(neuron, explanation, simulator, scorers))
            bar.update(len(chunk))
    table = pd.DataFrame(rows)

    seed = cfg.stats.seed
    scores = {}
    for scorer in scorers:
        metrics = {c.split(".", 1)[1]: bootstrap_ci(table[c], cfg.stats.bootstrap_resamples, seed)
                   for c in table.columns if c.startswith(scorer.name + ".")}
        headline = metrics.get(scorer.headline, bootstrap_ci([]))
        scores[scorer.name] = {"metric": scorer.headline, **headline, "metrics": metrics}

    summary = {
        "harness_version": __version__,
        "set_name": neuron_set.name,
        "set_hash": neuron_set.hash,
        "n_neurons": len(rows),
        "n_failed": int(table["failure"].notna().sum()),
        "scores": scores,
        "cost": ledger.summary(),
        "wall_seconds": round(time.time() - t0, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(output_dir / "neurons.parquet", lambda p: table.to_parquet(p, index=False))
    _write_atomic(output_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
    return summary


def _try(fn, *args):
    try:
        return fn(*args)
    except HarnessError as exc:
        return exc


def _score_row(neuron, explanation: Explanation | HarnessError, simulator, scorers) -> dict[str, Any]:
    """One neuron's row; a failure is recorded in it and the cell goes on."""
    row: dict[str, Any] = {"layer": neuron.layer, "neuron": neuron.neuron, "explanation": None,
                           "failure": None, "cost_usd": 0.0, "details": None}
    try:
        if isinstance(explanation, HarnessError):
            raise explanation
        row.update(explanation=explanation.text, cost_usd=explanation.cost_usd,
                   details=json.dumps(explanation.details) if explanation.details else None)
        simulation = simulator.simulate(explanation.text, neuron.test)
        for scorer in scorers:
            for metric, value in scorer.score(neuron.test, simulation).items():
                row[f"{scorer.name}.{metric}"] = value
    except HarnessError as exc:
        row["failure"] = f"{type(exc).__name__}: {exc}"
        log.warning("layer %d neuron %d failed: %s", neuron.layer, neuron.neuron, exc)
    return row


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def results_table(summary: dict[str, Any]) -> str:
    """A small Markdown table of every metric's mean and CI."""
    lines = [f"neuron set {summary['set_name']} (hash {summary['set_hash'][:12]}…), "
             f"{summary['n_neurons']} neurons, {summary['n_failed']} failed",
             "", "| scorer | metric | mean | 95% CI | n | failed |", "|---|---|---|---|---|---|"]
    for name, block in summary["scores"].items():
        for metric, s in block["metrics"].items():
            mark = " (headline)" if metric == block["metric"] else ""
            lo, hi = s["ci95"]
            lines.append(f"| {name} | {metric}{mark} | {_fmt(s['mean'])} | [{_fmt(lo)}, {_fmt(hi)}] | "
                         f"{s['n']} | {s['n_failed']} |")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
