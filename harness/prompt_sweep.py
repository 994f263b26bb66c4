"""`python -m harness.prompt_sweep MULTIRUN_DIR [--out reports/prompt_sweeps]`: each explainer's prompt, chosen on calibration.

Reads a sweep of prompt variants scored with `evaluate_on=calibration` (docs/running.md, "Choosing a
prompt on calibration"), e.g.

    python -m harness -m evaluate_on=calibration neuron_set.limit=30 explainer=hf_local \\
        prompt=openai_tokens,top_tokens,contrastive,cot hydra.sweep.dir=multirun/prompt-sweep-hf_local

through `harness.collect`, and writes for each explainer `<out>/<explainer>.md` and `.json`: every
prompt's mean of the first scorer's headline metric on calibration (over every neuron, an undefined
value at the metric's no-information value, as the board ranks) with its bootstrap 95% CI, and the
chosen prompt. The rule: the highest mean wins; prompts with exactly equal means are a tie, which
goes to the prompt whose name sorts first, and the report says so. The chosen prompt's paired
differences against every other prompt (per neuron, undefined values counted as in the means;
harness.scoring.stats.paired_test, BH-adjusted) show whether the choice is clear or a coin toss.
An explainer is named by its `explainer=` override (its config group option), else by its kind and
model.

A cell of the sweep without a result (e.g. more failed neurons than `max_failed_fraction` allows)
takes no part in the choice and is named in the report with its count of failed neurons.

Refused, with a PromptSweepError: a cell scored on test (the choice must never see test), a cell
without a prompt (an explainer that takes none), two cells of one explainer with the same prompt,
and cells of one explainer that differ in neuron set, neuron count, simulator or scorers.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from harness.cli import exit_on_harness_error
from harness.collect import (CollectError, benjamini_hochberg, cell_overrides, collect, describe_config,
                             incomplete_cells)
from harness.components import SCORERS
from harness.formatting import fmt, undefined
from harness.rundir import write_atomic
from harness.scoring.stats import paired_test

RULE = ("the highest calibration mean of the first scorer's headline metric wins; exactly equal means are a tie, "
        "won by the prompt whose name sorts first")
SAME = ("set_hash", "n_neurons", "simulator", "scorers", "headlines")  # what every cell of one explainer shares


class PromptSweepError(CollectError):
    """A sweep cannot choose a prompt: a cell scored on test, or cells that are not comparable."""


def explainer_name(overrides: str, described: str) -> str:
    """The cell's `explainer=` override, else its described explainer (kind or backend:model), as a file name."""
    given = [o.split("=", 1)[1] for o in overrides.split() if o.startswith("explainer=")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", given[0] if given else described)


def _defined(cell: Path, scorer: str) -> tuple[float | None, float | None]:
    """The headline's mean over the neurons where it is defined, and their share (summary.json)."""
    block = json.loads((cell / "summary.json").read_text())["scores"][scorer]
    return block.get("mean_defined"), block.get("coverage")


def choose(table: pd.DataFrame, root: Path, n_resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One report per explainer of the sweep under `root`, from its cells table (`collect(root)`)."""
    scored_on_test = table[table["evaluate_on"] != "calibration"]
    if len(scored_on_test):
        raise PromptSweepError(f"{len(scored_on_test)} cell(s) of {root} were scored on test "
                               f"({', '.join(scored_on_test['dir'])}): a prompt is chosen on calibration only; "
                               "re-run the sweep with evaluate_on=calibration")
    no_prompt = table[table["prompt"].isna()]
    if len(no_prompt):
        raise PromptSweepError(f"cell(s) {', '.join(no_prompt['dir'])} ran an explainer that takes no prompt "
                               f"({', '.join(sorted(set(no_prompt['explainer'])))}): sweep LLM explainers only")
    table = table.assign(name=[explainer_name(o, e) for o, e in zip(table["overrides"], table["explainer"])])
    without_result = cells_without_result(root)
    reports = []
    for name, cells in table.groupby("name", sort=True):
        for column in SAME:
            if cells[column].nunique(dropna=False) > 1:
                raise PromptSweepError(f"the cells of explainer {name} differ in {column} "
                                       f"({', '.join(map(str, cells[column].unique()))}): their means do not compare")
        twice = cells["prompt"][cells["prompt"].duplicated()]
        if len(twice):
            raise PromptSweepError(f"explainer {name} has several cells with prompt {twice.iloc[0]}: which one counts "
                                   "is ambiguous; collect one sweep directory per choice")
        metric = cells["headlines"].iloc[0].split(",")[0]
        scorer = metric.split(".")[0]
        prompts = []
        for _, r in cells.iterrows():
            mean_defined, coverage = _defined(root / r["dir"], scorer)
            prompts.append({"prompt": r["prompt"], "dir": r["dir"], "mean": r[metric],
                            "ci95": [r[f"{metric}.ci_lo"], r[f"{metric}.ci_hi"]], "mean_defined": mean_defined,
                            "coverage": coverage, "floor": r.get(f"floor.{metric}"), "n_failed": int(r["n_failed"]),
                            "wall_seconds": r["wall_seconds"], "calls": r["calls"], "cache_hits": r["cache_hits"]})
        prompts.sort(key=lambda p: (undefined(p["mean"]), 0 if undefined(p["mean"]) else -p["mean"], p["prompt"]))
        best = prompts[0]
        without = [c for c in without_result if c["explainer"] == name]
        reports.append({
            "explainer": name, "explainer_model": cells["explainer"].iloc[0], "evaluate_on": "calibration",
            "set_name": cells["set_name"].iloc[0], "set_hash": cells["set_hash"].iloc[0],
            "n_neurons": int(cells["n_neurons"].iloc[0]), "simulator": cells["simulator"].iloc[0],
            "scorers": cells["scorers"].iloc[0], "metric": metric, "rule": RULE,
            "chosen": best["prompt"], "tied": [p["prompt"] for p in prompts[1:] if p["mean"] == best["mean"]],
            "prompts": prompts, "paired": _against(root, cells, best["prompt"], metric, n_resamples, seed),
            "without_result": without, "command": _command(root)})
    return reports


def cells_without_result(root: Path) -> list[dict[str, Any]]:
    """The sweep's cells that started but have no summary.json (collect.incomplete_cells): each with
    its explainer, prompt and, where it wrote neurons.parquet (more failed neurons than
    max_failed_fraction allows), how many neurons failed. They take no part in the choice."""
    out = []
    for d in incomplete_cells(root)["incomplete"]:
        cell = root / d
        saved = cell / ".hydra" / "config.yaml"
        described = describe_config(OmegaConf.to_container(OmegaConf.load(saved), resolve=False)) if saved.is_file() else {}
        table = cell / "neurons.parquet"
        failed = pd.read_parquet(table, columns=["failure"])["failure"] if table.is_file() else None
        out.append({"dir": d, "explainer": explainer_name(" ".join(cell_overrides(cell)), str(described.get("explainer"))),
                    "prompt": described.get("prompt"),
                    "why": (f"{int(failed.notna().sum())} of {len(failed)} neurons failed" if failed is not None
                            else "no result (interrupted?)")})
    return out


def _against(root: Path, cells: pd.DataFrame, chosen: str, metric: str, n_resamples: int,
             seed: int) -> list[dict[str, Any]]:
    """The chosen prompt minus each other prompt, per neuron over every neuron both cells ran, an
    undefined value at the metric's no-information value (the rule the means follow): the paired
    bootstrap CI and sign-flip p of harness.scoring.stats.paired_test, BH-adjusted over these comparisons."""
    scorer, name = metric.split(".", 1)
    no_information = SCORERS[scorer].metric(name).no_information
    frames = {r["prompt"]: pd.read_parquet(root / r["dir"] / "neurons.parquet", columns=["layer", "neuron", metric])
              for _, r in cells.iterrows()}
    out = []
    for other in sorted(p for p in frames if p != chosen):
        joined = frames[chosen].merge(frames[other], on=["layer", "neuron"], suffixes=("_a", "_b"))
        if no_information is not None:
            joined = joined.fillna({f"{metric}_a": no_information, f"{metric}_b": no_information})
        test = paired_test(joined[f"{metric}_a"], joined[f"{metric}_b"], n_resamples, seed)
        out.append({"other": other, "n_pairs": test["n"], "wins": test["wins"], "losses": test["losses"],
                    "mean_diff": test["mean_diff"], "ci95": test["ci95"], "p_value": test["p_value"]})
    for pair, adjusted in zip(out, benjamini_hochberg([p["p_value"] for p in out])):
        pair["p_fdr"] = adjusted
    return out


def _command(root: Path) -> str | None:
    """The sweep's command line, from Hydra's multirun.yaml (None without one)."""
    config = root / "multirun.yaml"
    if not config.is_file():
        return None
    task = [str(o) for o in OmegaConf.load(config).hydra.overrides.task]
    return "python -m harness -m " + " ".join(f"'{o}'" if re.search(r"[\[\]\s]", o) else o for o in task)


def markdown(report: dict[str, Any]) -> str:
    tie = f" (tied with {', '.join(report['tied'])})" if report["tied"] else ""
    unclear = [p["other"] for p in report["paired"] if undefined(p["ci95"][0]) or p["ci95"][0] <= 0]
    clear = (f" The paired 95% CI of its difference includes 0 against {', '.join(unclear)}: these neurons do "
             "not tell them apart." if unclear else
             " Its paired difference against every other prompt has a 95% CI above 0." if report["paired"] else "")
    lines = [f"# Prompt sweep: {report['explainer']} ({report['explainer_model']})", "",
             f"Chosen prompt: **{report['chosen']}**{tie}.{clear}", "",
             f"Scored on the **calibration** split, never test: the first {report['n_neurons']} neurons of "
             f"{report['set_name']} (hash {report['set_hash'][:12]}…) in its fixed seeded order, simulator "
             f"{report['simulator']}, metric {report['metric']} (mean over every neuron, undefined at its "
             "no-information value; bootstrap 95% CI). Rule: " + report["rule"] + ".", "",
             "| prompt | mean [95% CI] | mean (defined) | coverage | floor | failed | wall s | model calls / cache hits |",
             "|---|---|---|---|---|---|---|---|"]
    for p in report["prompts"]:
        lines.append(f"| {p['prompt']} | {fmt(p['mean'])} [{fmt(p['ci95'][0])}, {fmt(p['ci95'][1])}] | "
                     f"{fmt(p['mean_defined'])} | {fmt(p['coverage'], '.0%')} | {fmt(p['floor'])} | {p['n_failed']} | "
                     f"{fmt(p['wall_seconds'], '.0f')} | {p['calls']} / {p['cache_hits']} |")
    if report["paired"]:
        lines += ["", f"{report['chosen']} minus each other prompt, neuron by neuron (paired "
                      "bootstrap 95% CI; sign-flip permutation p, BH-adjusted over these comparisons; undefined values at the "
                      "no-information value, as in the means):", "",
                  "| other | pairs | wins / losses | mean difference | 95% CI | p | p (BH) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['other']} | {p['n_pairs']} | {p['wins']} / {p['losses']} | {fmt(p['mean_diff'])} | "
                  f"[{fmt(p['ci95'][0])}, {fmt(p['ci95'][1])}] | {fmt(p['p_value'])} | {fmt(p['p_fdr'])} |"
                  for p in report["paired"]]
    if report["without_result"]:
        lines += ["", "Not in the choice (cells without a result): " + "; ".join(
            f"{c['prompt']} (cell {c['dir']}: {c['why']})" for c in report["without_result"]) + "."]
    if report["command"]:
        lines += ["", "Sweep:", "", "```bash", report["command"], "```"]
    return "\n".join(lines) + "\n"


def _plain(x: Any) -> Any:
    """JSON-safe: numpy scalars as Python numbers, NaN as null."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):
        x = x.item()
    return None if undefined(x) else x


@exit_on_harness_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/prompt_sweeps"),
                        help="where <explainer>.md and .json go (default: reports/prompt_sweeps)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table, _ = collect(args.multirun_dir, args.resamples, args.seed)
    for report in choose(table, args.multirun_dir, args.resamples, args.seed):
        write_atomic(args.out / f"{report['explainer']}.json", json.dumps(_plain(report), indent=1) + "\n")
        write_atomic(args.out / f"{report['explainer']}.md", markdown(report))
        print(f"{report['explainer']}: chose {report['chosen']}; wrote {args.out / report['explainer']}.md and .json")


if __name__ == "__main__":
    main()
