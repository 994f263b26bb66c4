"""Checking a configuration before anything runs: every numeric (and boolean) option of a cell, a
corruption run or an agent run against one table of rules, and a cell's scorer names against the
scorer registry. A bad value is a ConfigError naming each offending option, never a traceback deep
inside a run."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.scoring import SCORERS


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x: Any) -> bool:
    return (_int(x) or isinstance(x, float)) and math.isfinite(x)


Rule = tuple[Callable[[Any], bool], str]
COUNT: Rule = (lambda x: _int(x) and x >= 1, "a positive integer")
COUNT_OR_NULL: Rule = (lambda x: x is None or COUNT[0](x), "a positive integer or null")
NON_NEGATIVE_INT: Rule = (lambda x: _int(x) and x >= 0, "an integer >= 0")
POSITIVE: Rule = (lambda x: _number(x) and x > 0, "a number > 0")
POSITIVE_OR_NULL: Rule = (lambda x: x is None or POSITIVE[0](x), "a number > 0 or null")
NON_NEGATIVE: Rule = (lambda x: _number(x) and x >= 0, "a number >= 0")
FRACTION: Rule = (lambda x: _number(x) and 0 < x <= 1, "a number in (0, 1]")
NUMBER: Rule = (_number, "a finite number")
BOOL: Rule = (lambda x: isinstance(x, bool), "true or false")
SHORT_LIST: Rule = (lambda x: isinstance(x, list) and 1 <= len(x) <= 16, "a list of 1 to 16 values")  # items: own rule
MAPPING: Rule = (lambda x: isinstance(x, dict), "a mapping")

# Option paths, dotted (`*` matches one key, or one list item's index) and what each must be. Every
# numeric or boolean option of every file under conf/ has a rule (tests/test_cell.py checks).
RULES: dict[str, Rule] = {
    "neuron_set.limit": COUNT_OR_NULL,
    "batch_neurons": COUNT,
    "max_failed_fraction": (lambda x: _number(x) and 0 <= x <= 1, "a number in [0, 1]"),
    "controls.*": BOOL,
    "stats.seed": NON_NEGATIVE_INT,
    "stats.bootstrap_resamples": COUNT,
    "stats.fdr_q": FRACTION,
    "*.llm.timeout": POSITIVE,
    "*.llm.max_retries": NON_NEGATIVE_INT,
    "*.llm.concurrency": COUNT,
    "*.llm.requests_per_minute": POSITIVE_OR_NULL,
    "*.llm.batch_size": COUNT,
    "*.llm.paid": BOOL,
    "*.llm.api_key_required": BOOL,
    "*.llm.top_logprobs": (lambda x: _int(x) and 1 <= x <= 100, "an integer in [1, 100]"),
    "*.llm.echo_shift": (lambda x: x in (0, 1) and not isinstance(x, bool), "0 or 1"),
    "*.windows_per_request": COUNT,
    "*.sampling.temperature": NON_NEGATIVE,
    "*.sampling.max_tokens": COUNT,
    "*.sampling.n": COUNT,
    "*.sampling.seed": NON_NEGATIVE_INT,
    "explainer.n_tokens": COUNT,
    "explainer.source.n_tokens": COUNT,
    "explainer.seed": NON_NEGATIVE_INT,
    "simulator.batch_size": COUNT,
    "simulator.max_context": COUNT_OR_NULL,
    "simulator.high": NUMBER,
    "simulator.reuse_prefix": BOOL,
    "simulator.literal": BOOL,
    "prompt.max_records": COUNT,
    "prompt.n_tokens": COUNT,
    "prompt.context": NON_NEGATIVE_INT,
    "prompt.n_top": COUNT,
    "prompt.n_low": NON_NEGATIVE_INT,
    "prompt.k": COUNT,
    "prompt.rounds": NON_NEGATIVE_INT,
    "scorer.ablation.windows_per_kind": MAPPING,
    "scorer.ablation.windows_per_kind.*": NON_NEGATIVE_INT,
    "scorer.ablation.batch_size": COUNT,
    "scorer.threshold.max_fractions": SHORT_LIST,
    "scorer.threshold.max_fractions.*": FRACTION,
    "scorer.threshold.quantiles": SHORT_LIST,
    "scorer.threshold.quantiles.*": FRACTION,
    "pricing.*.*": NON_NEGATIVE,
    # conf/corruption_measures/ (python -m harness.corrupt and python -m harness.agent)
    "measure.n_windows": COUNT,
    "measure.window": (lambda x: _int(x) and x >= 2, "an integer >= 2"),
    "measure.batch_size": COUNT,
    "measure.explain_fraction": FRACTION,
    "measure.top_k": (lambda x: _int(x) and 1 <= x <= 100, "an integer in [1, 100]"),
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


def rule_for(path: tuple[str, ...]) -> Rule | None:
    for pattern, rule in RULES.items():
        parts = pattern.split(".")
        if len(parts) == len(path) and all(fnmatchcase(key, part) for key, part in zip(path, parts)):
            return rule
    return None


def option_problems(tree: Any, required: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a plain config tree: each option of `required` (dotted paths) that is
    missing, and every node (a mapping or list as well as a leaf) that breaks its rule, as
    "path=value must be ...". A node whose rule fails is not descended into."""
    problems, present, stack = [], set(), [((), tree)]
    while stack:
        path, node = stack.pop()
        present.add(".".join(path))
        rule = rule_for(path) if path else None
        if rule is not None and not rule[0](node):
            shown = repr(node) if len(repr(node)) <= 60 else repr(node)[:59] + "…"
            problems.append(f"{'.'.join(path)}={shown} must be {rule[1]}")
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack += [((*path, str(k)), v) for k, v in items]
    return [f"{name} is missing" for name in required if name not in present] + sorted(problems)


def validate_cell_config(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every option of the cell's config that breaks its rule, and
    every scorer name the registry does not know."""
    problems = option_problems(OmegaConf.to_container(cfg, resolve=True))
    for name in cfg.get("scorer") or {}:
        if name not in SCORERS:
            problems.append(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
