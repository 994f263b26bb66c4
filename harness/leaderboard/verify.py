"""Verification: re-score an entry's explanations with the verifier's own simulator and scorers.

The simulator and scorers are rebuilt by name from their component specs (`resolve_components`,
harness/components.py), with only the parameters their params classes mark as entry options taken
from the entry, type-checked by their rules: an entry never chooses an endpoint, a key variable, a
file path, a cache or a config to load. Re-scoring goes through the cell's own scoring core (`harness.cell.score_neurons`,
`summarise`).

Simulators cheap enough (`verify.full`, e.g. token_match) are re-run on every neuron; the others
on a random subset of `verify.sample_neurons` neurons, drawn from the entry file's sha256 keyed
with the maintainers' secret ($NEURONBENCH_VERIFY_KEY), so a submitter cannot aim a forgery at the
neurons left out; without the key such an entry stays `pending`. Each re-scored value must match
within the tolerance and so must their mean (a small shift on every neuron fails), and the schema
range-checks every value of every neuron. An entry whose re-scoring would exceed the budget, or
whose API key the verifier lacks, is `pending`. Signed records of a verification:
`verification_records.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from harness.errors import HarnessError, TransientLLMError
from harness.leaderboard.entry import allowed_key, flatten
from harness.leaderboard.schema import EntryError, known_set
from harness.text import canonical_json, for_terminal
from harness.components import RunContext
from harness.validation import option_problems

MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$")
STATUSES = ("verified", "failed", "pending")


@dataclass
class Verification:
    name: str
    status: str = "verified"        # verified | failed | pending
    checked: int = 0                 # neurons re-scored
    of: int = 0                      # neurons in the set
    problems: list[str] = field(default_factory=list)
    note: str = ""
    subset_seed: int | None = None   # the seed of the re-scored subset, when not every neuron was re-scored

    def report(self) -> str:
        scope = f"{self.checked} of {self.of} neurons re-scored" if self.of else f"{self.checked} neurons re-scored"
        head = f"{self.name}: {self.status.upper()} ({scope})"
        if self.note:
            head += f" — {self.note}"
        lines = [head] + [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  - … and {len(self.problems) - 50} more")
        return "\n".join(for_terminal(line) for line in lines)  # problems quote the entry's text


# --- Rebuilding the simulator and scorers from their component specs ------------------------------

def _plain_value(value: Any) -> bool:
    """A value an entry may give a parameter: a number, a boolean, a short plain string, or a short
    list of numbers."""
    if isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return MODEL_RE.fullmatch(value) is not None
    if isinstance(value, list):
        return len(value) <= 16 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return False


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[last] = value


def _take_allowed(where: str, params: dict[str, Any], allowed: list[str], base: dict[str, Any]) -> None:
    """Copy the entry's `params` into `base`, refusing any key not on the allow-list, naming it."""
    for key, value in flatten(params).items():
        if not allowed_key(key, allowed):
            raise EntryError(f"{where}.{key} may not be set by an entry (allowed: {allowed or 'none'}); endpoints, "
                             "key variables, paths and caches come from the verifier's conf/ and environment")
        if not _plain_value(value):
            raise EntryError(f"{where}.{key}: {str(value)[:60]!r} is not a plain number, list of numbers or name")
        _set(base, key, value)


def resolve_components(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict]]:
    """The simulator config and the scorer parameters verification runs: each component's defaults
    (harness/components.py), the parameters its fields let an entry set, and the model block of
    the backend the entry names, for a model its `model` field lets an entry give. No file is read
    by path."""
    from harness.components import BACKENDS, SCORERS, SIMULATORS

    sim = entry["simulator"]
    kind = sim["kind"]
    if kind in SIMULATORS and not getattr(SIMULATORS[kind], "reads_explanation", True):
        raise EntryError(f"simulator {kind!r} does not read the explanation: controls are not entries (it belongs "
                         "in the ceiling column)")
    on_board = sorted(k for k in SIMULATORS if SIMULATORS.component(k).on_board)
    if kind not in on_board:
        raise EntryError(f"simulator {kind!r} is not allowed on the board; allowed: {on_board}")
    spec = SIMULATORS.component(kind)
    simulator = {"kind": kind, **spec.defaults()}
    _take_allowed("simulator.parameters", sim["parameters"], spec.entry_options(), simulator)
    backend, model = sim.get("backend"), sim.get("model")
    if "llm" not in simulator:
        if backend is not None or model is not None:
            raise EntryError(f"simulator {kind!r} uses no LLM; the entry may not name a backend or model")
    else:
        on_board = sorted(b for b in BACKENDS if "model" in BACKENDS.component(b).entry_options())
        if backend not in on_board:
            raise EntryError(f"simulator.backend {backend!r} is not allowed on the board; allowed: {on_board}")
        allowed = BACKENDS.component(backend).entry_values("model")
        if allowed is None and not (isinstance(model, str) and MODEL_RE.fullmatch(model)):
            raise EntryError(f"simulator.model {str(model)[:60]!r} is not a plain model name")
        if allowed is not None and model not in allowed:
            raise EntryError(f"simulator.model {str(model)[:60]!r} is not allowed for backend {backend!r}; "
                             f"allowed: {list(allowed)}")
        llm = (simulator["llm"] if simulator["llm"]["backend"] == backend
               else {"backend": backend, **BACKENDS.component(backend).defaults()})
        simulator["llm"] = {**llm, "model": model}
    scorers = {}
    for name, params in entry["scorers"].items():
        if name not in SCORERS or not SCORERS.component(name).on_board:
            raise EntryError(f"scorer {name!r} is not allowed on the board; allowed: {sorted(SCORERS)}")
        spec = SCORERS.component(name)
        base = spec.defaults()
        _take_allowed(f"scorers.{name}", params, spec.entry_options(), base)
        scorers[name] = base
    _check_types({"simulator": simulator, "scorer": scorers, "stats": entry["stats"]})
    return simulator, scorers


def _check_types(config: dict[str, Any]) -> None:
    """The rebuilt components against the cell's own rules (their params classes and
    harness.validation.RULES): a value of the wrong type or range is refused here, never a crash
    inside verification."""
    problems = option_problems(config)
    if problems:
        raise EntryError("the entry's parameters are invalid: " + "; ".join(problems[:10]))


def uses_api(simulator: dict[str, Any]) -> bool:
    return (simulator.get("llm") or {}).get("backend", "hf_local") != "hf_local"


def components_digest(simulator: dict[str, Any], scorers: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"simulator": simulator, "scorers": scorers}).encode()).hexdigest()


def _missing_key(simulator: dict[str, Any]) -> str | None:
    """The environment variable (named by conf/, never by the entry) an API simulator needs and lacks."""
    llm = simulator.get("llm") or {}
    var = llm.get("api_key_env")
    if uses_api(simulator) and var and llm.get("api_key_required", True) and not os.environ.get(var):
        return var
    return None


# --- Which neurons, the secret that picks them, and what re-scoring them costs ------------------

def verify_key(cfg: dict[str, Any]) -> bytes | None:
    value = os.environ.get(cfg["verify"]["key_env"])
    return value.encode() if value else None


def sampled(kind: str, n: int, cfg: dict[str, Any]) -> bool:
    """Whether an entry with this simulator is re-scored on a subset of its `n` neurons, not all."""
    return kind not in cfg["verify"]["full"] and cfg["verify"]["sample_neurons"] < n


def subset_seed(entry_sha256: str, key: bytes) -> int:
    """Seed of the re-scored subset: the entry file's sha256 keyed with the maintainers' secret, so
    a submitter cannot know in advance which neurons will be re-scored."""
    return int.from_bytes(hmac.new(key, entry_sha256.encode(), hashlib.sha256).digest()[:8], "big")


def _chosen(kind: str, n: int, entry_sha256: str, cfg: dict[str, Any]) -> list[int]:
    """Indices of the neurons to re-score: all for a cheap simulator, else a keyed seeded subset
    (which needs the key: see `verify`)."""
    if not sampled(kind, n, cfg):
        return list(range(n))
    key = verify_key(cfg)
    if key is None:
        raise EntryError(f"a sampled verification needs ${cfg['verify']['key_env']}")
    rng = np.random.default_rng(subset_seed(entry_sha256, key))
    return sorted(rng.choice(n, size=cfg["verify"]["sample_neurons"], replace=False).tolist())


def estimated_seconds(entry: dict[str, Any], simulator: dict[str, Any], scorers: dict[str, Any],
                      cfg: dict[str, Any]) -> float:
    """What re-scoring the entry would take on the verifier's CPU, from `verify.seconds_per_neuron`:
    per re-scored neuron, one simulation (and the floor's share of a second: all, or its sample's)
    and each scorer once per simulation (and once more for the ceiling). A component without an
    estimate counts as over any budget."""
    costs = cfg["verify"]["seconds_per_neuron"]
    n = entry["neuron_set"]["n_neurons"]
    checked = n if not sampled(simulator["kind"], n, cfg) else cfg["verify"]["sample_neurons"]
    floor, ceiling = entry["controls"]["floor"], entry["controls"]["ceiling"]
    floor *= min(1.0, entry["controls"].get("floor_neurons", n) / n)
    per_neuron = costs["simulators"].get(simulator["kind"], math.inf) * (1 + floor)
    per_neuron += sum(costs["scorers"].get(name, math.inf) for name in scorers) * (1 + floor + ceiling)
    return checked * per_neuron


def over_budget(entry: dict[str, Any], simulator: dict[str, Any], scorers: dict[str, Any],
                cfg: dict[str, Any]) -> str | None:
    """Why re-scoring this entry is left to the maintainers (too costly for a PR's CI), or None."""
    budget = cfg["verify"]["budget_seconds"]
    seconds = estimated_seconds(entry, simulator, scorers, cfg)
    if budget is None or seconds <= budget:
        return None
    return (f"re-scoring it would take about {seconds:.0f} s, over the verification budget of {budget} s "
            "(verify.budget_seconds): the maintainers verify it with `python -m harness.leaderboard verify "
            "--budget-seconds N` and a signed record")


# --- Re-scoring ------------------------------------------------------------------------------

def _close(claimed, actual, tol: float) -> bool:
    a = None if actual is None or (isinstance(actual, float) and math.isnan(actual)) else float(actual)
    if claimed is None or a is None:
        return claimed is None and a is None
    return abs(float(claimed) - a) <= tol


def _show(x) -> str:
    return "null" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.6g}"


def _claimed_table(entry: dict[str, Any], order: list[tuple[int, int]]) -> pd.DataFrame:
    """The entry's per-neuron claims as the cell's table (NaN for null), in the set's `order` of
    (layer, neuron)."""
    by_key = {(n["layer"], n["neuron"]): n for n in entry["neurons"]}
    rows = []
    for key in order:
        n = by_key[key]
        row = {"failure": n["failure"]}
        for part, prefix in (("scores", ""), ("floor", "floor."), ("ceiling", "ceiling.")):
            row.update({prefix + k: math.nan if v is None else v for k, v in (n.get(part) or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def recomputed_summary(entry: dict[str, Any], order: list[tuple[int, int]]) -> dict[str, Any]:
    """The entry's summary as the cell computes it (the bootstrap over the set's `order` of
    neurons), from the entry's own per-neuron values, which the schema range-checks on every
    neuron and verification re-scores: what the board shows, never the submitter's own summary."""
    from harness.cell import control_rows, floor_partners, summarise
    from harness.scoring import get_scorer, reporting

    table = _claimed_table(entry, order)
    scorers = [(get_scorer(name), params) for name, params in entry["scorers"].items()]
    out = {"n_neurons": len(table), "n_failed": int(table["failure"].notna().sum()),
           "scores": summarise(table, scorers, "", entry["stats"])}
    partners = floor_partners(table.index[table["failure"].isna()].tolist(), entry["stats"]["seed"],
                              entry["controls"].get("floor_neurons"))
    for control in ("floor", "ceiling"):
        if entry["controls"][control]:
            out[control] = summarise(control_rows(table, control, entry["controls"], partners),
                                     reporting(scorers, control), control + ".", entry["stats"])
    return out


def _summary_problems(entry: dict[str, Any], ours: dict[str, Any], tol: float) -> list[str]:
    """Where the entry's own summary differs from `recomputed_summary`'s (it is refused then)."""
    problems = []
    for block_name in ("scores", "floor", "ceiling"):
        for scorer, block in (ours.get(block_name) or {}).items():
            c = (entry["summary"].get(block_name) or {}).get(scorer)
            if c is None:
                problems.append(f"summary {block_name}.{scorer} is missing")
                continue
            for metric, s in {None: block, **block["metrics"]}.items():
                cs = c if metric is None else c["metrics"].get(metric)
                label = f"summary {block_name}.{scorer}" + (f".{metric}" if metric else " headline")
                if cs is None:
                    problems.append(f"{label} is missing")
                    continue
                for key in ("mean", "mean_defined", "coverage", "ci95", "ci95_defined", "n", "n_defined"):
                    want_v, have_v = (s[key], cs[key]) if isinstance(s[key], list) else ([s[key]], [cs[key]])
                    if not all(_close(h, w, tol) for h, w in zip(have_v, want_v)):
                        problems.append(f"{label} {key} claimed {cs[key]}, recomputed {s[key]}")
    if (entry["summary"]["n_failed"], entry["summary"]["n_neurons"]) != (ours["n_failed"], ours["n_neurons"]):
        problems.append(f"summary counts claimed {entry['summary']['n_neurons']} neurons, "
                        f"{entry['summary']['n_failed']} failed; the entry lists {ours['n_neurons']}, "
                        f"{ours['n_failed']} failed")
    return problems


def verify(entry: dict[str, Any], cfg: dict[str, Any], entry_sha256: str | None = None) -> Verification:
    """Re-score `entry` (or the keyed random subset of its neurons) and compare with every claim:
    each re-scored value within the tolerance, their mean difference within the mean tolerance (a
    systematic shift), and the summary equal to the one computed from the per-neuron values."""
    from harness.cell import floor_partners, score_neurons, simulate
    from harness.scoring import Simulated, get_scorer
    from harness.simulate import make_simulator

    name = entry["name"]
    try:
        sim_cfg, scorer_params = resolve_components(entry)
        neuron_set = known_set(entry, cfg["sets_dir"])
    except HarnessError as exc:
        return Verification(name, "failed", problems=[str(exc)])
    neurons = neuron_set.neurons
    want = {(n.layer, n.neuron) for n in neurons}
    have = {(n["layer"], n["neuron"]) for n in entry["neurons"]}
    if want != have:
        return Verification(name, "failed", problems=[
            f"the entry's neurons are not the set's: {len(want - have)} missing, {len(have - want)} not in the set"])
    missing_key = _missing_key(sim_cfg)
    if missing_key:
        return Verification(name, "pending", of=len(neurons),
                            note=f"simulator {entry['simulator']['kind']} needs ${missing_key}, which is not set")
    if sampled(sim_cfg["kind"], len(neurons), cfg) and verify_key(cfg) is None:
        return Verification(name, "pending", of=len(neurons), note=(
            f"its simulator is re-scored on a random subset of neurons, drawn with the maintainers' key "
            f"${cfg['verify']['key_env']} so that a submitter cannot aim it; without the key it stays pending"))
    too_costly = over_budget(entry, sim_cfg, scorer_params, cfg)
    if too_costly:
        return Verification(name, "pending", of=len(neurons), note=too_costly)
    entry_sha256 = entry_sha256 or hashlib.sha256(canonical_json(entry).encode()).hexdigest()
    chosen = _chosen(sim_cfg["kind"], len(neurons), entry_sha256, cfg)
    result = Verification(name, of=len(neurons))
    if len(chosen) < len(neurons):
        result.note = f"a keyed random subset of {len(chosen)} of {len(neurons)} neurons"
        result.subset_seed = subset_seed(entry_sha256, verify_key(cfg))
    api = uses_api(sim_cfg)
    tol, mean_tol = (cfg["tolerance"]["api"], cfg["tolerance"]["api_mean"]) if api else (cfg["tolerance"]["local"],) * 2
    scorers = [(get_scorer(s), params) for s, params in scorer_params.items()]
    by_key = {(n["layer"], n["neuron"]): n for n in entry["neurons"]}
    claims = [by_key[(r.layer, r.neuron)] for r in neurons]
    rows: list[dict[str, Any]] = [{"explanation": c["explanation"], "failure": c["failure"]} for c in claims]
    simulated: dict[int, Simulated] = {}
    try:
        simulator = make_simulator(OmegaConf.create(sim_cfg))
        for i in chosen:
            rows[i]["failure"] = claims[i]["failure"] if claims[i]["explanation"] is None else None
            if claims[i]["explanation"] is None:
                continue
            try:
                simulated[i] = simulate(simulator, neurons[i], claims[i]["explanation"], scorers)
            except TransientLLMError:
                raise
            except HarnessError as exc:
                rows[i]["failure"] = f"{type(exc).__name__}: {exc}"
        explained = [i for i, c in enumerate(claims) if c["failure"] is None]
        score_neurons(neurons, rows, simulated, simulator, scorers, entry["controls"],
                      floor_partners(explained, entry["stats"]["seed"], entry["controls"].get("floor_neurons")), chosen,
                      RunContext(manifest=neuron_set.manifest))
    except TransientLLMError as exc:  # an outage is not a verdict
        return Verification(name, "pending", of=len(neurons), note=f"the simulator's API did not answer ({exc}); "
                                                                   "verify again later")
    except HarnessError as exc:
        return Verification(name, "failed", of=len(neurons), problems=[f"re-scoring failed: {exc}"])

    shifts: dict[str, list[float]] = {}  # claimed - re-scored, per metric, where both are defined
    for i in chosen:
        record, claimed, row = neurons[i], claims[i], rows[i]
        where = f"layer {record.layer} neuron {record.neuron}"
        result.checked += 1
        if (row["failure"] is None) != (claimed["failure"] is None):
            result.problems.append(f"{where}: claimed failure {claimed['failure']!r}, re-run failure {row['failure']!r}")
        for part, prefix in (("scores", ""), ("floor", "floor."), ("ceiling", "ceiling.")):
            if part != "scores" and not entry["controls"][part]:
                continue
            recomputed = {k[len(prefix):]: v for k, v in row.items()
                          if k.startswith(prefix) and k[len(prefix):].split(".")[0] in scorer_params
                          and k.count(".") == prefix.count(".") + 1}
            claimed_scores = claimed.get(part) or {}
            for metric in sorted(set(recomputed) | set(claimed_scores)):
                c, a = claimed_scores.get(metric), recomputed.get(metric)
                label = metric if part == "scores" else f"{part} {metric}"
                if not _close(c, a, tol):
                    result.problems.append(f"{where}: {label} claimed {_show(c)}, re-scored {_show(a)}")
                elif c is not None:
                    shifts.setdefault(label, []).append(float(c) - float(a))
        sim = claimed.get("test_simulation")
        if sim is not None and i in simulated:
            actual = simulated[i].test
            if len(sim) != len(actual) or any(
                    (s is None) != (a is None) or (s is not None and (len(s) != len(a) or np.max(
                        np.abs(np.asarray(s, float) - np.asarray(a, float)), initial=0) > max(tol, 10 ** -cfg["simulation_decimals"])))
                    for s, a in zip(sim, actual)):
                result.problems.append(f"{where}: the stored test simulation differs from the re-run simulation")
    for label, diffs in sorted(shifts.items()):
        if abs(np.mean(diffs)) > mean_tol:
            result.problems.append(f"{label}: the claimed values are {np.mean(diffs):+.4g} from the re-scored ones on "
                                   f"average over {len(diffs)} neurons, beyond the mean tolerance of {mean_tol:g}")
    ours = recomputed_summary(entry, [(r.layer, r.neuron) for r in neurons])
    result.problems += _summary_problems(entry, ours, cfg["tolerance"]["summary"])
    if result.problems:
        result.status = "failed"
    return result
