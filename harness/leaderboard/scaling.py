"""Explainer size against score (issue 24): the board's scaling table.

Per set and scorer (its headline metric, the board's score and 95% CI), the verified entries whose
explainer is an LLM of a size that `explainer_sizes` in conf/leaderboard.yaml gives ("backend:model"
as entries name it → parameters, from the model cards), smallest first. Beside each, the paired
difference to the entry of the next smaller model with the same prompt and simulator: larger −
smaller in the metric's units over the neurons both list, undefined values at the metric's
no-information value, with a seeded bootstrap 95% CI and a sign-flip p-value
(`harness.scoring.stats.paired_test`). The model is what the entry states: verification re-scores
its explanations and never reruns the explainer.
"""

from __future__ import annotations

from typing import Any

from harness.agreement import SEED, headline_values, shared_neurons
from harness.formatting import fmt
from harness.leaderboard.assess import Assessed
from harness.leaderboard.ranks import PERMUTATIONS, p_text
from harness.leaderboard.rows import board_rows
from harness.scoring import get_scorer
from harness.scoring.stats import paired_test
from harness.text import canonical_json, for_markdown as _md

SCALING_NOTE = (
    "Each LLM explainer's score against its size (parameters, from the model cards: `explainer_sizes` in "
    "`conf/leaderboard.yaml`), smallest first, and the paired difference to the next smaller model run with the "
    "same prompt and simulator: larger − smaller over the neurons both entries list, with a seeded bootstrap 95% CI "
    "and a sign-flip p-value. The model is what the entry states; verification re-scores the explanations and "
    "never reruns the explainer.")


def size_label(parameters: float) -> str:
    """135000000 → 135M, 1540000000 → 1.54B."""
    return f"{parameters / 1e9:.3g}B" if parameters >= 1e9 else f"{parameters / 1e6:.3g}M"


def _same_run(entry: dict[str, Any]) -> str:
    """What two entries must share to be compared along the size axis: prompt and simulator."""
    return canonical_json({"prompt": entry["prompt"], "simulator": entry["simulator"]})


def _paired(larger: dict[str, Any], smaller: dict[str, Any], scorer: str) -> dict[str, Any]:
    keys = shared_neurons([larger, smaller])
    s = get_scorer(scorer)
    sign = 1.0 if s.metric(s.headline).higher_is_better else -1.0  # back to the metric's own units
    return paired_test(sign * headline_values(larger, keys, scorer), sign * headline_values(smaller, keys, scorer),
                       PERMUTATIONS, SEED)


def scaling_rows(assessed: list[Assessed], cfg: dict[str, Any] | None) -> dict[tuple[str, str, str], list[dict]]:
    """(set name, set hash, scorer) → a row per verified entry of a sized explainer, smallest model
    first; only where at least two models of different sizes are on the board."""
    sizes = (cfg or {}).get("explainer_sizes") or {}
    entries = {a.entry["name"]: a.entry for a in assessed if a.status == "verified"}
    out = {}
    for key, rows in board_rows(assessed).items():
        sized = sorted((r for r in rows if r["explainer"] in sizes),
                       key=lambda r: (sizes[r["explainer"]], r["prompt"], r["name"]))
        if len({sizes[r["explainer"]] for r in sized}) < 2:
            continue
        table = []
        for i, r in enumerate(sized):
            size = sizes[r["explainer"]]
            row = {**r, "parameters": size, "vs": None, "diff": None, "diff_ci": [None, None], "p_value": None}
            entry = entries[r["name"]]
            smaller = [s for s in sized[:i] if sizes[s["explainer"]] < size
                       and _same_run(entries[s["name"]]) == _same_run(entry)]
            if smaller:  # the nearest smaller model; of its several entries, the one that sorts last by name
                s = max(smaller, key=lambda s: (sizes[s["explainer"]], s["name"]))
                t = _paired(entry, entries[s["name"]], key[2])
                row.update(vs=s["explainer"], diff=t["mean_diff"], diff_ci=t["ci95"], p_value=t["p_value"])
            table.append(row)
        out[key] = table
    return out


def render_scaling(tables: dict[tuple[str, str, str], list[dict]], heading: str = "##") -> list[str]:
    if not tables:
        return []
    lines = [f"{heading} Explainer size against score", "", SCALING_NOTE, ""]
    for (set_name, set_hash, scorer), rows in sorted(tables.items()):
        lines += [f"{heading}# {_md(set_name)} (`{_md(set_hash[:12])}`) — {_md(scorer)}: {_md(rows[0]['metric'])}", "",
                  "| explainer | parameters | prompt | entry | score | 95% CI | vs the next smaller model | "
                  "Δ (larger − smaller) | 95% CI | p |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lo, hi = r["ci95"]
            (dlo, dhi), d = r["diff_ci"], r["diff"]
            paired = ("— | — | — | —" if r["vs"] is None else
                      f"{_md(r['vs'])} | {fmt(d, '+.3f')} | [{fmt(dlo, '+.3f')}, {fmt(dhi, '+.3f')}] | {p_text(r['p_value'])}")
            lines.append(f"| {_md(r['explainer'])} | {size_label(r['parameters'])} | {_md(r['prompt'])} | "
                         f"{_md(r['name'])} | {fmt(r['mean'])} | [{fmt(lo)}, {fmt(hi)}] | {paired} |")
        lines.append("")
    return lines
