"""Reading entries: the settings, the versioned JSON Schema, parsing that refuses what it cannot bound,
and validation (the checks the schema cannot express are in `checks`).

Entries are data only: a size-limited JSON file, parsed with NaN/Infinity, huge integers and deep
nesting refused, validated against `ENTRY_SCHEMA`, never unpickled or executed; names are
restricted to a safe pattern so they cannot escape the entries directory.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
from omegaconf import OmegaConf

from harness.errors import HarnessError
from harness.leaderboard.checks import content_problems
from harness.paths import CONF_DIR, REPO_ROOT

SCHEMA_VERSION = 2  # 2: summaries over every neuron (undefined at no-information) beside the defined-only mean
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"
MAX_DEPTH = 12        # an honest entry nests 6 deep
MAX_INT_DIGITS = 20   # an honest entry's integers are counts and indices
# ISO 8601 with ASCII digits only (`\d` would take any script's digits): a date, or a UTC/offset time
DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?$"


class EntryError(HarnessError):
    """A leaderboard entry is malformed, incomplete, hostile or names an unknown neuron set."""


def load_config(**overrides: Any) -> dict[str, Any]:
    """`conf/leaderboard.yaml`, with the directories made absolute (relative to the repository)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "leaderboard.yaml"), resolve=True)
    for key in ("entries_dir", "sets_dir"):
        cfg[key] = Path(cfg[key]) if Path(cfg[key]).is_absolute() else REPO_ROOT / cfg[key]
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


# --- Schema -----------------------------------------------------------------------------------

_NUM_OR_NULL = {"type": ["number", "null"]}
_SCORES = {"type": "object", "maxProperties": 64,
           "propertyNames": {"pattern": r"^[A-Za-z0-9_]{1,64}\.[A-Za-z0-9_]{1,64}$"},
           "additionalProperties": _NUM_OR_NULL}
_TEXT = {"type": "string", "maxLength": 200, "pattern": r"^[^\x00-\x1f\x7f]*$"}
_CI = {"type": "array", "minItems": 2, "maxItems": 2, "items": _NUM_OR_NULL}
_COUNT = {"type": "integer", "minimum": 0}
_STAT_PROPERTIES = {"mean": _NUM_OR_NULL, "ci95": _CI, "n": _COUNT, "n_defined": _COUNT, "n_failed": _COUNT,
                    "coverage": _NUM_OR_NULL, "mean_defined": _NUM_OR_NULL, "ci95_defined": _CI,
                    "no_information": _NUM_OR_NULL}
_STAT = {"type": "object", "required": list(_STAT_PROPERTIES), "properties": _STAT_PROPERTIES,
         "additionalProperties": False}
_SCORER_SUMMARY = {"type": "object", "required": ["metric", *_STAT_PROPERTIES, "metrics"],
                   "properties": {"metric": {"type": "string", "pattern": r"^[A-Za-z0-9_]{1,64}$"},
                                  **_STAT_PROPERTIES,
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
    "$id": f"https://neuronbench.invalid/schema/entry-v{SCHEMA_VERSION}.json",
    "title": "NeuronBench leaderboard entry",
    "type": "object",
    "required": ["schema_version", "name", "submitter", "date", "explainer", "prompt", "simulator", "scorers",
                 "stats", "controls", "neuron_set", "neurons", "summary", "cost", "wall_seconds", "harness"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "pattern": NAME_RE},
        "submitter": _TEXT,
        "date": {"type": "string", "pattern": DATE_RE},  # and a real date in range: checks.date_problems
        "description": {"type": "string", "maxLength": 2000},
        "explainer": _COMPONENT,
        "prompt": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["variant", "parameters"],
                                                "properties": {"variant": {"type": "string", "pattern": r"^[A-Za-z0-9_]{1,64}$"},
                                                               "parameters": _PARAMS},
                                                "additionalProperties": False}]},
        "simulator": _COMPONENT,
        "scorers": {"type": "object", "minProperties": 1, "maxProperties": 32,
                    "propertyNames": {"pattern": r"^[A-Za-z0-9_]{1,64}$"}, "additionalProperties": _PARAMS},
        # every render re-verifies local entries, so an entry may not ask for unbounded work
        "stats": {"type": "object", "required": ["seed", "bootstrap_resamples"],
                  "properties": {"seed": {"type": "integer", "minimum": 0},
                                 "bootstrap_resamples": {"type": "integer", "minimum": 1, "maximum": 10000}},
                  "additionalProperties": False},
        "controls": {"type": "object", "required": ["floor", "ceiling"],
                     "properties": {"floor": {"type": "boolean"}, "ceiling": {"type": "boolean"},
                                    "floor_neurons": {"type": "integer", "minimum": 2, "maximum": 100000}},
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
                    "properties": {"n_neurons": _COUNT, "n_failed": _COUNT,
                                   "scores": _SUMMARY_BLOCK, "floor": _SUMMARY_BLOCK, "ceiling": _SUMMARY_BLOCK},
                    "additionalProperties": False},
        "cost": {"type": "object", "required": ["usd", "input_tokens", "output_tokens", "calls", "cache_hits"],
                 "properties": {"usd": {"type": "number", "minimum": 0},
                                "input_tokens": _COUNT, "output_tokens": _COUNT, "cached_input_tokens": _COUNT,
                                "calls": _COUNT, "cache_hits": _COUNT,
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
# validation uses a copy that leaves those values to one bulk check (checks.neuron_problems) instead.
_VALIDATION_SCHEMA = copy.deepcopy(ENTRY_SCHEMA)
del (_VALIDATION_SCHEMA["properties"]["neurons"]["items"]["properties"]["test_simulation"]
     ["oneOf"][1]["items"]["oneOf"][1]["items"])


# --- Parsing ----------------------------------------------------------------------------------

def _refuse_constant(name: str):
    raise EntryError(f"the entry contains {name}: NaN and infinite numbers are not allowed (write null for a "
                     "score that is undefined)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _refuse_constant(text)
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise EntryError(f"the entry contains an integer of {len(text.lstrip('-'))} digits (at most "
                         f"{MAX_INT_DIGITS} are allowed)")
    return int(text)


def _depth(obj: Any) -> int:
    """Nesting depth, without recursion (a hostile file must not exhaust the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack += [(v, depth + 1) for v in children if isinstance(v, (dict, list))]
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: with a key twice, two readers may see two values."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise EntryError(f"the JSON holds the key {dup[:60]!r} twice in one object: each key may appear once")
    return out


def parse_entry_text(text: str) -> dict[str, Any]:
    """JSON → dict, refusing NaN/Infinity, numbers that overflow, integers longer than
    MAX_INT_DIGITS, nesting deeper than MAX_DEPTH and duplicate keys, each as an EntryError.
    Also the parser of verification.json."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int,
                          object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise EntryError(f"the entry is not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise EntryError(f"the entry is nested too deeply (at most {MAX_DEPTH} levels are allowed)") from exc
    except ValueError as exc:  # e.g. a number Python refuses to convert
        raise EntryError(f"the entry holds a number that cannot be read ({str(exc)[:100]})") from exc
    if not isinstance(data, dict):
        raise EntryError("the entry must be a JSON object")
    if _depth(data) > MAX_DEPTH:
        raise EntryError(f"the entry is nested too deeply (at most {MAX_DEPTH} levels are allowed)")
    return data


def validate_entry(data: dict[str, Any], max_explanation_chars: int = 4000) -> dict[str, Any]:
    """Schema + the checks a schema cannot express; raises EntryError naming every problem."""
    if _depth(data) > MAX_DEPTH:
        raise EntryError(f"the entry is nested too deeply (at most {MAX_DEPTH} levels are allowed)")
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
    problems += content_problems(data, max_explanation_chars)
    if problems:
        raise EntryError("the entry is invalid: " + "; ".join(problems[:10])
                         + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
    return data


def read_entry_bytes(path: Path, cfg: dict[str, Any]) -> bytes:
    """An entry file's bytes: a plain file (no symbolic link) within the size limit."""
    path = Path(path)
    if path.is_symlink():
        raise EntryError(f"{path} is a symbolic link; entries must be plain files")
    if not path.is_file():
        raise EntryError(f"{path} is not a file")
    size = path.stat().st_size
    if size > cfg["max_entry_bytes"]:
        raise EntryError(f"{path} is {size} bytes, over the limit of {cfg['max_entry_bytes']} (max_entry_bytes)")
    with open(path, "rb") as fh:
        return fh.read(cfg["max_entry_bytes"] + 1)


def read_entry(path: Path, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read one entry file safely: size-limited, no symlinks, strict JSON, schema-validated, and
    its internal name equal to its file name (records are keyed by the file)."""
    cfg = cfg or load_config()
    return entry_from_bytes(Path(path), read_entry_bytes(path, cfg), cfg)


def entry_from_bytes(path: Path, raw: bytes, cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntryError(f"{path} is not UTF-8 text") from exc
    entry = validate_entry(parse_entry_text(text), cfg["max_explanation_chars"])
    check_file_name(path, entry)
    return entry


def check_file_name(path: Path, entry: dict[str, Any]) -> None:
    """An entry file is `<name>.json` with that very name inside (records are keyed by the file)."""
    if path.suffix == ".json" and path.stem != entry["name"]:
        raise EntryError(f"file name {path.name} does not match the entry's name {entry['name']!r}: an entry is "
                         f"stored as <name>.json")


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
