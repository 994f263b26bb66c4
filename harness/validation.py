"""Checking a configuration before anything runs. A component's parameters (the simulator's, the
explainer's, the prompt variant's, each scorer's) are checked against the rules on its params class
(harness/params.py); every other numeric or boolean option of a cell, a corruption run or an agent
run (the run-level options, and the llm and sampling blocks that explainers, simulators and
scorers share) against the table below. A bad value or an unknown component name or key is one
ConfigError naming each offending option, never a traceback deep inside a run."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.rules import (BOOL, COUNT, COUNT_OR_NULL, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE,
                           POSITIVE_OR_NULL, UNIT_INTERVAL, ZERO_OR_ONE, Rule, is_int, or_null)

# The llm and sampling blocks of an explainer, a simulator (`*.llm.timeout`) or a scorer that asks a
# model (`scorer.*.llm.timeout`).
SHARED_BLOCKS: dict[str, Rule] = {
    "llm.timeout": POSITIVE,
    "llm.max_retries": NON_NEGATIVE_INT,
    "llm.concurrency": COUNT,
    "llm.requests_per_minute": POSITIVE_OR_NULL,
    "llm.batch_size": COUNT,
    "llm.paid": BOOL,
    "llm.api_key_required": BOOL,
    "llm.top_logprobs": (lambda x: is_int(x) and 1 <= x <= 100, "an integer in [1, 100]"),
    "llm.echo_shift": ZERO_OR_ONE,
    "sampling.temperature": NON_NEGATIVE,
    "sampling.max_tokens": COUNT,
    "sampling.n": COUNT,
    "sampling.seed": NON_NEGATIVE_INT,
    "sampling.logprobs": BOOL,
}

# Run-level option paths, dotted (`*` matches one key, or one list item's index) and what each must
# be. Every numeric or boolean option of every file under conf/ has a rule, here or on its
# component's params class (tests/test_cell.py checks).
RULES: dict[str, Rule] = {
    "neuron_set.limit": COUNT_OR_NULL,
    "batch_neurons": COUNT,
    "max_failed_fraction": UNIT_INTERVAL,
    "evaluate_on": (lambda x: x in ("test", "calibration"), "'test' or 'calibration'"),
    "controls.floor": BOOL,
    "controls.ceiling": BOOL,
    "controls.floor_neurons": or_null((lambda x: is_int(x) and x >= 2, "an integer >= 2")),
    "stats.seed": NON_NEGATIVE_INT,
    "stats.bootstrap_resamples": COUNT,
    "stats.fdr_q": FRACTION,
    **{f"{where}.{option}": rule for where in ("*", "scorer.*") for option, rule in SHARED_BLOCKS.items()},
    "pricing.*.*": NON_NEGATIVE,
    # conf/corruption_measures/ (python -m harness.corrupt and python -m harness.agent)
    "measure.n_windows": COUNT,
    "measure.window": (lambda x: is_int(x) and x >= 2, "an integer >= 2"),
    "measure.batch_size": COUNT,
    "measure.explain_fraction": FRACTION,
    "measure.top_k": (lambda x: is_int(x) and 1 <= x <= 100, "an integer in [1, 100]"),
    "measure.max_new_tokens": COUNT,
    "measure.bootstrap_resamples": COUNT,
    "measure.seeds.*": NON_NEGATIVE_INT,
    # conf/agent.yaml
    "budget.max_steps": COUNT,
    "budget.max_cost_usd": NON_NEGATIVE,
    "budget.max_wall_seconds": POSITIVE,
    "max_answer_chars": COUNT,
    "max_note_chars": COUNT,
    "min_experiments": NON_NEGATIVE_INT,
    "sampling.temperature": NON_NEGATIVE,
    "sampling.max_tokens": COUNT,
    "sampling.n": COUNT,
    "sampling.seed": NON_NEGATIVE_INT,
}


def leaves(node: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf of a plain dict/list tree by its path of keys (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        return {prefix: node}
    out: dict[tuple[str, ...], Any] = {}
    for key, value in items:
        out.update(leaves(value, (*prefix, str(key))))
    return out


def config_rules(tree: Any) -> dict[str, Rule]:
    """The run-level rules and those of the components `tree` names."""
    from harness.components import component_rules

    return {**RULES, **(component_rules(tree) if isinstance(tree, dict) else {})}


def rule_for(path: tuple[str, ...], rules: dict[str, Rule] | None = None) -> Rule | None:
    for pattern, rule in (RULES if rules is None else rules).items():
        parts = pattern.split(".")
        if len(parts) == len(path) and all(fnmatchcase(key, part) for key, part in zip(path, parts)):
            return rule
    return None


def option_problems(tree: Any, required: tuple[str, ...] = (), rules: dict[str, Rule] | None = None) -> list[str]:
    """What is wrong with a plain config tree: each option of `required` (dotted paths) that is
    missing, and every node (a mapping or list as well as a leaf) that breaks its rule (`rules`, by
    default config_rules(tree)), as "path=value must be ...". A node whose rule fails is not
    descended into."""
    rules = config_rules(tree) if rules is None else rules
    problems, present, stack = [], set(), [((), tree)]
    while stack:
        path, node = stack.pop()
        present.add(".".join(path))
        rule = rule_for(path, rules) if path else None
        if rule is not None and not rule[0](node):
            shown = repr(node) if len(repr(node)) <= 60 else repr(node)[:59] + "…"
            problems.append(f"{'.'.join(path)}={shown} must be {rule[1]}")
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack += [((*path, str(k)), v) for k, v in items]
    return [f"{name} is missing" for name in required if name not in present] + sorted(problems)


def validate_cell_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every option of the cell's config that breaks its rule, every
    simulator, explainer, prompt variant or scorer name no component has, and every key of theirs
    that is not one of its parameters; or, when all of those are fine, what `evaluate_on=calibration`
    cannot run (calibration_problems)."""
    from harness.components import SCORERS, named, unknown_options

    tree = OmegaConf.to_container(cfg, resolve=True)
    problems = option_problems(tree) + unknown_options(tree)
    for group, name, where, _ in named(tree):
        if name not in group:
            problems.append(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}" if group is SCORERS
                            else f"{where}.kind: unknown {group.what} {name!r}; known: {sorted(group)}")
    if not problems:  # every component is known and its parameters parse
        problems = calibration_problems(tree)
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))


def calibration_problems(tree: dict[str, Any]) -> list[str]:
    """What a cell with `evaluate_on=calibration` cannot run. The calibration split then takes test's
    place and no split is left to fit on (harness/cell.py): a scorer whose headline needs a fit is
    refused, and so is an explainer that picks its explanation by scores on calibration."""
    from harness.components import SCORERS

    if tree.get("evaluate_on") != "calibration":
        return []
    why = "with evaluate_on=calibration no split is left to fit on"
    problems = []
    explainer = tree.get("explainer") or {}
    kind = explainer.get("kind")  # the cell's judge scores their candidates on calibration (harness/cell.py)
    chooser = ("explainer=hypothesis_loop" if kind == "hypothesis_loop" else "explainer.sampling.n>1"
               if kind == "llm" and ((explainer.get("sampling") or {}).get("n") or 1) > 1 else None)
    if chooser:
        problems.append(f"{chooser} keeps the explanation that scores best on the calibration split, so "
                        "evaluate_on=calibration would score it on the split it was chosen on; use evaluate_on=test")
    for name, params in (tree.get("scorer") or {}).items():
        if name == "ablation":
            problems.append(f"scorer ablation patches the simulation calibrated by least squares on calibration: {why}")
        active = SCORERS.component(name).parse(params, f"scorer.{name}").get("active")
        if isinstance(active, str) and active.startswith("q"):
            problems.append(f"scorer.{name}.active={active} labels windows by a quantile of the calibration split: "
                            f"{why}; use a max<P> threshold (e.g. max50)")
    return problems
