"""`python -m harness.collect MULTIRUN_DIR [--out DIR] [--all]`: a sweep as one table.

Every complete cell under the directory (a folder with `summary.json`) becomes a row (cells that
started but have no summary.json, and cells `multirun.yaml` asked for that never started, are named
by directory on stderr and below the tables, not left out silently): its name, directory and
overrides, neuron set, the split it was scored on (`evaluate_on`), explainer/prompt/simulator, each
scorer's headline metric, every score's mean and 95% CI, the floor and ceiling controls, cost and
wall time. A cell is named by its overrides that differ between the sweep's cells
(`explainer=hf_local prompt=top_tokens`), else by all its overrides, else by its directory. Cells
that ran on the same neuron set (same hash) are then compared pairwise on each scorer's headline
metric over the neurons both scored: the mean difference with a paired bootstrap 95% CI and a
two-sided paired sign-flip permutation p-value (Benjamini-Hochberg adjusted over all comparisons).
Writes every column to `cells.csv`, `cells.parquet`, `paired.csv`, `paired.parquet` (default: into
MULTIRUN_DIR) and prints both as Markdown, naming cells by their names: per cell, each scorer's headline metric with its CI, floor
and ceiling, cost and wall time (`--all`: the wide table with every score).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.atomic import STAGING_PREFIX
from harness.cli import exit_on_harness_error
from harness.errors import HarnessError
from harness.formatting import fmt, undefined
from harness.rundir import write_atomic
from harness.scoring.stats import paired_test
from harness.types import CONTROLS

log = logging.getLogger(__name__)


class CollectError(HarnessError):
    """A sweep directory has no complete cells or an unreadable one."""


# --- Paired statistics ------------------------------------------------------------------------
# The paired test is harness.scoring.stats.paired_test (seeded bootstrap CI of the mean difference
# and a sign-flip permutation p-value); the BH adjustment below keeps undefined p-values as None.

def benjamini_hochberg(p_values: list[float | None]) -> list[float | None]:
    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if not idx:
        return out
    p = np.array([p_values[i] for i in idx])
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    for k, j in enumerate(order):
        out[idx[j]] = float(adjusted[k])
    return out


# --- Reading cells ----------------------------------------------------------------------------

def find_cells(root: Path) -> list[Path]:
    """Cell directories (holding summary.json) under root, in job order where names are numbers."""
    cells = [p.parent for p in root.rglob("summary.json") if _run_file(p)]
    return sorted(cells, key=lambda p: _job_order(p.relative_to(root)))


def _run_file(path: Path) -> bool:
    """Not submitit's, and not a file being written (or left by a writer killed mid-write)."""
    return not any(part == ".submitit" or part.startswith(STAGING_PREFIX) for part in path.parts)


def _job_order(rel: Path) -> list[tuple[int, int, str]]:
    return [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in rel.parts]


RUN_FILES = (".hydra", "provenance.json", ".lock", "neurons.parquet")  # a cell that started leaves these


def incomplete_cells(root: Path) -> dict[str, list[str]]:
    """Cells of the sweep under `root` that have no result: `incomplete` ones started (a run's files
    are there) but wrote no summary.json (interrupted, an outage, too many failed neurons);
    `missing` ones never started: of the N jobs in `multirun.yaml` (the product of the sweep's
    override lists), numbered directories 0..N-1 that do not exist."""
    started = {p.parent for name in RUN_FILES for p in root.rglob(name) if _run_file(p)}
    incomplete = [c for c in started if c != root and not (c / "summary.json").is_file()]
    missing: list[str] = []
    config = root / "multirun.yaml"
    if config.is_file():
        try:
            task = list(OmegaConf.load(config).hydra.overrides.task)
            overrides = OverridesParser.create().parse_overrides(task)
        except (HydraException, OmegaConfBaseException, ValueError) as exc:
            log.warning("cannot tell which cells %s asked for: %s", config, exc)
        else:
            n_jobs = math.prod(len(list(o.sweep_iterator())) if o.is_sweep_override() else 1 for o in overrides)
            missing = [str(i) for i in range(n_jobs) if not (root / str(i)).is_dir()]
    names = [str(c) for c in sorted((c.relative_to(root) for c in incomplete), key=_job_order)]
    return {"incomplete": names, "missing": missing}


def cell_overrides(cell: Path) -> list[str]:
    """The overrides a sweep gave the cell (its `.hydra/overrides.yaml`); none if unreadable."""
    path = cell / ".hydra" / "overrides.yaml"
    if path.is_file():
        try:
            return [str(o) for o in yaml.safe_load(path.read_text()) or []]
        except yaml.YAMLError:
            pass
    return []


def cell_names(overrides: list[list[str]], dirs: list[str]) -> list[str]:
    """A name per cell: its overrides that not every cell shares, else all its overrides, else its
    directory; a name two cells would share gets the directory appended in brackets."""
    common = set.intersection(*(set(o) for o in overrides)) if overrides else set()
    names = [" ".join(o for o in own if o not in common) or " ".join(own) or d
             for own, d in zip(overrides, dirs)]
    return [f"{n} [{d}]" if names.count(n) > 1 else n for n, d in zip(names, dirs)]


def describe_config(config: dict[str, Any]) -> dict[str, Any]:
    """A cell's explainer (kind, or backend:model), prompt (LLM explainers only), simulator and scorers."""
    explainer = config.get("explainer") or {}
    llm = explainer.get("llm") or {}
    prompt = (config.get("prompt") or {}).get("kind") if explainer.get("kind") == "llm" else None
    return {"explainer": explainer.get("kind") if explainer.get("kind") != "llm" else f"{llm.get('backend')}:{llm.get('model')}",
            "prompt": prompt, "simulator": (config.get("simulator") or {}).get("kind"),
            "scorers": ",".join(config.get("scorer") or {})}


def cell_row(cell: Path, root: Path) -> dict[str, Any]:
    try:
        summary = json.loads((cell / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise CollectError(f"{cell / 'summary.json'} is unreadable ({exc}); re-run that cell") from exc
    scores = summary.get("scores", {})
    row: dict[str, Any] = {"dir": str(cell.relative_to(root)) or ".", "overrides": " ".join(cell_overrides(cell)),
                           "set_name": summary.get("set_name"), "set_hash": summary.get("set_hash"),
                           "evaluate_on": summary.get("evaluate_on", "test"),
                           **describe_config(summary.get("config", {})),
                           "headlines": ",".join(f"{scorer}.{block['metric']}" for scorer, block in scores.items()),
                           "n_neurons": summary.get("n_neurons"), "n_failed": summary.get("n_failed")}
    for scorer, block in scores.items():
        for metric, s in block.get("metrics", {}).items():
            col = f"{scorer}.{metric}"
            row[col] = s.get("mean")
            row[f"{col}.ci_lo"], row[f"{col}.ci_hi"] = (s.get("ci95") or [None, None])
        for control in CONTROLS:
            c = summary.get(control, {}).get(scorer)
            if c:
                row[f"{control}.{scorer}.{c['metric']}"] = c.get("mean")
                row[f"{control}.{scorer}.{c['metric']}.ci_lo"], row[f"{control}.{scorer}.{c['metric']}.ci_hi"] = (
                    c.get("ci95") or [None, None])
    cost = summary.get("cost", {})
    row.update({"cost_usd": cost.get("usd"), "input_tokens": cost.get("input_tokens"),
                "output_tokens": cost.get("output_tokens"), "calls": cost.get("calls"),
                "cache_hits": cost.get("cache_hits"), "wall_seconds": summary.get("wall_seconds")})
    return row


def collect(root: Path, n_resamples: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = Path(root)
    if not root.is_dir():
        raise CollectError(f"{root} is not a directory; pass a Hydra multirun directory (e.g. multirun/DATE/TIME)")
    cells = find_cells(root)
    if not cells:
        raise CollectError(f"no complete cell (summary.json) under {root}; did the sweep finish? Re-run it with "
                           "the same hydra.sweep.dir to complete it.")
    table = pd.DataFrame([cell_row(c, root) for c in cells])
    table.insert(0, "cell", cell_names([cell_overrides(c) for c in cells], list(table["dir"])))
    name = dict(zip(cells, table["cell"]))
    absent = incomplete_cells(root)
    for kind, names in absent.items():
        if names:
            log.warning("%s: %d %s cell(s) left out of the table: %s", root, len(names), kind, ", ".join(names))

    pairs = []
    by_set: dict[str, list[Path]] = {}
    for cell, set_hash in zip(cells, table["set_hash"]):
        by_set.setdefault(set_hash, []).append(cell)
    for set_hash, group in by_set.items():
        frames = {c: pd.read_parquet(c / "neurons.parquet") for c in group}
        summaries = {c: json.loads((c / "summary.json").read_text()) for c in group}
        for a, b in itertools.combinations(group, 2):
            for scorer, block in summaries[a].get("scores", {}).items():
                if scorer not in summaries[b].get("scores", {}):
                    continue
                col = f"{scorer}.{block['metric']}"
                if col not in frames[a] or col not in frames[b]:
                    continue
                joined = frames[a][["layer", "neuron", col]].merge(
                    frames[b][["layer", "neuron", col]], on=["layer", "neuron"], suffixes=("_a", "_b"))
                test = paired_test(joined[f"{col}_a"], joined[f"{col}_b"], n_resamples, seed)
                pairs.append({"set_hash": set_hash, "a": name[a], "b": name[b],
                              "metric": col, "n_pairs": test["n"], "wins": test["wins"], "losses": test["losses"],
                              "mean_diff": test["mean_diff"],
                              "ci_lo": test["ci95"][0], "ci_hi": test["ci95"][1], "p_value": test["p_value"]})
    paired = pd.DataFrame(pairs, columns=["set_hash", "a", "b", "metric", "n_pairs", "wins", "losses", "mean_diff",
                                          "ci_lo", "ci_hi", "p_value"])
    paired["p_fdr"] = benjamini_hochberg([None if pd.isna(p) else p for p in paired["p_value"]])
    return table, paired


# --- Output -----------------------------------------------------------------------------------

def _fmt(x) -> str:
    if undefined(x) or isinstance(x, (float, np.floating)):
        return fmt(x, lambda v: ".3g" if abs(v) >= 1000 or (v != 0 and abs(v) < 0.001) else ".3f")
    return str(x).replace("|", "\\|")


def _with_ci(r: pd.Series, col: str) -> str:
    return f"{_fmt(r.get(col))} [{_fmt(r.get(col + '.ci_lo'))}, {_fmt(r.get(col + '.ci_hi'))}]"


def markdown(table: pd.DataFrame, paired: pd.DataFrame, all_columns: bool = False) -> str:
    """The cells table and the paired comparisons as Markdown. By default a cell's row is its name,
    each scorer's headline metric (mean [95% CI], floor, ceiling), USD and wall time; `all_columns`
    adds its directory, set, explainer/prompt/simulator, neuron counts, every metric and calls."""
    if all_columns:
        means = [c for c in table.columns if c.count(".") >= 1 and not c.endswith((".ci_lo", ".ci_hi"))
                 and c.split(".")[0] not in CONTROLS]
        controls = [c for c in table.columns if c.split(".")[0] in CONTROLS and not c.endswith((".ci_lo", ".ci_hi"))]
        head = ["cell", "dir", "explainer", "prompt", "simulator", "set", "n", "failed", *means, *controls, "USD",
                "calls", "cache hits", "wall s"]
    else:
        headlines = list(dict.fromkeys(h for hs in table["headlines"] for h in hs.split(",") if h))
        head = ["cell", *(x for h in headlines for x in (f"{h} [95% CI]", *CONTROLS)), "USD", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        if all_columns:
            cells = [r["cell"], r["dir"], r["explainer"], r["prompt"], r["simulator"],
                     f"{r['set_name']} ({str(r['set_hash'])[:8]})", r["n_neurons"], r["n_failed"]]
            cells += [_with_ci(r, c) for c in means]
            cells += [_fmt(r[c]) for c in controls]
            cells += [_fmt(r["cost_usd"]), _fmt(r["calls"]), _fmt(r["cache_hits"]), _fmt(r["wall_seconds"])]
        else:
            cells = [r["cell"]]
            cells += [x for h in headlines for x in (_with_ci(r, h), *(_fmt(r.get(f"{c}.{h}")) for c in CONTROLS))]
            cells += [_fmt(r["cost_usd"]), _fmt(r["wall_seconds"])]
        lines.append("| " + " | ".join(_fmt(c) if not isinstance(c, str) else c.replace("|", "\\|") for c in cells) + " |")
    out = "\n".join(lines)
    if len(paired):
        out += ("\n\nPaired comparisons (a − b over shared neurons; bootstrap 95% CI; sign-flip permutation p, "
                "BH-adjusted)\n\n| a | b | metric | pairs | a wins / loses | mean a − b | 95% CI | p | p (BH) |\n"
                "|---|---|---|---|---|---|---|---|---|\n")
        out += "\n".join(f"| {_fmt(r['a'])} | {_fmt(r['b'])} | {r['metric']} | {r['n_pairs']} | "
                         f"{r['wins']} / {r['losses']} | "
                         f"{_fmt(r['mean_diff'])} | "
                         f"[{_fmt(r['ci_lo'])}, {_fmt(r['ci_hi'])}] | {_fmt(r['p_value'])} | {_fmt(r['p_fdr'])} |"
                         for _, r in paired.iterrows())
    return out


@exit_on_harness_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where to write the tables (default: MULTIRUN_DIR)")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true", dest="all_columns",
                        help="print the wide table: every score, each cell's directory, set, components, calls and "
                             "cache hits (the files always hold every column)")
    args = parser.parse_args(argv)
    table, paired = collect(args.multirun_dir, args.resamples, args.seed)
    out = args.out or args.multirun_dir
    for name, frame in (("cells", table), ("paired", paired)):
        write_atomic(out / f"{name}.csv", frame.to_csv(index=False))
        write_atomic(out / f"{name}.parquet", frame.to_parquet(index=False))
    print(markdown(table, paired, args.all_columns))
    absent = incomplete_cells(args.multirun_dir)
    if any(absent.values()):
        print(f"\nNot in the table: incomplete (no summary.json): {', '.join(absent['incomplete']) or 'none'}; "
              f"missing: {', '.join(absent['missing']) or 'none'}. Re-run the sweep with the same hydra.sweep.dir "
              "to finish them.")
    print(f"\nwrote {out / 'cells.csv'}, {out / 'cells.parquet'}, {out / 'paired.csv'}, {out / 'paired.parquet'}")


if __name__ == "__main__":
    main()
