"""Frozen neuron sets: the data model, storage and content hash.

A set lives in one directory (`leaderboard/sets/<name>/`):
- `manifest.json`: subject, tokenizer, corpus, window, seeds, selection rule, document pools and
  `hash` (sha256 over the manifest without `hash` and the content of every table);
- `windows.parquet`: one row per text window (doc_id, start, token ids, token strings);
- `records.parquet`: one row per (neuron, split, record): the activations on a window;
- `neurons.parquet`: one row per neuron: order, statistics and quantile boundaries.

Records are OpenAI neuron-explainer compatible (`tokens`, `activations`, `neuron_id`), plus our
`doc_id` and `start` so provenance and leakage can be checked.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.atomic import write_atomic
from harness.errors import ConfigError, SetIntegrityError
from harness.paths import SETS_DIR

FORMAT_VERSION = 1
SPLITS = ("explain", "calibration", "test")
TABLES = ("windows", "records", "neurons")


@dataclass
class ActivationRecord:
    tokens: list[str]
    activations: list[float]
    doc_id: str = ""
    start: int = 0
    kind: str = "top"  # "top", "random" or "quantile"
    token_ids: list[int] | None = None  # the subject's token ids (from windows.parquet); None if unknown

    @property
    def max_activation(self) -> float:
        return max(self.activations)


@dataclass
class NeuronRecord:
    layer: int
    neuron: int
    explain: list[ActivationRecord] = field(default_factory=list)
    calibration: list[ActivationRecord] = field(default_factory=list)
    test: list[ActivationRecord] = field(default_factory=list)
    mean: float = 0.0
    variance: float = 0.0
    max_activation: float = 0.0
    quantile_boundaries: list[float] = field(default_factory=list)

    @property
    def neuron_id(self) -> dict[str, int]:
        return {"layer_index": self.layer, "neuron_index": self.neuron}

    def split(self, name: str) -> list[ActivationRecord]:
        return getattr(self, name)


@dataclass
class NeuronSet:
    path: Path
    manifest: dict[str, Any]
    neurons: list[NeuronRecord]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def hash(self) -> str:
        return self.manifest["hash"]


# --- Content hash -----------------------------------------------------------------------------

def _hash_array(h: "hashlib._Hash", arr: pa.Array) -> None:
    """Feed an Arrow column's logical content (not its file encoding) into the hash."""
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        h.update(np.asarray(arr.value_lengths(), dtype=np.int64).tobytes())
        _hash_array(h, arr.flatten())
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        for s in arr.to_pylist():
            h.update(s.encode() + b"\0")
    else:
        h.update(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False)).tobytes())


# Manifest keys the hash leaves out: the hash itself, and `timing` (how long a build took, how
# many shards it ran in), which describes one build of the content, not the content.
UNHASHED = ("hash", "timing")


def content_hash(manifest: dict[str, Any], tables: dict[str, pa.Table]) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in manifest.items() if k not in UNHASHED}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in TABLES:
        table = tables[name]
        h.update(f"\0{name}\0".encode())
        for col_name in table.column_names:
            h.update(col_name.encode() + b"\0")
            _hash_array(h, table.column(col_name).combine_chunks())
    return h.hexdigest()


# --- Storage ----------------------------------------------------------------------------------

def resolve_set_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if not path.exists() and (SETS_DIR / str(name_or_path)).exists():
        path = SETS_DIR / str(name_or_path)
    return path


SET_FILES = frozenset({"manifest.json", *(f"{name}.parquet" for name in TABLES)})


def check_replaceable(path: Path, overwrite: bool) -> None:
    """Refuse to write a set to `path` unless nothing is lost: `path` does not exist, is an empty
    directory, or (with `overwrite`) holds a neuron set and nothing but a set's files."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not path.is_dir() or not (path / "manifest.json").is_file():
        raise ConfigError(f"{path} exists and is not a neuron set (no manifest.json); refusing to replace it. "
                          "Choose another output_dir or name.")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in SET_FILES)
    if foreign:
        raise ConfigError(f"{path} holds a neuron set but also {', '.join(foreign)}; refusing to replace it. "
                          "Move those files away or choose another output_dir or name.")
    if not overwrite:
        raise ConfigError(f"{path} already holds a neuron set; pass overwrite=true to replace it, or choose "
                          "another output_dir or name.")


def write_set(path: Path, manifest: dict[str, Any], tables: dict[str, pa.Table], overwrite: bool = False) -> str:
    """Write a set to `path` (see `check_replaceable`) and return its content hash, which is also
    stored in the manifest. Written all-or-nothing (`harness.atomic`), so an interrupted write
    leaves any previous set at `path` intact."""
    check_replaceable(path, overwrite)
    manifest = dict(manifest, format_version=FORMAT_VERSION)
    manifest["hash"] = content_hash(manifest, tables)
    files = {f"{name}.parquet": partial(pq.write_table, tables[name], compression="zstd", compression_level=19)
             for name in TABLES}
    write_atomic(path, {**files, "manifest.json": json.dumps(manifest, indent=1) + "\n"})
    return manifest["hash"]


def read_tables(path: Path) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    if not path.exists():
        raise SetIntegrityError(f"neuron set {path} does not exist; give the name of a set under {SETS_DIR} "
                                "or the path of a set's directory.")
    if not (path / "manifest.json").is_file():
        raise SetIntegrityError(f"{path} is not a neuron set (no manifest.json); build one with "
                                "`python -m harness.build_set` or pick one under leaderboard/sets/.")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        tables = {name: pq.read_table(path / f"{name}.parquet") for name in TABLES}
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise SetIntegrityError(f"neuron set {path} is unreadable ({exc}); restore it from git "
                                f"(`git checkout -- {path}`) or rebuild it.") from exc
    return manifest, tables


def verify_hash(path: Path, manifest: dict[str, Any], tables: dict[str, pa.Table]) -> None:
    actual = content_hash(manifest, tables)
    if actual != manifest.get("hash"):
        raise SetIntegrityError(
            f"neuron set {path} fails its content hash (manifest says {manifest.get('hash')}, content "
            f"hashes to {actual}): a record or the manifest was changed. Restore it from git or rebuild "
            "it; results on a modified set are not comparable.")


def load_set(name_or_path: str | Path, limit: int | None = None) -> NeuronSet:
    """Load and verify a frozen set; `limit` keeps the first N neurons of its fixed order."""
    path = resolve_set_path(name_or_path)
    manifest, tables = read_tables(path)
    verify_hash(path, manifest, tables)
    windows = tables["windows"].to_pydict()
    by_window = {wid: i for i, wid in enumerate(windows["window_id"])}
    neurons_tab = tables["neurons"].sort_by("order").to_pylist()
    if limit is not None:
        neurons_tab = neurons_tab[:limit]
    neurons = {(n["layer"], n["neuron"]): NeuronRecord(
        layer=n["layer"], neuron=n["neuron"], mean=n["mean"], variance=n["variance"],
        max_activation=n["max_activation"], quantile_boundaries=list(n["quantile_boundaries"]))
        for n in neurons_tab}
    rec = tables["records"].to_pydict()
    for i in range(len(rec["layer"])):
        neuron = neurons.get((rec["layer"][i], rec["neuron"][i]))
        if neuron is None:
            continue
        w = by_window[rec["window_id"][i]]
        neuron.split(rec["split"][i]).append(ActivationRecord(
            tokens=windows["tokens"][w], activations=rec["activations"][i],
            doc_id=windows["doc_id"][w], start=windows["start"][w], kind=rec["kind"][i],
            token_ids=windows["token_ids"][w] if "token_ids" in windows else None))
    return NeuronSet(path=path, manifest=manifest, neurons=list(neurons.values()))
