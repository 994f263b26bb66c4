"""Scoring rules: a registry from config name to a function (neuron, simulation) → scores.

A scorer takes the neuron's records and the simulator's predictions for its `test` split
(one list of floats per record, aligned with the tokens) and returns {metric: value}. NaN
means the metric is undefined for this neuron (for example a constant prediction) and is
counted as a failure, never as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from harness.errors import ConfigError
from harness.records import ActivationRecord
from harness.scoring.correlation import correlation_scores


@dataclass(frozen=True)
class Scorer:
    name: str
    score: Callable[[list[ActivationRecord], list[list[float]]], dict[str, float]]
    headline: str  # the metric reported as `scores.<name>.mean`


SCORERS: dict[str, Scorer] = {
    "correlation": Scorer("correlation", correlation_scores, headline="ev_correlation_score"),
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; known: {sorted(SCORERS)}")
    return SCORERS[name]
