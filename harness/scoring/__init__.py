"""Scoring rules: a registry from config name to a `Scorer`.

A scorer receives every neuron's `Simulated` (its records plus the simulator's predictions for
its `calibration` and `test` splits, one list per record, `None` for a window the simulator
failed on) and returns one {metric: value} per neuron, computed on the raw activations of `test`.
It works on the whole batch so a rule that runs the subject model (ablation) can patch many
neurons in one forward pass; such a rule declares `needs_context` and receives `context=`, a dict
with the set's `manifest` (which names the subject) and optionally a loaded `subject`. NaN means the metric is undefined for the neuron (e.g. a constant
prediction) and counts as a failure, never as 0. Parameters come from `conf/scorer/<name>.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import ConfigError
from harness.records import NeuronRecord
from harness.scoring.ablation import HEADLINE as ABLATION_HEADLINE, ablation_scores
from harness.scoring.correlation import correlation_scores
from harness.scoring.threshold import HEADLINE as THRESHOLD_HEADLINE, threshold_scores


@dataclass
class Simulated:
    neuron: NeuronRecord
    test: list[list[float] | None]
    calibration: list[list[float] | None]


@dataclass(frozen=True)
class Scorer:
    name: str
    score: Callable[..., list[dict[str, float]]]  # (list[Simulated], **params) → one dict per neuron
    headline: str  # the metric reported as `scores.<name>.mean`
    needs_context: bool = False  # score(batch, context=..., **params): gets the set's manifest
    needs_calibration: bool = False  # reads the simulation of the calibration split


def per_neuron(fn: Callable[[Simulated], dict[str, float]]) -> Callable[..., list[dict[str, float]]]:
    """Lift a rule that scores one neuron at a time to the batch interface."""
    return lambda batch, **params: [fn(s, **params) for s in batch]


SCORERS: dict[str, Scorer] = {
    "correlation": Scorer("correlation", per_neuron(lambda s: correlation_scores(s.neuron.test, s.test,
                                                                                 s.neuron.calibration, s.calibration)),
                          headline="ev_correlation_score", needs_calibration=True),
    "threshold": Scorer("threshold", per_neuron(lambda s, **params: threshold_scores(s.neuron, s.test, s.calibration,
                                                                                     **params)),
                        headline=THRESHOLD_HEADLINE, needs_calibration=True),
    "ablation": Scorer("ablation", ablation_scores, headline=ABLATION_HEADLINE, needs_context=True,
                       needs_calibration=True),
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; known: {sorted(SCORERS)}")
    return SCORERS[name]


def score_batch(scorer: Scorer, params: dict[str, Any], batch: list[Simulated],
                context: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """One scorer on a batch, passing `context` to the scorers that need it."""
    if scorer.needs_context:
        return scorer.score(batch, context=context, **params)
    return scorer.score(batch, **params)


def run_scorers(scorers: list[tuple[Scorer, dict[str, Any]]], batch: list[Simulated],
                context: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Every scorer on every neuron: one flat {"<scorer>.<metric>": value} per neuron. `context`
    (e.g. {"manifest": neuron_set.manifest}) goes to the scorers that declare `needs_context`."""
    rows: list[dict[str, float]] = [{} for _ in batch]
    if not batch:
        return rows
    for scorer, params in scorers:
        for row, scores in zip(rows, score_batch(scorer, params, batch, context)):
            row.update({f"{scorer.name}.{metric}": value for metric, value in scores.items()})
    return rows
