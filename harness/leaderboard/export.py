"""`export`: every ranked entry's per-neuron explanations and scores as one parquet table.

One row per (entry, neuron), with the set's neuron ids (`layer`, `neuron`, `neuron_id` =
"<layer>/<neuron>", the address the board's viewer uses), the entry's components, the explanation
(or its failure) and one column per scorer metric (`correlation.ev_correlation_score`, ...), with
the floor and ceiling controls as `floor.<metric>` and `ceiling.<metric>`. Load it with
`pandas.read_parquet` or `datasets.load_dataset("parquet", data_files=...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.atomic import WriteError, write_atomic
from harness.leaderboard.assess import Assessed, assess
from harness.leaderboard.rows import explainer_label


def export_table(assessed: list[Assessed], include_unverified: bool = False) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for a in assessed:
        if a.entry is None or (a.status != "verified" and not include_unverified):
            continue
        e = a.entry
        common = {"entry": e["name"], "status": a.status, "submitter": e["submitter"], "date": e["date"],
                  "set_name": e["neuron_set"]["name"], "set_hash": e["neuron_set"]["hash"],
                  "explainer": explainer_label(e), "prompt": (e["prompt"] or {}).get("variant"),
                  "simulator": e["simulator"]["kind"], "entry_sha256": a.sha256}
        for n in e["neurons"]:
            rows.append({**common, "layer": n["layer"], "neuron": n["neuron"],
                         "neuron_id": f"{n['layer']}/{n['neuron']}", "explanation": n["explanation"],
                         "failure": n["failure"], "cost_usd": n["cost_usd"], **(n["scores"] or {}),
                         **{f"floor.{k}": v for k, v in (n.get("floor") or {}).items()},
                         **{f"ceiling.{k}": v for k, v in (n.get("ceiling") or {}).items()}})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    head = ["entry", "status", "set_name", "set_hash", "layer", "neuron", "neuron_id", "explanation", "failure"]
    scores = sorted(c for c in table.columns if "." in c and not c.startswith(("floor.", "ceiling.")))
    controls = sorted(c for c in table.columns if c.startswith(("floor.", "ceiling.")))
    rest = [c for c in table.columns if c not in {*head, *scores, *controls}]
    return table[head + scores + controls + rest].sort_values(["set_name", "entry", "layer", "neuron"],
                                                              ignore_index=True)


def export(cfg: dict[str, Any], out: Path, include_unverified: bool = False) -> tuple[Path, int]:
    """Write the table to `out` (parquet), all or nothing; returns the path and its number of rows."""
    assessed = assess(cfg)
    try:  # the whole file is built in memory first: a failure leaves a previous export as it was
        table = export_table(assessed, include_unverified)
        data = table.to_parquet(index=False)
    except UnicodeEncodeError as exc:
        raise WriteError(f"{out}: an entry holds text that cannot be written as UTF-8 ({exc}); nothing was "
                         "written") from exc
    return write_atomic(out, data), len(table)
