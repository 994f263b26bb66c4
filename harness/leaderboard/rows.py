"""The board's rows, computed from verified entries only: the ranking per (set, scorer)
(`board_rows`) and each entry beside its random-weights control (`random_weight_rows`, issue 17)."""

from __future__ import annotations

import math
from typing import Any

from harness.leaderboard.assess import Assessed
from harness.text import canonical_json


def explainer_label(entry) -> str:
    """`backend:model` for a plain LLM explainer; the kind, with its model when it runs one
    (hypothesis_loop), otherwise."""
    e = entry["explainer"]
    if e["kind"] == "llm":
        return f"{e['backend']}:{e['model']}"
    return f"{e['kind']} ({e['backend']}:{e['model']})" if e.get("backend") else e["kind"]


def prompt_label(entry) -> str:
    return (entry["prompt"] or {}).get("variant") or "—"


def cost_per_neuron(entry) -> float:
    return entry["cost"]["usd"] / max(1, entry["neuron_set"]["n_neurons"])


def control_mean(entry, control: str, scorer: str) -> float | None:
    return ((entry["summary"].get(control) or {}).get(scorer) or {}).get("mean")


def board_rows(assessed: list[Assessed]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(set name, set hash, scorer) → the verified entries' rows, best first."""
    from harness.scoring import get_scorer

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for a in assessed:
        if a.status != "verified":
            continue
        e = a.entry
        for scorer, block in e["summary"]["scores"].items():
            key = (e["neuron_set"]["name"], e["neuron_set"]["hash"], scorer)
            groups.setdefault(key, []).append({
                "name": e["name"], "submitter": e["submitter"], "date": e["date"][:10],
                "explainer": explainer_label(e), "prompt": prompt_label(e),
                "simulator": e["simulator"]["kind"], "simulator_check": a.simulator_check,
                "metric": block["metric"], "mean": block["mean"],
                "ci95": block["ci95"], "mean_defined": block["mean_defined"], "coverage": block["coverage"],
                "floor": control_mean(e, "floor", scorer), "ceiling": control_mean(e, "ceiling", scorer),
                "cost_per_neuron": cost_per_neuron(e)})
    for (_, _, scorer), rows in groups.items():
        sign = 1.0 if get_scorer(scorer).metric(rows[0]["metric"]).higher_is_better else -1.0
        rows.sort(key=lambda r: (r["mean"] is None, -sign * (r["mean"] or 0.0), r["name"]))
    return groups


# --- Trained vs random weights (issue 17) -------------------------------------------------------

def pairing_key(entry) -> str:
    """What entries on the two sets must share to be compared: the explainer (kind, backend and
    model; its parameters name the set's own subject, so they differ by design), the prompt and the
    simulator, parameters and all."""
    return canonical_json({"explainer": explainer_label(entry), "prompt": entry["prompt"],
                           "simulator": entry["simulator"]})


def neuron_values(entry, scorer: str, metric: str, no_information: float | None) -> list[float]:
    """Per neuron of the entry, `<scorer>.<metric>`; undefined at `no_information` (NaN without one)."""
    fill = math.nan if no_information is None else no_information
    out = []
    for n in entry["neurons"]:
        v = (n.get("scores") or {}).get(f"{scorer}.{metric}")
        out.append(fill if v is None else float(v))
    return out


def random_weight_rows(assessed: list[Assessed], cfg) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(trained set name, control set name, scorer) → one row per explainer verified on the trained
    set: its headline score there and on the random-weights control set (None without a matching
    verified entry), the difference with an unpaired bootstrap CI, and `flagged` when the CI of
    trained − random (in the metric's better direction) reaches 0."""
    from harness.scoring import get_scorer
    from harness.scoring.stats import difference_ci

    controls = cfg.get("random_weights_controls") or {}
    by_set: dict[str, list[dict[str, Any]]] = {}
    for e in sorted((a.entry for a in assessed if a.status == "verified"), key=lambda e: e["name"]):
        by_set.setdefault(e["neuron_set"]["name"], []).append(e)
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for trained_set, control_set in controls.items():
        for trained in by_set.get(trained_set, []):  # a row per entry: no entry can take another's row
            key = pairing_key(trained)
            for scorer, block in trained["summary"]["scores"].items():
                metric = get_scorer(scorer).metric(block["metric"])
                sign = 1.0 if metric.higher_is_better else -1.0
                row = {"explainer": explainer_label(trained), "prompt": prompt_label(trained),
                       "simulator": trained["simulator"]["kind"], "metric": block["metric"],
                       "trained_entry": trained["name"], "random_entry": None, "trained": block["mean"],
                       "random": None, "diff": None, "ci95": [None, None], "flagged": None}
                matches = [c for c in by_set.get(control_set, []) if pairing_key(c) == key
                           and scorer in c["summary"]["scores"] and c["scorers"].get(scorer) == trained["scorers"][scorer]]
                if matches:
                    # Explainer labels are the submitter's word: of several controls claiming the same
                    # configuration, the one the trained entry beats least is compared (an extra, weak
                    # control cannot lift a flag).
                    control = max(matches, key=lambda c: (sign * c["summary"]["scores"][scorer]["mean"], c["name"]))
                    d = difference_ci(neuron_values(trained, scorer, block["metric"], metric.no_information),
                                      neuron_values(control, scorer, block["metric"], metric.no_information),
                                      trained["stats"]["bootstrap_resamples"], trained["stats"]["seed"])
                    lo = None if d["ci95"][0] is None else min(sign * d["ci95"][0], sign * d["ci95"][1])
                    row.update(random_entry=control["name"], trained=d["mean_a"], random=d["mean_b"], diff=d["diff"],
                               ci95=d["ci95"], flagged=lo is None or lo <= 0)
                out.setdefault((trained_set, control_set, scorer), []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r["trained"] is None, -(r["trained"] or 0.0), r["trained_entry"]))
    return out
