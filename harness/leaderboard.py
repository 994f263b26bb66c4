"""`python -m harness.leaderboard {submit,verify,render,schema}`: the NeuronBench leaderboard.

- `submit CELL_DIR --name NAME [--submitter WHO]` turns a finished cell (summary.json +
  neurons.parquet) on a full frozen set into one entry, `leaderboard/entries/<NAME>.json`,
  after checking it is complete: every neuron of the set present once, explained or failed.
- `verify ENTRY...` re-simulates and re-scores the entry's explanations with the entry's own
  simulator and scorers on the frozen set and compares every per-neuron score, the floor and
  ceiling controls, the stored test simulations and the summary with what the entry claims
  (tolerances in `conf/leaderboard.yaml`). Local simulators are always re-run; a simulator behind
  an API only when its key is in the environment, otherwise the entry is reported `unverified`.
  The outcome is recorded in `leaderboard/verification.json` against the entry file's sha256.
- `render` writes `leaderboard/README.md` (ranked tables per neuron set and scoring rule) and a
  self-contained `leaderboard/index.html` (no server, no network).

Entries are data only: a size-limited JSON file, parsed with NaN/Infinity refused, validated
against a versioned JSON Schema (`ENTRY_SCHEMA`), never unpickled or executed; names are
restricted to a safe pattern so they cannot escape the entries directory.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import html
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from harness import __version__
from harness.cli import exit_on_harness_error
from harness.errors import HarnessError
from harness.paths import CONF_DIR, REPO_ROOT

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"
SECRET_KEY_RE = re.compile(r"(api_?key|secret|password|passwd|token|auth|credential)", re.I)
SAFE_SECRET_KEYS = {"api_key_env", "api_key_required", "max_tokens", "n_tokens", "max_new_tokens",
                    "input_tokens", "output_tokens", "cached_input_tokens"}


class EntryError(HarnessError):
    """A leaderboard entry is malformed, incomplete, hostile or names an unknown neuron set."""


# --- Schema -----------------------------------------------------------------------------------

_NUM_OR_NULL = {"type": ["number", "null"]}
_SCORES = {"type": "object", "maxProperties": 64,
           "propertyNames": {"pattern": r"^[A-Za-z0-9_]{1,64}\.[A-Za-z0-9_]{1,64}$"},
           "additionalProperties": _NUM_OR_NULL}
_TEXT = {"type": "string", "maxLength": 200, "pattern": r"^[^\x00-\x1f\x7f]*$"}
_CI = {"type": "array", "minItems": 2, "maxItems": 2, "items": _NUM_OR_NULL}
_STAT = {"type": "object", "required": ["mean", "ci95", "n", "n_failed"],
         "properties": {"mean": _NUM_OR_NULL, "ci95": _CI, "n": {"type": "integer", "minimum": 0},
                        "n_failed": {"type": "integer", "minimum": 0}},
         "additionalProperties": False}
_SCORER_SUMMARY = {"type": "object", "required": ["metric", "mean", "ci95", "n", "n_failed", "metrics"],
                   "properties": {"metric": {"type": "string", "pattern": r"^[A-Za-z0-9_]{1,64}$"},
                                  "mean": _NUM_OR_NULL, "ci95": _CI, "n": {"type": "integer", "minimum": 0},
                                  "n_failed": {"type": "integer", "minimum": 0},
                                  "metrics": {"type": "object", "maxProperties": 64,
                                              "propertyNames": {"pattern": r"^[A-Za-z0-9_]{1,64}$"},
                                              "additionalProperties": _STAT}},
                   "additionalProperties": False}
_SUMMARY_BLOCK = {"type": "object", "maxProperties": 32, "propertyNames": {"pattern": r"^[A-Za-z0-9_]{1,64}$"},
                  "additionalProperties": _SCORER_SUMMARY}
_PARAMS = {"type": "object", "maxProperties": 64}
_COMPONENT = {"type": "object", "required": ["kind", "parameters"],
              "properties": {"kind": {"type": "string", "pattern": r"^[A-Za-z0-9_]{1,64}$"},
                             "backend": {"type": ["string", "null"], "maxLength": 64},
                             "model": {"type": ["string", "null"], "maxLength": 200},
                             "parameters": _PARAMS},
              "additionalProperties": False}

ENTRY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://neuronbench.invalid/schema/entry-v1.json",
    "title": "NeuronBench leaderboard entry",
    "type": "object",
    "required": ["schema_version", "name", "submitter", "date", "explainer", "prompt", "simulator", "scorers",
                 "stats", "controls", "neuron_set", "neurons", "summary", "cost", "wall_seconds", "harness"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "pattern": NAME_RE},
        "submitter": _TEXT,
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?$"},
        "description": {"type": "string", "maxLength": 2000},
        "explainer": _COMPONENT,
        "prompt": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["variant", "parameters"],
                                                "properties": {"variant": {"type": "string", "pattern": r"^[A-Za-z0-9_]{1,64}$"},
                                                               "parameters": _PARAMS},
                                                "additionalProperties": False}]},
        "simulator": _COMPONENT,
        "scorers": {"type": "object", "minProperties": 1, "maxProperties": 32,
                    "propertyNames": {"pattern": r"^[A-Za-z0-9_]{1,64}$"}, "additionalProperties": _PARAMS},
        "stats": {"type": "object", "required": ["seed", "bootstrap_resamples"],
                  "properties": {"seed": {"type": "integer"},
                                 "bootstrap_resamples": {"type": "integer", "minimum": 1, "maximum": 100000}},
                  "additionalProperties": False},
        "controls": {"type": "object", "required": ["floor", "ceiling"],
                     "properties": {"floor": {"type": "boolean"}, "ceiling": {"type": "boolean"}},
                     "additionalProperties": False},
        "neuron_set": {"type": "object", "required": ["name", "hash", "n_neurons"],
                       "properties": {"name": {"type": "string", "pattern": NAME_RE},
                                      "hash": {"type": "string", "pattern": r"^[0-9a-f]{64}$"},
                                      "n_neurons": {"type": "integer", "minimum": 1, "maximum": 100000}},
                       "additionalProperties": False},
        "neurons": {"type": "array", "minItems": 1, "maxItems": 100000, "items": {
            "type": "object", "required": ["layer", "neuron", "explanation", "failure", "scores"],
            "properties": {
                "layer": {"type": "integer", "minimum": 0, "maximum": 10000},
                "neuron": {"type": "integer", "minimum": 0, "maximum": 10000000},
                "explanation": {"type": ["string", "null"], "maxLength": 4000},
                "failure": {"type": ["string", "null"], "maxLength": 2000},
                "cost_usd": {"type": "number", "minimum": 0},
                "scores": _SCORES, "floor": _SCORES, "ceiling": _SCORES,
                "test_simulation": {"oneOf": [{"type": "null"}, {
                    "type": "array", "maxItems": 1000,
                    "items": {"oneOf": [{"type": "null"},
                                        {"type": "array", "maxItems": 8192, "items": {"type": "number"}}]}}]}},
            "additionalProperties": False}},
        "summary": {"type": "object", "required": ["n_neurons", "n_failed", "scores"],
                    "properties": {"n_neurons": {"type": "integer", "minimum": 0},
                                   "n_failed": {"type": "integer", "minimum": 0},
                                   "scores": _SUMMARY_BLOCK, "floor": _SUMMARY_BLOCK, "ceiling": _SUMMARY_BLOCK},
                    "additionalProperties": False},
        "cost": {"type": "object", "required": ["usd", "input_tokens", "output_tokens", "calls", "cache_hits"],
                 "properties": {"usd": {"type": "number", "minimum": 0},
                                "input_tokens": {"type": "integer", "minimum": 0},
                                "output_tokens": {"type": "integer", "minimum": 0},
                                "cached_input_tokens": {"type": "integer", "minimum": 0},
                                "calls": {"type": "integer", "minimum": 0},
                                "cache_hits": {"type": "integer", "minimum": 0},
                                "unpriced_models": {"type": "array", "maxItems": 32, "items": _TEXT}},
                 "additionalProperties": False},
        "wall_seconds": {"type": "number", "minimum": 0},
        "harness": {"type": "object", "required": ["version", "git_commit"],
                    "properties": {"version": _TEXT,
                                   "git_commit": {"type": ["string", "null"], "pattern": r"^[0-9a-f]{7,40}$"},
                                   "git_dirty": {"type": ["boolean", "null"]}},
                    "additionalProperties": False},
    },
}


# jsonschema descends once per value, ~10 s for the ~10^6 simulated activations of a full-set entry;
# validation uses a copy that leaves those values to one bulk check (_non_numbers) instead.
_VALIDATION_SCHEMA = copy.deepcopy(ENTRY_SCHEMA)
del (_VALIDATION_SCHEMA["properties"]["neurons"]["items"]["properties"]["test_simulation"]
     ["oneOf"][1]["items"]["oneOf"][1]["items"])


def _non_numbers(values: list) -> bool:
    return any(type(x) is not float and type(x) is not int for x in values)  # bool is not a number here


# --- Configuration ----------------------------------------------------------------------------

def load_config(**overrides: Any) -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "leaderboard.yaml"), resolve=True)
    for key in ("entries_dir", "sets_dir"):
        cfg[key] = Path(cfg[key]) if Path(cfg[key]).is_absolute() else REPO_ROOT / cfg[key]
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


# --- Reading and checking entries -------------------------------------------------------------

def _refuse_constant(name: str):
    raise EntryError(f"the entry contains {name}: NaN and infinite numbers are not allowed (write null for a "
                     "score that is undefined)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _refuse_constant(text)
    return value


def parse_entry_text(text: str) -> dict[str, Any]:
    """JSON → dict, refusing NaN/Infinity literals and numbers that overflow to infinity."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise EntryError(f"the entry is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise EntryError("the entry must be a JSON object")
    return data


def _secret_keys(obj: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if SECRET_KEY_RE.search(str(k)) and str(k) not in SAFE_SECRET_KEYS:
                found.append(f"{path}{k}")
            found += _secret_keys(v, f"{path}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _secret_keys(v, f"{path}{i}.")
    return found


def validate_entry(data: dict[str, Any], max_explanation_chars: int = 4000) -> dict[str, Any]:
    """Schema + the checks a schema cannot express; raises EntryError naming every problem."""
    validator = jsonschema.Draft202012Validator(_VALIDATION_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        shown = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}" for e in errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise EntryError(f"the entry does not match schema v{SCHEMA_VERSION}: {shown}{more}")
    problems = []
    for label, value in (("name", data["name"]), ("neuron_set.name", data["neuron_set"]["name"])):
        if not safe_name(value):
            problems.append(f"{label} {value!r} is not allowed")
    seen: set[tuple[int, int]] = set()
    for n in data["neurons"]:
        key = (n["layer"], n["neuron"])
        if key in seen:
            problems.append(f"duplicate neuron layer {key[0]} neuron {key[1]}")
        seen.add(key)
        if n["explanation"] is None and n["failure"] is None:
            problems.append(f"layer {key[0]} neuron {key[1]} has neither an explanation nor a failure")
        if n["explanation"] is not None and len(n["explanation"]) > max_explanation_chars:
            problems.append(f"layer {key[0]} neuron {key[1]}: explanation longer than {max_explanation_chars} chars")
        if any(window is not None and _non_numbers(window) for window in n.get("test_simulation") or []):
            problems.append(f"layer {key[0]} neuron {key[1]}: test_simulation holds a value that is not a number")
    if len(data["neurons"]) != data["neuron_set"]["n_neurons"]:
        problems.append(f"{len(data['neurons'])} neurons listed but the set has {data['neuron_set']['n_neurons']}")
    secrets = _secret_keys({k: data[k] for k in ("explainer", "prompt", "simulator", "scorers")})
    if secrets:
        problems.append(f"parameters that look like secrets: {', '.join(secrets)}")
    if problems:
        raise EntryError("the entry is invalid: " + "; ".join(problems[:10])
                         + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
    return data


def read_entry(path: Path, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read one entry file safely: size-limited, no symlinks, strict JSON, schema-validated."""
    cfg = cfg or load_config()
    path = Path(path)
    if path.is_symlink():
        raise EntryError(f"{path} is a symbolic link; entries must be plain files")
    if not path.is_file():
        raise EntryError(f"{path} is not a file")
    size = path.stat().st_size
    if size > cfg["max_entry_bytes"]:
        raise EntryError(f"{path} is {size} bytes, over the limit of {cfg['max_entry_bytes']} (max_entry_bytes)")
    with open(path, "rb") as fh:
        raw = fh.read(cfg["max_entry_bytes"] + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntryError(f"{path} is not UTF-8 text") from exc
    return validate_entry(parse_entry_text(text), cfg["max_explanation_chars"])


def safe_name(name: Any) -> bool:
    """A plain file name: letters, digits, '.', '_', '-'; no separators, no '..', no newline."""
    return isinstance(name, str) and re.fullmatch(NAME_RE[1:-1], name) is not None and ".." not in name


def entry_path(name: str, entries_dir: Path) -> Path:
    """The file of entry `name`, refusing names that are not plain (no separators, no '..')."""
    if not safe_name(name):
        raise EntryError(f"entry name {name!r} is not allowed: use 1-80 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    path = (entries_dir / f"{name}.json").resolve()
    if path.parent != entries_dir.resolve():
        raise EntryError(f"entry name {name!r} escapes the entries directory")
    return path


def known_set(entry: dict[str, Any], sets_dir: Path):
    """The frozen set an entry names, loaded and hash-verified; its hash must equal the entry's."""
    from harness.records import load_set

    name, claimed = entry["neuron_set"]["name"], entry["neuron_set"]["hash"]
    if not safe_name(name):
        raise EntryError(f"neuron set name {name!r} is not allowed")
    path = sets_dir / name
    if not (path / "manifest.json").is_file():
        raise EntryError(f"unknown neuron set {name!r}: no such set under {sets_dir}")
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("hash") != claimed:
        raise EntryError(f"unknown set hash {claimed[:12]}… for {name!r}: the frozen set's hash is "
                         f"{str(manifest.get('hash'))[:12]}… (an entry for another version of the set, or a forged one)")
    return load_set(path)


# --- Building an entry from a cell ------------------------------------------------------------

def _clean_params(obj: Any) -> Any:
    """Drop anything that looks like a secret; strip user:password@ from URLs."""
    if isinstance(obj, dict):
        return {k: _clean_params(v) for k, v in obj.items()
                if not (SECRET_KEY_RE.search(str(k)) and str(k) not in SAFE_SECRET_KEYS)}
    if isinstance(obj, list):
        return [_clean_params(v) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"(\w+://)[^/@\s]+@", r"\1", obj)
    return obj


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _compact(values, decimals: int) -> list:
    out = []
    for v in values:
        v = round(float(v), decimals)
        out.append(int(v) if v == int(v) and abs(v) < 2**53 else v)
    return out


def _components(config: dict[str, Any]) -> dict[str, Any]:
    explainer = dict(config["explainer"])
    kind = explainer.pop("kind")
    llm = dict(explainer.pop("llm", None) or {})
    backend, model = llm.pop("backend", None), llm.pop("model", None)
    params = _clean_params({**({"llm": llm} if llm else {}), **explainer})
    prompt = None
    if kind == "llm" and config.get("prompt"):
        p = dict(config["prompt"])
        prompt = {"variant": p.pop("kind", "unknown"), "parameters": _clean_params(p)}
    sim = dict(config["simulator"])
    sim_kind = sim.pop("kind")
    sim_llm = sim.get("llm") or {}
    return {"explainer": {"kind": kind, "backend": backend, "model": model, "parameters": params},
            "prompt": prompt,
            "simulator": {"kind": sim_kind, "backend": sim_llm.get("backend"), "model": sim_llm.get("model"),
                          "parameters": _clean_params(sim)},
            "scorers": {k: _clean_params(v or {}) for k, v in config["scorer"].items()}}


def _summary_block(block: dict[str, Any]) -> dict[str, Any]:
    def stat(s):
        return {"mean": _num(s.get("mean")), "ci95": [_num(v) for v in (s.get("ci95") or [None, None])],
                "n": int(s.get("n", 0)), "n_failed": int(s.get("n_failed", 0))}
    return {name: {"metric": b["metric"], **stat(b), "metrics": {m: stat(s) for m, s in b.get("metrics", {}).items()}}
            for name, b in block.items()}


def build_entry(cell_dir: Path, name: str, submitter: str, cfg: dict[str, Any],
                description: str | None = None) -> dict[str, Any]:
    cell_dir = Path(cell_dir)
    summary_path, table_path = cell_dir / "summary.json", cell_dir / "neurons.parquet"
    if not summary_path.is_file() or not table_path.is_file():
        raise EntryError(f"{cell_dir} is not a finished cell (no summary.json / neurons.parquet); run it to the end "
                         "(re-running the same command resumes it)")
    summary = json.loads(summary_path.read_text())
    config = summary["config"]
    table = pd.read_parquet(table_path)
    if len(table) != summary["n_neurons"]:
        raise EntryError(f"{table_path} has {len(table)} rows but summary.json counts {summary['n_neurons']}: the cell "
                         "is inconsistent; re-run it")
    if (config.get("neuron_set") or {}).get("limit") is not None:
        raise EntryError(f"the cell ran on neuron_set.limit={config['neuron_set']['limit']} neurons; an entry needs "
                         "the whole set (run it without neuron_set.limit)")
    entry_stub = {"neuron_set": {"name": summary["set_name"], "hash": summary["set_hash"]}}
    neuron_set = known_set(entry_stub, cfg["sets_dir"])
    want = [(n.layer, n.neuron) for n in neuron_set.neurons]
    have = list(zip(table["layer"].astype(int), table["neuron"].astype(int)))
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra or len(have) != len(set(have)):
        raise EntryError(f"the cell is incomplete for set {summary['set_name']}: {len(missing)} neurons missing "
                         f"(e.g. {missing[:3]}), {len(extra)} not in the set, {len(have) - len(set(have))} duplicated")
    unexplained = table[table["explanation"].isna() & table["failure"].isna()]
    if len(unexplained):
        raise EntryError(f"{len(unexplained)} neurons have neither an explanation nor a recorded failure")

    scorer_names = list(config["scorer"])
    def scores(row, prefix=""):
        return {c[len(prefix):]: _num(row[c]) for c in table.columns
                if c.startswith(prefix) and c[len(prefix):].split(".")[0] in scorer_names and c.count(".") == prefix.count(".") + 1}
    order = {key: i for i, key in enumerate(want)}
    neurons = []
    for _, row in sorted(table.iterrows(), key=lambda r: order[(int(r[1]["layer"]), int(r[1]["neuron"]))]):
        sim = row.get("test_simulation")
        sim = None if sim is None or (isinstance(sim, float) and math.isnan(sim)) else [
            None if rec is None else _compact(rec, cfg["simulation_decimals"]) for rec in sim]
        neurons.append({"layer": int(row["layer"]), "neuron": int(row["neuron"]),
                        "explanation": None if pd.isna(row["explanation"]) else str(row["explanation"]),
                        "failure": None if pd.isna(row["failure"]) else str(row["failure"])[:2000],
                        "cost_usd": float(row.get("cost_usd") or 0.0),
                        "scores": scores(row), "floor": scores(row, "floor."), "ceiling": scores(row, "ceiling."),
                        "test_simulation": sim})
    provenance = {}
    if (cell_dir / "provenance.json").is_file():
        provenance = json.loads((cell_dir / "provenance.json").read_text())
    else:
        from harness.__main__ import git_commit
        provenance = git_commit()
    cost = summary.get("cost", {})
    entry = {
        "schema_version": SCHEMA_VERSION, "name": name, "submitter": submitter,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        **({"description": description} if description else {}),
        **_components(config),
        "stats": {"seed": int(config["stats"]["seed"]), "bootstrap_resamples": int(config["stats"]["bootstrap_resamples"])},
        "controls": {"floor": bool(config["controls"]["floor"]), "ceiling": bool(config["controls"]["ceiling"])},
        "neuron_set": {"name": summary["set_name"], "hash": summary["set_hash"], "n_neurons": len(want)},
        "neurons": neurons,
        "summary": {"n_neurons": int(summary["n_neurons"]), "n_failed": int(summary["n_failed"]),
                    "scores": _summary_block(summary["scores"]),
                    **{c: _summary_block(summary[c]) for c in ("floor", "ceiling") if c in summary}},
        "cost": {"usd": float(cost.get("usd", 0.0)), "input_tokens": int(cost.get("input_tokens", 0)),
                 "output_tokens": int(cost.get("output_tokens", 0)),
                 "cached_input_tokens": int(cost.get("cached_input_tokens", 0)),
                 "calls": int(cost.get("calls", 0)), "cache_hits": int(cost.get("cache_hits", 0)),
                 "unpriced_models": list(cost.get("unpriced_models", []))},
        "wall_seconds": float(summary.get("wall_seconds", 0.0)),
        "harness": {"version": str(summary.get("harness_version", __version__)),
                    "git_commit": provenance.get("commit"), "git_dirty": provenance.get("dirty")},
    }
    return entry


def cell_entry_name(config: dict[str, Any]) -> str:
    """A default entry name for a cell: explainer (model) [-prompt] [-simulator unless token_match]."""
    c = _components(config)
    e = c["explainer"]
    parts = [e["kind"] if e["kind"] != "llm" else f"{e['backend']}-{e['model']}"]
    if c["prompt"]:
        parts.append(c["prompt"]["variant"])
    if c["simulator"]["kind"] != "token_match":
        parts.append(c["simulator"]["kind"])
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.")[:80]
    return name.replace("..", ".") or "entry"


def _no_key_values(text: str) -> None:
    """Refuse to write an entry that contains the value of an API key from the environment."""
    for var, value in os.environ.items():
        if re.search(r"(API_KEY|TOKEN|SECRET)$", var) and len(value) >= 8 and value in text:
            raise EntryError(f"the entry would contain the value of ${var}; refusing to write it")


def dumps_entry(entry: dict[str, Any]) -> str:
    return json.dumps(entry, indent=None, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n"


def submit(cell_dir: Path, name: str, submitter: str, cfg: dict[str, Any], force: bool = False,
           description: str | None = None) -> Path:
    path = entry_path(name, cfg["entries_dir"])
    if path.exists() and not force:
        raise EntryError(f"entry {name!r} already exists ({path}); choose another --name or pass --force")
    entry = build_entry(cell_dir, name, submitter, cfg, description)
    text = dumps_entry(entry)
    validate_entry(parse_entry_text(text), cfg["max_explanation_chars"])
    _no_key_values(text)
    if len(text.encode()) > cfg["max_entry_bytes"]:
        raise EntryError(f"the entry is {len(text.encode())} bytes, over max_entry_bytes={cfg['max_entry_bytes']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# --- Verification -----------------------------------------------------------------------------

@dataclass
class Verification:
    name: str
    status: str = "verified"        # verified | failed | unverified
    checked: int = 0                 # neurons re-scored
    problems: list[str] = field(default_factory=list)
    note: str = ""

    def report(self) -> str:
        head = f"{self.name}: {self.status.upper()} ({self.checked} neurons re-scored)"
        if self.note:
            head += f" — {self.note}"
        lines = [head] + [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  - … and {len(self.problems) - 50} more")
        return "\n".join(lines)


def _api_key_missing(simulator: dict[str, Any]) -> str | None:
    """The environment variable an API simulator needs and lacks, if any."""
    llm = simulator["parameters"].get("llm") or {}
    backend = simulator.get("backend") or llm.get("backend")
    if not backend or backend == "hf_local":
        return None
    var = llm.get("api_key_env")
    if var and llm.get("api_key_required", True) and not os.environ.get(var):
        return var
    return None


def _close(claimed, actual, tol: float) -> bool:
    a = None if actual is None or (isinstance(actual, float) and math.isnan(actual)) else float(actual)
    if claimed is None or a is None:
        return claimed is None and a is None
    return abs(float(claimed) - a) <= tol


def rescore(entry: dict[str, Any], neuron_set) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """Re-run the entry's simulator and scorers on its explanations: the rows run_cell would write
    (scores, floor, ceiling) and the test simulations, in the set's order."""
    from harness.cell import derangement, simulate
    from harness.errors import HarnessError as _HE
    from harness.scoring import get_scorer, run_scorers
    from harness.simulate import OracleQuantizedSimulator, make_simulator

    sim_cfg = {"kind": entry["simulator"]["kind"], **entry["simulator"]["parameters"]}
    simulator = make_simulator(OmegaConf.create(sim_cfg))
    scorers = [(get_scorer(name), dict(params)) for name, params in entry["scorers"].items()]
    by_key = {(n["layer"], n["neuron"]): n for n in entry["neurons"]}
    neurons = neuron_set.neurons
    context = {"manifest": neuron_set.manifest}  # for scorers that run the subject (ablation)
    rows, simulated, test_sims = [], {}, {}
    for i, record in enumerate(neurons):
        claimed = by_key[(record.layer, record.neuron)]
        row: dict[str, Any] = {"layer": record.layer, "neuron": record.neuron,
                               "explanation": claimed["explanation"], "failure": None}
        if claimed["explanation"] is None:
            row["failure"] = claimed["failure"]
        else:
            try:
                simulated[i] = simulate(simulator, record, claimed["explanation"], scorers)
                test_sims[i] = simulated[i].test
            except _HE as exc:
                row["failure"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    done = sorted(simulated)
    for i, scores in zip(done, run_scorers(scorers, [simulated[i] for i in done], context)):
        rows[i].update(scores)
    if entry["controls"]["floor"] and len(done):
        floor = {}
        for i, j in zip(done, np.asarray(done)[derangement(len(done), entry["stats"]["seed"])]):
            try:
                floor[i] = simulate(simulator, neurons[i], rows[j]["explanation"], scorers)
            except _HE:
                pass
        keys = sorted(floor)
        for i, scores in zip(keys, run_scorers(scorers, [floor[i] for i in keys], context)):
            rows[i].update({f"floor.{k}": v for k, v in scores.items()})
    if entry["controls"]["ceiling"]:
        oracle = OracleQuantizedSimulator()
        ceil = {i: simulate(oracle, neurons[i], "", scorers) for i in range(len(neurons))}
        for i, scores in zip(range(len(neurons)), run_scorers(scorers, [ceil[i] for i in range(len(neurons))], context)):
            rows[i].update({f"ceiling.{k}": v for k, v in scores.items()})
    return rows, test_sims


def verify(entry: dict[str, Any], cfg: dict[str, Any]) -> Verification:
    result = Verification(entry["name"])
    try:
        neuron_set = known_set(entry, cfg["sets_dir"])
    except HarnessError as exc:
        return Verification(entry["name"], "failed", 0, [str(exc)])
    want = {(n.layer, n.neuron) for n in neuron_set.neurons}
    have = {(n["layer"], n["neuron"]) for n in entry["neurons"]}
    if want != have:
        return Verification(entry["name"], "failed", 0, [
            f"the entry's neurons are not the set's: {len(want - have)} missing, {len(have - want)} not in the set"])
    missing_key = _api_key_missing(entry["simulator"])
    if missing_key:
        return Verification(entry["name"], "unverified", 0, [],
                            f"simulator {entry['simulator']['kind']} needs ${missing_key}, which is not set")
    local = not (entry["simulator"].get("backend") and entry["simulator"]["backend"] != "hf_local")
    tol = cfg["tolerance"]["local" if local else "api"]
    try:
        rows, test_sims = rescore(entry, neuron_set)
    except HarnessError as exc:
        return Verification(entry["name"], "failed", 0, [f"re-scoring failed: {exc}"])
    by_key = {(n["layer"], n["neuron"]): n for n in entry["neurons"]}
    for i, (record, row) in enumerate(zip(neuron_set.neurons, rows)):
        claimed = by_key[(record.layer, record.neuron)]
        where = f"layer {record.layer} neuron {record.neuron}"
        if claimed["explanation"] is not None:
            result.checked += 1
        if (row["failure"] is None) != (claimed["failure"] is None) and claimed["explanation"] is not None:
            result.problems.append(f"{where}: claimed failure {claimed['failure']!r}, re-run failure {row['failure']!r}")
        for part, prefix in (("scores", ""), ("floor", "floor."), ("ceiling", "ceiling.")):
            if part != "scores" and not entry["controls"][part.split(".")[0]]:
                continue
            recomputed = {k[len(prefix):]: v for k, v in row.items()
                          if k.startswith(prefix) and k[len(prefix):].split(".")[0] in entry["scorers"]
                          and k.count(".") == prefix.count(".") + 1}
            claimed_scores = claimed.get(part) or {}
            for metric in sorted(set(recomputed) | set(claimed_scores)):
                c, a = claimed_scores.get(metric), recomputed.get(metric)
                if not _close(c, a, tol):
                    label = metric if part == "scores" else f"{part} {metric}"
                    result.problems.append(f"{where}: {label} claimed {_show(c)}, re-scored {_show(a)}")
        sim = claimed.get("test_simulation")
        if sim is not None and i in test_sims:
            actual = test_sims[i]
            if len(sim) != len(actual) or any(
                    (s is None) != (a is None) or (s is not None and (len(s) != len(a) or np.max(
                        np.abs(np.asarray(s, float) - np.asarray(a, float)), initial=0) > max(tol, 10 ** -cfg["simulation_decimals"])))
                    for s, a in zip(sim, actual)):
                result.problems.append(f"{where}: the stored test simulation differs from the re-run simulation")
    # The summary must follow from the per-neuron scores.
    from harness.cell import _summarise
    from harness.scoring import get_scorer
    scorers = [(get_scorer(name), params) for name, params in entry["scorers"].items()]
    stats = OmegaConf.create(entry["stats"])
    table = pd.DataFrame(rows)
    for block_name, prefix in (("scores", ""), ("floor", "floor."), ("ceiling", "ceiling.")):
        if block_name != "scores" and not entry["controls"][block_name]:
            continue
        expected = _summarise(table, scorers, prefix, stats)
        claimed_block = entry["summary"].get(block_name) or {}
        for scorer, block in expected.items():
            c = claimed_block.get(scorer)
            if c is None:
                result.problems.append(f"summary {block_name}.{scorer} is missing")
                continue
            for metric, s in block["metrics"].items():
                cs = c["metrics"].get(metric)
                if cs is None or not (_close(cs["mean"], s["mean"], cfg["tolerance"]["summary"]) and all(
                        _close(x, y, cfg["tolerance"]["summary"]) for x, y in zip(cs["ci95"], s["ci95"]))):
                    result.problems.append(
                        f"summary {block_name}.{scorer}.{metric}: claimed mean {_show(cs and cs['mean'])} CI "
                        f"{cs and cs['ci95']}, recomputed {_show(s['mean'])} CI {[_show(x) for x in s['ci95']]}")
            if not _close(c["mean"], block["mean"], cfg["tolerance"]["summary"]):
                result.problems.append(f"summary {block_name}.{scorer} headline mean claimed {_show(c['mean'])}, "
                                       f"recomputed {_show(block['mean'])}")
    n_failed = int(table["failure"].notna().sum())
    if entry["summary"]["n_failed"] != n_failed:
        result.problems.append(f"summary n_failed claimed {entry['summary']['n_failed']}, re-run {n_failed}")
    if result.problems:
        result.status = "failed"
    return result


def _show(x) -> str:
    return "null" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.6g}"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record_verification(path: Path, result: Verification, cfg: dict[str, Any]) -> None:
    record_path = cfg["entries_dir"].parent / "verification.json"
    records = json.loads(record_path.read_text()) if record_path.is_file() else {}
    records[result.name] = {"status": result.status, "sha256": file_sha256(path), "checked": result.checked,
                            "problems": result.problems[:20], "note": result.note,
                            "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                            "harness_version": __version__}
    record_path.write_text(json.dumps(dict(sorted(records.items())), indent=1) + "\n")


def verification_status(name: str, path: Path, cfg: dict[str, Any]) -> str:
    record_path = cfg["entries_dir"].parent / "verification.json"
    if not record_path.is_file():
        return "unverified"
    record = json.loads(record_path.read_text()).get(name)
    if not record or record.get("sha256") != file_sha256(path):
        return "unverified"
    return record["status"]


# --- Rendering --------------------------------------------------------------------------------

def load_entries(cfg: dict[str, Any]) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    good, rejected = [], []
    entries_dir = cfg["entries_dir"]
    for path in sorted(entries_dir.glob("*.json")) if entries_dir.is_dir() else []:
        try:
            entry = read_entry(path, cfg)
            if path.stem != entry["name"]:
                raise EntryError(f"file name {path.name} does not match the entry's name {entry['name']!r}")
            good.append((path, entry))
        except HarnessError as exc:
            rejected.append(f"{path.name}: {exc}")
            log.warning("rejected %s: %s", path, exc)
    return good, rejected


def _md(text: Any) -> str:
    """Plain text safe inside a Markdown table cell (no HTML, no pipes, no line breaks)."""
    s = html.escape("" if text is None else str(text), quote=False)
    return re.sub(r"[\r\n]+", " ", s).replace("|", "\\|").replace("`", "'")[:200]


def _f(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _explainer_label(entry) -> str:
    e = entry["explainer"]
    return f"{e['backend']}:{e['model']}" if e["kind"] == "llm" else e["kind"]


def _cost_per_neuron(entry) -> float:
    return entry["cost"]["usd"] / max(1, entry["neuron_set"]["n_neurons"])


def board_rows(entries, cfg) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(set name, set hash, scorer) → ranked rows."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for path, e in entries:
        status = verification_status(e["name"], path, cfg)
        for scorer, block in e["summary"]["scores"].items():
            key = (e["neuron_set"]["name"], e["neuron_set"]["hash"], scorer)
            groups.setdefault(key, []).append({
                "name": e["name"], "submitter": e["submitter"], "date": e["date"][:10],
                "explainer": _explainer_label(e), "prompt": (e["prompt"] or {}).get("variant") or "—",
                "simulator": e["simulator"]["kind"], "metric": block["metric"], "mean": block["mean"],
                "ci95": block["ci95"], "n_failed": block["n_failed"],
                "floor": ((e["summary"].get("floor") or {}).get(scorer) or {}).get("mean"),
                "ceiling": ((e["summary"].get("ceiling") or {}).get(scorer) or {}).get("mean"),
                "cost_per_neuron": _cost_per_neuron(e), "verified": status})
    for rows in groups.values():
        rows.sort(key=lambda r: (r["mean"] is None, -(r["mean"] or 0.0), r["name"]))
    return groups


def render_markdown(entries, rejected, cfg) -> str:
    lines = ["# NeuronBench leaderboard", "",
             "Generated by `python -m harness.leaderboard render` from `leaderboard/entries/` — do not edit by hand. "
             "Interactive version: [index.html](index.html) (open it from the file system).", "",
             "Score = mean over the set's neurons of the scoring rule's headline metric, with a seeded bootstrap 95% CI "
             "over neurons; failed neurons (undefined score) are counted, not scored as 0. *Floor*: the same simulator "
             "and scorer on another neuron's explanation; *ceiling*: the true test activations quantised to the "
             "simulator's 0–10 scale. *Verified*: re-scored from the entry's explanations by "
             "`python -m harness.leaderboard verify`.", ""]
    groups = board_rows(entries, cfg)
    if not groups:
        lines.append("No entries yet: see the README's \"Sweeps and the leaderboard\" section to submit one.")
    for (set_name, set_hash, scorer), rows in sorted(groups.items()):
        lines += [f"## {_md(set_name)} (`{set_hash[:12]}`) — {_md(scorer)}: {_md(rows[0]['metric'])}", "",
                  "| # | entry | explainer | prompt | simulator | score | 95% CI | failed | floor | ceiling | "
                  "USD / neuron | verified | submitter | date |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rank, r in enumerate(rows, 1):
            lo, hi = r["ci95"]
            lines.append(f"| {rank} | {_md(r['name'])} | {_md(r['explainer'])} | {_md(r['prompt'])} | "
                         f"{_md(r['simulator'])} | {_f(r['mean'])} | [{_f(lo)}, {_f(hi)}] | {r['n_failed']} | "
                         f"{_f(r['floor'])} | {_f(r['ceiling'])} | {r['cost_per_neuron']:.2e} | {r['verified']} | "
                         f"{_md(r['submitter'])} | {r['date']} |")
        lines.append("")
    if rejected:
        lines += ["## Rejected entry files", ""] + [f"- {_md(r)}" for r in rejected] + [""]
    return "\n".join(lines)


def _round(x, d=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    v = round(float(x), d)
    return int(v) if v == int(v) else v


def page_data(entries, cfg) -> dict[str, Any]:
    """Everything index.html shows, as one JSON object."""
    from harness.records import load_set

    dd = cfg["drilldown"]
    sets: dict[str, Any] = {}
    shown_test: dict[str, list[list[int]]] = {}
    for _, e in entries:
        h = e["neuron_set"]["hash"]
        if h in sets:
            continue
        try:
            neuron_set = known_set(e, cfg["sets_dir"])
        except HarnessError:
            neuron_set = None
        if neuron_set is None:
            sets[h] = {"name": e["neuron_set"]["name"], "neurons": [], "missing": True}
            continue
        neurons, picks = [], []
        for n in neuron_set.neurons:
            tops = sorted([r for r in n.explain if r.kind == "top"], key=lambda r: -r.max_activation)[:dd["explain_windows"]]
            test_idx = sorted([i for i, r in enumerate(n.test) if r.kind == "top"],
                              key=lambda i: -n.test[i].max_activation)[:dd["test_top"]]
            test_idx += [i for i, r in enumerate(n.test) if r.kind == "random"][:dd["test_random"]]
            picks.append(test_idx)
            neurons.append({"layer": n.layer, "neuron": n.neuron, "max": _round(n.max_activation),
                            "explain": [{"t": r.tokens, "a": [_round(a, 2) for a in r.activations]} for r in tops],
                            "test": [{"k": n.test[i].kind, "t": n.test[i].tokens,
                                      "a": [_round(a, 2) for a in n.test[i].activations]} for i in test_idx]})
        sets[h] = {"name": neuron_set.name, "neurons": neurons}
        shown_test[h] = picks
    out_entries = []
    for path, e in entries:
        h = e["neuron_set"]["hash"]
        by_key = {(n["layer"], n["neuron"]): n for n in e["neurons"]}
        ns = []
        for k, sn in enumerate(sets[h]["neurons"]):
            n = by_key.get((sn["layer"], sn["neuron"]), {})
            sims = n.get("test_simulation") or []
            picks = shown_test[h][k]
            ns.append({"e": n.get("explanation"), "f": n.get("failure"),
                       "s": {k2: _round(v) for k2, v in (n.get("scores") or {}).items()},
                       "fl": {k2: _round(v) for k2, v in (n.get("floor") or {}).items()},
                       "ce": {k2: _round(v) for k2, v in (n.get("ceiling") or {}).items()},
                       "sim": [[_round(v, 1) for v in sims[i]] if i < len(sims) and sims[i] is not None else None
                               for i in picks]})
        out_entries.append({
            "name": e["name"], "submitter": e["submitter"], "date": e["date"][:10], "set": h,
            "explainer": _explainer_label(e), "prompt": (e["prompt"] or {}).get("variant") or "—",
            "simulator": e["simulator"]["kind"], "verified": verification_status(e["name"], path, cfg),
            "cost_per_neuron": _cost_per_neuron(e), "cost_usd": e["cost"]["usd"],
            "tokens": e["cost"]["input_tokens"] + e["cost"]["output_tokens"],
            "summary": {s: {"metric": b["metric"], "mean": b["mean"], "ci95": b["ci95"], "n_failed": b["n_failed"],
                            "floor": ((e["summary"].get("floor") or {}).get(s) or {}).get("mean"),
                            "ceiling": ((e["summary"].get("ceiling") or {}).get(s) or {}).get("mean")}
                        for s, b in e["summary"]["scores"].items()},
            "neurons": ns})
    # No render timestamp: the page is a pure function of the entries, so a stale board shows in a diff.
    return {"harness_version": __version__, "sets": sets, "entries": out_entries}


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element (no '</script>', no HTML comment openers)."""
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            .replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_html(entries, cfg) -> str:
    template = (Path(__file__).resolve().parent.parent / "leaderboard" / "templates" / "index.html").read_text()
    return template.replace("/*__DATA__*/null", _script_json(page_data(entries, cfg)))


def render(cfg: dict[str, Any], out_dir: Path | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir) if out_dir else cfg["entries_dir"].parent
    entries, rejected = load_entries(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "README.md", out_dir / "index.html"
    md.write_text(render_markdown(entries, rejected, cfg) + "\n")
    page.write_text(render_html(entries, cfg))
    return md, page


# --- Command line -----------------------------------------------------------------------------

@exit_on_harness_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("--entries-dir", type=Path, default=None, help="default: leaderboard/entries")
    parser.add_argument("--sets-dir", type=Path, default=None, help="default: leaderboard/sets")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="write an entry from a finished cell directory")
    p.add_argument("cell_dir", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--submitter", default=os.environ.get("USER", "anonymous"))
    p.add_argument("--description", default=None)
    p.add_argument("--force", action="store_true", help="replace an entry of the same name")
    p.add_argument("--verify", action="store_true", help="verify the new entry right away")
    w = sub.add_parser("submit-sweep", help="submit every finished cell of a multirun directory, named after "
                                            "its explainer (and prompt)")
    w.add_argument("multirun_dir", type=Path)
    w.add_argument("--prefix", default="", help="prepended to every entry name")
    w.add_argument("--submitter", default=os.environ.get("USER", "anonymous"))
    w.add_argument("--force", action="store_true")
    w.add_argument("--verify", action="store_true", help="verify each new entry right away")
    v = sub.add_parser("verify", help="re-score entries and compare with their claims")
    v.add_argument("entries", nargs="+", type=Path, help="entry files (or names under the entries directory)")
    v.add_argument("--no-record", action="store_true", help="do not record the outcome in verification.json")
    r = sub.add_parser("render", help="write leaderboard/README.md and leaderboard/index.html")
    r.add_argument("--out", type=Path, default=None)
    r.add_argument("--verify", action="store_true", help="verify every entry first")
    sub.add_parser("schema", help="print the entry JSON Schema")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = load_config(entries_dir=args.entries_dir, sets_dir=args.sets_dir)

    def verify_paths(paths: list[Path], record: bool) -> int:
        worst = 0
        for path in paths:
            if not path.exists() and safe_name(str(path)):
                path = entry_path(str(path), cfg["entries_dir"])
            try:
                entry = read_entry(path, cfg)
                result = verify(entry, cfg)
            except HarnessError as exc:
                result = Verification(path.name, "failed", 0, [str(exc)])
                entry = None
            print(result.report())
            if record and entry is not None and path.resolve().parent == cfg["entries_dir"].resolve():
                record_verification(path, result, cfg)
            worst = max(worst, {"verified": 0, "unverified": 1, "failed": 2}[result.status])
        return {0: 0, 1: 3, 2: 1}[worst]  # exit codes: 0 verified, 1 failed (any), 3 unverified

    if args.command == "schema":
        print(json.dumps(ENTRY_SCHEMA, indent=1))
        return 0
    if args.command == "submit":
        path = submit(args.cell_dir, args.name, args.submitter, cfg, args.force, args.description)
        print(f"wrote {path}")
        if args.verify:
            return verify_paths([path], True)
        return 0
    if args.command == "submit-sweep":
        from harness.collect import find_cells
        written = []
        for cell in find_cells(args.multirun_dir):
            name = args.prefix + cell_entry_name(json.loads((cell / "summary.json").read_text())["config"])
            written.append(submit(cell, name, args.submitter, cfg, args.force))
            print(f"wrote {written[-1]}")
        return verify_paths(written, True) if args.verify else 0
    if args.command == "verify":
        return verify_paths(args.entries, not args.no_record)
    if args.command == "render":
        if args.verify and cfg["entries_dir"].is_dir():
            verify_paths(sorted(cfg["entries_dir"].glob("*.json")), True)
        md, page = render(cfg, args.out)
        print(f"wrote {md} and {page}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
