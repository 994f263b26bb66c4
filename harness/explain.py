"""Explainers: a registry from config name to a class whose `explain(neuron)` describes it.

An explainer sees only a neuron's `explain` split; `calibration` and `test` are held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from harness.errors import ConfigError
from harness.records import NeuronRecord


@dataclass
class Explanation:
    text: str
    raw: str = ""  # the explainer's full output, where it differs from `text`
    cost_usd: float = 0.0


class Explainer(Protocol):
    def explain(self, neuron: NeuronRecord) -> Explanation: ...


def _registry() -> dict[str, type]:
    from baselines.top_tokens import TopTokensExplainer

    return {"baseline_top_tokens": TopTokensExplainer}


def make_explainer(cfg: Any) -> Explainer:
    params = dict(cfg)
    kind = params.pop("kind")
    registry = _registry()
    if kind not in registry:
        raise ConfigError(f"unknown explainer kind {kind!r}; known: {sorted(registry)}")
    return registry[kind](**params)
