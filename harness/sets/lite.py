"""A lite set: a stratified subset of a frozen set, for simulators and scorers too costly to run on
every neuron (LLM and API simulators, the ablation scorer, detection and fuzzing).

    python -m harness.sets.lite --parent smollm2-135m-brown-v2 --per-layer 4 --seed 0 \\
        --name smollm2-135m-brown-v2-lite

It keeps `--per-layer` neurons of each of the parent's layers, drawn with the build's own draw
(`harness.sets.draw.draw_neurons`, a `numpy.random.default_rng(seed)` taken layer by layer) among
the parent's neurons of that layer. Everything else is the parent's, unchanged: each kept neuron's
records (the same rows), the windows they use, its statistics, and the parent's fixed order
restricted to the kept neurons. The manifest is the parent's with the new name, the selection
rewritten, and `parent` (name, hash) and `subset` (seed, per-layer count, rule) added; the set's
hash is computed like every set's (`harness.records.content_hash`), so a lite set loads, verifies
and is named by leaderboard entries like any other. It is a function of the parent and the two
numbers only, so drawing it again gives the same hash.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from harness.cli import exit_on_harness_error
from harness.errors import ConfigError, SetIntegrityError
from harness.paths import SETS_DIR
from harness.records import (FORMAT_VERSION, UNHASHED, content_hash, read_tables,
                             resolve_set_path, verify_hash, write_set)
from harness.sets.draw import draw_neurons
from harness.sets.setup import PLAIN_NAME

log = logging.getLogger(__name__)


def draw_subset(neurons: pa.Table, n_per_layer: int, per_layer: int, seed: int) -> list[tuple[int, int]]:
    """(layer, neuron) of `per_layer` neurons per layer of the set's `neurons` table, drawn with
    `draw_neurons` (the build's draw, the set's neurons of a layer as its candidates)."""
    layers = sorted(set(neurons.column("layer").to_pylist()))
    counts = Counter(neurons.column("layer").to_pylist())
    if seed < 0:
        raise ConfigError(f"--seed {seed} is negative; give a seed >= 0")
    if per_layer < 1 or per_layer > min(counts.values()):
        raise ConfigError(f"--per-layer {per_layer} is out of range: the parent has {min(counts.values())} to "
                          f"{max(counts.values())} neurons per layer; give 1 to {min(counts.values())}")
    candidates = torch.zeros(len(layers) * n_per_layer, dtype=torch.bool)
    for layer, neuron in zip(neurons.column("layer").to_pylist(), neurons.column("neuron").to_pylist()):
        candidates[layers.index(layer) * n_per_layer + neuron] = True
    chosen = draw_neurons(candidates, layers, per_layer, np.random.default_rng(seed))
    return [(layers[f // n_per_layer], f % n_per_layer) for f in chosen]


def subset_tables(tables: dict[str, pa.Table], keep: list[tuple[int, int]]) -> dict[str, pa.Table]:
    """The parent's rows for the kept neurons, in the parent's row order; `order` re-numbered 0..n-1
    in the parent's order, so `neuron_set.limit` takes the lite set's neurons as the parent would."""
    keep_set = set(keep)

    def rows_of_kept(table: pa.Table) -> pa.Table:
        pairs = zip(table.column("layer").to_pylist(), table.column("neuron").to_pylist())
        return table.filter(pa.array([p in keep_set for p in pairs]))

    records, neurons = rows_of_kept(tables["records"]), rows_of_kept(tables["neurons"])
    used = pa.array(sorted(set(records.column("window_id").to_pylist())), pa.int64())
    windows = tables["windows"].filter(pc.is_in(tables["windows"].column("window_id"), value_set=used))
    ranks = np.argsort(np.argsort(neurons.column("order").to_numpy()))
    neurons = neurons.set_column(neurons.schema.get_field_index("order"), "order", pa.array(ranks, pa.int32()))
    return {"windows": windows, "records": records, "neurons": neurons}


def subset_manifest(parent: dict[str, Any], name: str, per_layer: int, seed: int, layers: list[int]) -> dict[str, Any]:
    """The parent's manifest, renamed, with the selection rewritten and the parent and the draw
    recorded; less the parent's hash and format version (the write sets both) and its build timing."""
    rule = (f"{per_layer} neurons per layer in each of the parent's layers {layers}, drawn uniformly without "
            f"replacement among the parent's neurons of that layer by harness.sets.draw.draw_neurons with "
            f"numpy.random.default_rng({seed}), layer by layer in ascending order; the records, windows and "
            "statistics are the parent's, unchanged; the fixed order is the parent's, restricted to these neurons")
    manifest = {k: v for k, v in parent.items() if k not in (*UNHASHED, "format_version")}
    manifest["name"] = name
    manifest["selection"] = dict(parent["selection"], neurons_per_layer=per_layer,
                                 rule=f"a subset of {parent['name']}: {rule}. The parent's rule: {parent['selection']['rule']}")
    manifest["parent"] = {"name": parent["name"], "hash": parent["hash"]}
    manifest["subset"] = {"seed": seed, "neurons_per_layer": per_layer, "layers": layers, "rule": rule}
    return manifest


def _holds(path: Path, digest: str) -> bool:
    """Whether `path` already holds a set with this content hash that verifies."""
    try:
        manifest, tables = read_tables(path)
    except SetIntegrityError:
        return False
    return manifest.get("hash") == digest == content_hash(manifest, tables)


def build_lite(parent: str | Path, per_layer: int, seed: int, name: str, output_dir: str | Path | None = None,
               overwrite: bool = False) -> tuple[Path, str]:
    """Write the lite set of `parent` to `output_dir` (default leaderboard/sets/<name>); returns its
    path and hash. A set already there with the same hash is left as it is; a different set is
    replaced only with `overwrite`, and a directory holding anything else never."""
    if not PLAIN_NAME.fullmatch(name):
        raise ConfigError(f"--name {name!r} is not a plain name (letters, digits, '.', '_', '-'; not starting with "
                          "'.'); put the set elsewhere with --output-dir DIR")
    out = SETS_DIR / name if output_dir is None else Path(output_dir)
    parent_path = resolve_set_path(parent)
    if out.resolve() == parent_path.resolve():
        raise ConfigError(f"the lite set would be written over its parent {parent_path}; give it another --name")
    parent_manifest, parent_tables = read_tables(parent_path)
    verify_hash(parent_path, parent_manifest, parent_tables)
    n_per_layer = parent_manifest["subject"]["neurons_per_layer"]
    keep = draw_subset(parent_tables["neurons"], n_per_layer, per_layer, seed)
    tables = subset_tables(parent_tables, keep)
    manifest = subset_manifest(parent_manifest, name, per_layer, seed, sorted({layer for layer, _ in keep}))
    digest = content_hash(dict(manifest, format_version=FORMAT_VERSION), tables)
    if _holds(out, digest):
        log.info("%s already holds this lite set (hash %s); nothing written", out, digest)
        return out, digest
    if (out / "manifest.json").is_file() and not overwrite:
        raise ConfigError(f"{out} holds another neuron set, not this lite set (hash {digest[:12]}…); refusing to "
                          "overwrite it: choose another --name or --output-dir, or pass --overwrite to replace it")
    written = write_set(out, manifest, tables, overwrite=overwrite)
    log.info("wrote %s: %d of %s's %d neurons (hash %s)", out, len(keep), parent_manifest["name"],
             parent_tables["neurons"].num_rows, written)
    return out, written


@exit_on_harness_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", required=True, help="the frozen set to draw from (a name under leaderboard/sets/ or a directory)")
    parser.add_argument("--per-layer", type=int, required=True, help="neurons kept in each of the parent's layers")
    parser.add_argument("--seed", type=int, required=True, help="seed of the draw (recorded in the manifest)")
    parser.add_argument("--name", required=True, help="the lite set's name (written to leaderboard/sets/<name>/)")
    parser.add_argument("--output-dir", help="write the set here instead of leaderboard/sets/<name>/")
    parser.add_argument("--overwrite", action="store_true", help="replace a different set already at the output path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, digest = build_lite(args.parent, args.per_layer, args.seed, args.name, args.output_dir, args.overwrite)
    print(f"{path} {digest}")


if __name__ == "__main__":
    main()
