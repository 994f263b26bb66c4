"""`python -m harness.set_info PATH`: print one JSON object describing a frozen neuron set.

Unlike the run commands, it reports a failing hash (`hash_ok: false`) instead of refusing.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from harness.cli import exit_on_harness_error
from harness.records import SPLITS, content_hash, read_tables, resolve_set_path


def set_info(name_or_path: str) -> dict:
    path = resolve_set_path(name_or_path)
    manifest, tables = read_tables(path)
    records = tables["records"].to_pydict()
    windows = tables["windows"].to_pydict()
    doc_of = dict(zip(windows["window_id"], windows["doc_id"]))
    per_split: dict[str, Counter] = {s: Counter() for s in SPLITS}
    docs = {"explain": set(), "scoring": set()}
    for layer, neuron, split, wid in zip(records["layer"], records["neuron"], records["split"], records["window_id"]):
        per_split[split][(layer, neuron)] += 1
        docs["explain" if split == "explain" else "scoring"].add(doc_of[wid])
    neurons = tables["neurons"].to_pydict()
    n_neurons = len(neurons["layer"])
    return {
        "name": manifest.get("name"),
        "path": str(path),
        "hash": manifest.get("hash"),
        "hash_ok": content_hash(manifest, tables) == manifest.get("hash"),
        "n_neurons": n_neurons,
        "layers": sorted(set(neurons["layer"])),
        "subject": manifest.get("subject", {}).get("name"),
        "activation_function": manifest.get("subject", {}).get("activation_function"),
        "corpus": manifest.get("corpus", {}).get("name"),
        "window": manifest.get("window"),
        "records_per_split": {
            s: {"min": min(c.values(), default=0) if len(c) == n_neurons else 0, "max": max(c.values(), default=0)}
            for s, c in per_split.items()},
        "shared_docs_explain_vs_scoring": len(docs["explain"] & docs["scoring"]),
        "selection_rule": manifest.get("selection", {}).get("rule"),
        "parent": manifest.get("parent"),  # a lite set's parent set (name, hash); None for a built set
    }


@exit_on_harness_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a set directory or a name under leaderboard/sets/")
    print(json.dumps(set_info(parser.parse_args(argv).path), indent=1))


if __name__ == "__main__":
    main()
