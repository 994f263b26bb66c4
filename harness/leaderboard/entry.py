"""Building an entry from a finished cell and submitting it (`submit`, `submit-sweep`).

An entry records each component by name with the parameters its params class marks `entry=True`
(harness/params.py): for the explainer and prompt, a description of what ran (every parameter,
less anything that looks like a secret); for the simulator and scorers, what verification may take
from it. Everything else is rebuilt from the components' own specs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from harness import __version__
from harness.atomic import write_atomic
from harness.components import EXPLAINERS, PROMPTS, SCORERS, SIMULATORS
from harness.leaderboard.checks import looks_secret
from harness.leaderboard.schema import (SCHEMA_VERSION, EntryError, entry_path, known_set, parse_entry_text,
                                        validate_entry)
from harness.rundir import git_commit
from harness.text import canonical_json
from harness.types import CONTROLS


def clean_params(obj: Any) -> Any:
    """Drop anything that looks like a secret; strip user:password@ from URLs."""
    if isinstance(obj, dict):
        return {k: clean_params(v) for k, v in obj.items() if not looks_secret(k)}
    if isinstance(obj, list):
        return [clean_params(v) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"(\w+://)[^/@\s]+@", r"\1", obj)
    return obj


def allowed_key(key: str, allowed: list[str]) -> bool:
    """`key` (dotted) is one of `allowed` or inside one of them (windows_per_kind.top)."""
    return any(key == a or key.startswith(a + ".") for a in allowed)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists are values."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _only_allowed(params: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    return _unflatten({k: v for k, v in flatten(params).items() if allowed_key(k, allowed)})


def _entry_options(group, name: str) -> list[str]:
    return group.component(name).entry_options() if name in group else []


def components(config: dict[str, Any]) -> dict[str, Any]:
    """The explainer, prompt, simulator and scorers of a cell's resolved config, as an entry records them."""
    explainer = dict(config["explainer"])
    kind = explainer.pop("kind")
    llm = dict(explainer.pop("llm", None) or {})
    backend, model = llm.pop("backend", None), llm.pop("model", None)
    params = {**({"llm": llm} if llm else {}), **explainer}
    params = clean_params(_only_allowed(params, _entry_options(EXPLAINERS, kind)))
    prompt = None
    if kind == "llm" and config.get("prompt"):
        p = dict(config["prompt"])
        variant = p.pop("kind", "unknown")
        prompt = {"variant": variant, "parameters": clean_params(_only_allowed(p, _entry_options(PROMPTS, variant)))}
    sim = dict(config["simulator"])
    sim_kind = sim.pop("kind")
    sim_llm = sim.pop("llm", None) or {}
    return {"explainer": {"kind": kind, "backend": backend, "model": model, "parameters": params},
            "prompt": prompt,
            "simulator": {"kind": sim_kind, "backend": sim_llm.get("backend"), "model": sim_llm.get("model"),
                          "parameters": _only_allowed(sim, _entry_options(SIMULATORS, sim_kind))},
            "scorers": {k: _only_allowed(v or {}, _entry_options(SCORERS, k)) for k, v in config["scorer"].items()}}


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


def _summary_block(block: dict[str, Any]) -> dict[str, Any]:
    def stat(s):
        return {"mean": _num(s["mean"]), "ci95": [_num(v) for v in s["ci95"]], "n": int(s["n"]),
                "n_defined": int(s["n_defined"]), "n_failed": int(s["n_failed"]), "coverage": _num(s["coverage"]),
                "mean_defined": _num(s["mean_defined"]), "ci95_defined": [_num(v) for v in s["ci95_defined"]],
                "no_information": _num(s["no_information"])}
    return {name: {"metric": b["metric"], **stat(b), "metrics": {m: stat(s) for m, s in b["metrics"].items()}}
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
    evaluate_on = summary.get("evaluate_on", config.get("evaluate_on", "test"))
    if evaluate_on != "test":
        raise EntryError(f"the cell was scored with evaluate_on={evaluate_on}, on the split that chooses components "
                         "(e.g. a prompt), not on test: it can never be a leaderboard entry; run the chosen "
                         "configuration with evaluate_on=test")
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
    if (cell_dir / "provenance.json").is_file():
        provenance = json.loads((cell_dir / "provenance.json").read_text())
    else:
        provenance = git_commit()
    cost = summary.get("cost", {})
    return {
        "schema_version": SCHEMA_VERSION, "name": name, "submitter": submitter,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        **({"description": description} if description else {}),
        **components(config),
        "stats": {"seed": int(config["stats"]["seed"]), "bootstrap_resamples": int(config["stats"]["bootstrap_resamples"])},
        "controls": {"floor": bool(config["controls"]["floor"]), "ceiling": bool(config["controls"]["ceiling"]),
                     **({"floor_neurons": int(config["controls"]["floor_neurons"])}
                        if config["controls"].get("floor_neurons") is not None else {})},
        "neuron_set": {"name": summary["set_name"], "hash": summary["set_hash"], "n_neurons": len(want)},
        "neurons": neurons,
        "summary": {"n_neurons": int(summary["n_neurons"]), "n_failed": int(summary["n_failed"]),
                    "scores": _summary_block(summary["scores"]),
                    **{c: _summary_block(summary[c]) for c in CONTROLS if c in summary}},
        "cost": {"usd": float(cost.get("usd", 0.0)), "input_tokens": int(cost.get("input_tokens", 0)),
                 "output_tokens": int(cost.get("output_tokens", 0)),
                 "cached_input_tokens": int(cost.get("cached_input_tokens", 0)),
                 "calls": int(cost.get("calls", 0)), "cache_hits": int(cost.get("cache_hits", 0)),
                 "unpriced_models": list(cost.get("unpriced_models", []))},
        "wall_seconds": float(summary.get("wall_seconds", 0.0)),
        "harness": {"version": str(summary.get("harness_version", __version__)),
                    "git_commit": provenance.get("commit"), "git_dirty": provenance.get("dirty")},
    }


def cell_entry_name(config: dict[str, Any]) -> str:
    """A default entry name for a cell: explainer kind, or for one with a model its backend-model and
    its prompt (`llm`) or kind (hypothesis_loop); then the simulator unless token_match."""
    explainer, simulator = config["explainer"], config["simulator"]
    llm = explainer.get("llm") or {}
    parts = [f"{llm.get('backend')}-{llm.get('model')}"] if llm else [explainer["kind"]]
    if explainer["kind"] != "llm" and llm:
        parts.append(explainer["kind"])
    elif explainer["kind"] == "llm" and config.get("prompt"):
        parts.append(config["prompt"].get("kind", "unknown"))
    if simulator["kind"] != "token_match":
        parts.append(simulator["kind"])
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-.")[:80]
    return name.replace("..", ".") or "entry"


def fingerprint(entry: dict[str, Any]) -> str:
    """What makes two entries the same submission: set, simulator, scorers and every explanation."""
    same = {"set": entry["neuron_set"]["hash"], "simulator": entry["simulator"], "scorers": entry["scorers"],
            "neurons": [(n["layer"], n["neuron"], n["explanation"]) for n in entry["neurons"]]}
    return hashlib.sha256(canonical_json(same).encode()).hexdigest()


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
    mine = fingerprint(entry)
    for other in sorted(cfg["entries_dir"].glob("*.json")) if cfg["entries_dir"].is_dir() else []:
        if other.resolve() == path:
            continue
        try:
            same = fingerprint(json.loads(other.read_text())) == mine
        except (ValueError, KeyError, TypeError, OSError):
            continue  # not a readable entry: render will list it as rejected
        if same:
            raise EntryError(f"the cell is already on the board as {other.stem!r} (same set, simulator, scorers and "
                             "explanations); a submission is listed once")
    return write_atomic(path, text)
