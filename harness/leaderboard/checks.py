"""The checks of an entry that its JSON Schema cannot express, each giving a list of problems:
its neurons, parameters that look like secrets, its text (`harness.text`), its date, and its
scores against what its scorers declare."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from harness.text import text_problem

SECRET_KEY_RE = re.compile(r"(api_?key|secret|password|passwd|token|auth|credential)", re.I)
SAFE_SECRET_KEYS = {"api_key_env", "api_key_required", "max_tokens", "n_tokens", "max_new_tokens",
                    "input_tokens", "output_tokens", "cached_input_tokens"}
EARLIEST_DATE = dt.date(2023, 1, 1)  # before any entry could exist
# Free text written by people or models, which may quote a subject's tokens, control characters
# among them (they are escaped wherever shown); every other string holds no control character.
FREE_TEXT_FIELDS = {"explanation", "failure", "description"}


def content_problems(data: dict[str, Any], max_explanation_chars: int) -> list[str]:
    """Every problem of a schema-valid entry that the schema cannot express."""
    problems = neuron_problems(data, max_explanation_chars)
    secrets = secret_keys({k: data[k] for k in ("explainer", "prompt", "simulator", "scorers")})
    if secrets:
        problems.append(f"parameters that look like secrets: {', '.join(secrets)}")
    return problems + text_problems(data) + date_problems(data["date"]) + score_problems(data)


def neuron_problems(data: dict[str, Any], max_explanation_chars: int) -> list[str]:
    """Each neuron listed once, explained or failed, within the explanation length, with numbers
    for its test simulation; as many neurons as the set has."""
    problems = []
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
    return problems


def _non_numbers(values: list) -> bool:
    return any(type(x) is not float and type(x) is not int for x in values)  # bool is not a number here


def looks_secret(key: Any) -> bool:
    """A parameter name that looks like a credential (an entry must not carry one)."""
    return SECRET_KEY_RE.search(str(key)) is not None and str(key) not in SAFE_SECRET_KEYS


def secret_keys(obj: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if looks_secret(k):
                found.append(f"{path}{k}")
            found += secret_keys(v, f"{path}{k}.")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += secret_keys(v, f"{path}{i}.")
    return found


def text_problems(data: Any) -> list[str]:
    """Every string of the entry, keys included, is storable and displayable text (harness.text)."""
    problems, stack = [], [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            why = text_problem(value, allow_controls=where.rsplit(".", 1)[-1] in FREE_TEXT_FIELDS)
            if why:
                problems.append(f"{where or '(root)'} holds {why}")
        elif isinstance(value, dict):
            for k, v in value.items():
                if text_problem(k):
                    problems.append(f"a key under {where or '(root)'} holds {text_problem(k)}")
                stack.append((f"{where}.{k}" if where else k, v))
        elif isinstance(value, list):
            stack += [(where, v) for v in value if isinstance(v, (str, dict, list))]
    return sorted(problems)


def date_problems(text: str) -> list[str]:
    """A real date (or time) between EARLIEST_DATE and tomorrow: it decides which of two duplicates
    keeps its place."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return [f"date {text!r} is not a real ISO 8601 date"]
    tomorrow = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)
    if not EARLIEST_DATE <= when.date() <= tomorrow:
        return [f"date {text!r} is outside {EARLIEST_DATE.isoformat()} … {tomorrow.isoformat()}"]
    return []


def score_problems(data: dict[str, Any]) -> list[str]:
    """The scores an entry claims are the scores its scorers produce: summary blocks exactly for
    the scorers it ran (and for the controls it ran), each headed by the scorer's headline metric;
    every metric one the scorer declares; every per-neuron value inside the metric's range."""
    from harness.errors import ConfigError
    from harness.scoring import SCORERS

    unknown = sorted(set(data["scorers"]) - set(SCORERS))
    if unknown:
        return [f"unknown scorer(s) {unknown}; known: {sorted(SCORERS)}"]
    ran = set(data["scorers"])
    parts = ["scores"] + [c for c in ("floor", "ceiling") if data["controls"][c]]
    problems = []

    def metric(scorer: str, name: str, where: str):
        try:
            return SCORERS[scorer].metric(name)
        except ConfigError:
            problems.append(f"{where}: scorer {scorer} has no metric {name!r}")
            return None

    for part in ("scores", "floor", "ceiling"):
        blocks = data["summary"].get(part)
        if part not in parts:
            if blocks is not None:
                problems.append(f"summary.{part} is given, but the entry did not run that control")
            continue
        expected = {s for s in ran if SCORERS[s].reports(part)}  # no ceiling for scorers reading no simulation
        if set(blocks or {}) != expected:
            problems.append(f"summary.{part} has blocks for {sorted(blocks or {})}; the entry ran {sorted(ran)}"
                            + ("" if expected == ran else f", of which {sorted(expected)} report a {part}"))
            continue
        for scorer, block in blocks.items():
            headline = SCORERS[scorer].headline
            if block["metric"] != headline or headline not in block["metrics"]:
                problems.append(f"summary.{part}.{scorer}: the headline metric of {scorer} is {headline!r}, "
                                f"not {block['metric']!r}")
            for name in block["metrics"]:
                metric(scorer, name, f"summary.{part}.{scorer}")
    for n in data["neurons"]:
        where = f"layer {n['layer']} neuron {n['neuron']}"
        for part in ("scores", "floor", "ceiling"):
            values = n.get(part)
            if part not in parts:
                if values:
                    problems.append(f"{where}: {part} values are given, but the entry did not run that control")
                continue
            for key, value in (values or {}).items():
                scorer, name = key.split(".", 1)
                if scorer not in ran or not SCORERS[scorer].reports(part):
                    problems.append(f"{where}: {part} {key}: the entry did not run scorer {scorer}"
                                    + ("" if scorer not in ran else f", or it has no {part}"))
                    continue
                m = metric(scorer, name, f"{where}: {part}")
                if m is not None and value is not None and not m.in_range(value):
                    problems.append(f"{where}: {part} {key} = {value:.6g} is outside the metric's range "
                                    f"[{m.low:g}, {m.high:g}]")
    return problems
