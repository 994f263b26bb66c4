"""The page's data: what `leaderboard/templates/index.html` embeds (`page_data`: summaries with each
entry's rank interval and group (`ranks`), the sets' neuron lists, plot summaries) and the payloads
it loads on demand, one per entry and one per neuron. The page is a pure function of the entries:
no render timestamp."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import __version__
from harness.leaderboard.assess import Assessed
from harness.leaderboard.ranks import Ranking, rankings
from harness.leaderboard.rows import (control_mean, cost_per_neuron, explainer_label, neuron_values, prompt_label,
                                      random_weight_rows)
from harness.leaderboard.views import SetViews, rounded


def _distribution(entry: dict[str, Any], scorer: str) -> dict[str, Any]:
    """What the plots need without the per-neuron payload: quantiles of the per-neuron headline
    scores (undefined at the metric's no-information value) and the mean per layer with a
    normal-approximation 95% CI (mean ± 1.96·sd/√n)."""
    block = entry["summary"]["scores"][scorer]
    values = np.array(neuron_values(entry, scorer, block["metric"], block.get("no_information")))
    layers_of = np.array([n["layer"] for n in entry["neurons"]])
    defined = np.isfinite(values)  # NaN only where a metric has no no-information value
    values, layers_of = values[defined], layers_of[defined]
    if not len(values):
        return {"box": None, "layers": []}
    box = [rounded(q) for q in np.quantile(values, [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])]
    layers = []
    for layer in sorted(set(layers_of.tolist())):
        vs = values[layers_of == layer]
        half = 1.96 * vs.std(ddof=1) / math.sqrt(len(vs)) if len(vs) > 1 else 0.0
        layers.append([layer, rounded(vs.mean()), rounded(vs.mean() - half), rounded(vs.mean() + half), len(vs)])
    return {"box": box, "layers": layers}


def _neuron_scores(n: dict[str, Any], keys: list[str], field: str = "scores") -> dict[str, Any]:
    """The neuron's headline metrics (`keys`): the page shows those; `export` has every metric."""
    values = n.get(field) or {}
    return {k: rounded(values.get(k)) for k in keys}


def page_data(assessed: list[Assessed], cfg, connections: dict[str, pd.DataFrame] | None = None,
              ranks: list[Ranking] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What index.html embeds (the board: summaries, the sets' neuron lists, plot summaries) and the
    payload files it loads on demand, by path under data/: one per entry (its neurons' explanations
    and scores) and one per neuron (its windows and every entry's explanation, scores and simulation).
    `ranks` (the verified entries' `rankings`) is computed here unless given."""
    ranked = [a.entry for a in assessed if a.status == "verified"]
    placed = {(r.set_hash, r.scorer, e.name): e for r in (rankings(ranked) if ranks is None else ranks)
              for e in r.entries}
    views = SetViews(cfg)
    sets: dict[str, Any] = {}
    payloads: dict[str, Any] = {}
    per_neuron: dict[tuple[str, int, int], dict[str, Any]] = {}
    out_entries = []
    for e in ranked:
        h = e["neuron_set"]["hash"]
        view = views.get(h, e)
        if h not in sets:
            sets[h] = {"name": e["neuron_set"]["name"], "key": h[:12],
                       "neurons": [[n["layer"], n["neuron"]] for n in view["neurons"]] if view else []}
            conn = (connections or {}).get(e["neuron_set"]["name"])
            for n in view["neurons"] if view else []:
                per_neuron[(h, n["layer"], n["neuron"])] = {
                    "layer": n["layer"], "neuron": n["neuron"], "max": n["max"], "explain": n["explain"],
                    "test": n["test"], "connections": _connection_tokens(conn, n["layer"], n["neuron"]),
                    "entries": {}}
        by_key = {(n["layer"], n["neuron"]): n for n in e["neurons"]}
        keys = [f"{scorer}.{b['metric']}" for scorer, b in e["summary"]["scores"].items()]
        entry_neurons = []
        for layer, neuron in sets[h]["neurons"]:
            n = by_key.get((layer, neuron), {})
            entry_neurons.append({"e": n.get("explanation"), "f": n.get("failure"), "s": _neuron_scores(n, keys)})
            per_neuron[(h, layer, neuron)]["entries"][e["name"]] = {
                **entry_neurons[-1], "fl": _neuron_scores(n, keys, "floor"), "ce": _neuron_scores(n, keys, "ceiling"),
                "sim": n.get("shown_simulation") or []}
        payloads[f"entries/{e['name']}.js"] = ("entry", e["name"], {"neurons": entry_neurons})
        out_entries.append({
            "name": e["name"], "submitter": e["submitter"], "date": e["date"][:10], "set": h,
            "explainer": explainer_label(e), "prompt": prompt_label(e),
            "simulator": e["simulator"]["kind"], "verified": "verified",
            "cost_per_neuron": cost_per_neuron(e), "cost_usd": e["cost"]["usd"],
            "tokens": e["cost"]["input_tokens"] + e["cost"]["output_tokens"],
            "summary": {s: {"metric": b["metric"], "mean": b["mean"], "ci95": b["ci95"],
                            "mean_defined": b["mean_defined"], "coverage": b["coverage"],
                            "floor": control_mean(e, "floor", s), "ceiling": control_mean(e, "ceiling", s),
                            **_placement(placed.get((h, s, e["name"]))), **_distribution(e, s)}
                        for s, b in e["summary"]["scores"].items()}})
    for (h, layer, neuron), data in per_neuron.items():
        payloads[f"neurons/{h[:12]}/{layer}-{neuron}.js"] = ("neuron", f"{h[:12]}/{layer}/{neuron}", data)
    unranked = [{"name": a.path.name, "status": a.status, "reason": a.reason[:300]}
                for a in assessed if a.status != "verified"]
    random_weights = [{"trained_set": t, "random_set": c, "scorer": s, **r}
                      for (t, c, s), rows in sorted(random_weight_rows(assessed, cfg).items()) for r in rows]
    # No render timestamp: the page is a pure function of the entries, so a stale board shows in a diff.
    return {"harness_version": __version__, "sets": sets, "entries": out_entries, "unranked": unranked,
            "random_weights": random_weights}, payloads


def _placement(ranked) -> dict[str, Any]:
    """The entry's rank interval and group in its (set, scorer) ranking; None where it has none."""
    return {"rank_ci": list(ranked.rank_ci) if ranked else None, "group": ranked.group if ranked else None}


def _connection_tokens(table: pd.DataFrame | None, layer: int, neuron: int) -> dict[str, list[str]] | None:
    """The neuron's top input and output tokens by connection weight, from the set's table written by
    `python -m harness.connections all=true` (leaderboard/connections/<set>.parquet), if there is one."""
    if table is None:
        return None
    row = table[(table["layer"] == layer) & (table["neuron"] == neuron)]
    if row.empty:
        return None
    r = row.iloc[0]
    return {kind: [str(t) for t in r[f"{kind}_tokens"]][:10] for kind in ("input", "output")
            if f"{kind}_tokens" in row.columns}


def load_connections(board_dir: Path) -> dict[str, pd.DataFrame]:
    """Connection-weight tables of the frozen sets, by set name (a maintainers' file, never an entry's)."""
    folder = board_dir / "connections"
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))} if folder.is_dir() else {}
