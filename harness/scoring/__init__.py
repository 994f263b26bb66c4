"""Scoring rules: each a `Scorer` descriptor, registered as a component (harness/components.py).

A scorer receives every neuron's `Simulated` (its records plus the simulator's predictions for
its `calibration` and `test` splits, one list per record, `None` for a window the simulator
failed on) and returns one {metric: value} per neuron, computed on the raw activations of `test`.
It works on the whole batch so a rule that runs the subject model (ablation) can patch many
neurons in one forward pass; such a rule declares `needs_context` and receives `context=`, the
run's `harness.components.RunContext` (the set's manifest and subject, the ledger and call cache).
NaN means the metric is undefined for the neuron (e.g. a constant prediction) and counts as a
failure, never as 0. Parameters: the scorer's params class in harness/params.py; presets in
`conf/scorer/<name>.yaml`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable

from harness.components import SCORERS, RunContext
from harness.errors import ConfigError
from harness.records import NeuronRecord
from harness.scoring.ablation import HEADLINE as ABLATION_HEADLINE, ablation_scores
from harness.scoring.correlation import correlation_scores
from harness.scoring.threshold import HEADLINE as THRESHOLD_HEADLINE, threshold_scores


__all__ = ["ABLATION", "CORRELATION", "DETECTION", "EMBEDDING", "FUZZING", "SCORERS", "THRESHOLD", "Metric", "Scorer",
           "Simulated", "get_scorer", "per_neuron", "reporting", "run_scorers", "score_batch", "scorers_from"]


@dataclass
class Simulated:
    neuron: NeuronRecord
    test: list[list[float] | None]
    calibration: list[list[float] | None]
    explanation: str = ""  # what was simulated: read by the scorers that judge the explanation itself


RANGE_SLACK = 1e-6


@dataclass(frozen=True)
class Metric:
    """What a family of a scorer's metrics (names matching `pattern`, fnmatch-style) means on a board.

    `no_information` is the value an uninformative simulation gets (correlation 0, AUROC 0.5): a
    neuron whose metric is undefined (a constant prediction, a failed explanation) counts at this
    value in the mean over every neuron, so coverage cannot be traded for score. None: the metric
    has no such value (e.g. a KL in nats) and is averaged over the neurons where it is defined only.
    `low`/`high` bound every defined value, so a leaderboard entry's per-neuron claims are
    range-checked on every neuron, re-scored or not."""

    pattern: str
    no_information: float | None
    higher_is_better: bool = True
    low: float = -math.inf   # every defined value lies in [low, high]: a claimed value outside is refused
    high: float = math.inf

    def in_range(self, value: float) -> bool:
        """Within [low, high], give or take float32 rounding (a KL of -1e-8, a Pearson r of 1 + 1e-7)."""
        return self.low - RANGE_SLACK <= value <= self.high + RANGE_SLACK


@dataclass(frozen=True)
class Scorer:
    name: str
    score: Callable[..., list[dict[str, float]]]  # (list[Simulated], **params) → one dict per neuron
    headline: str  # the metric reported as `scores.<name>.mean`
    metrics: tuple[Metric, ...]  # every metric it reports, first match wins
    needs_context: bool = False  # score(batch, context=..., **params): gets the set's manifest
    needs_calibration: bool = False  # reads the simulation of the calibration split
    # False: judges the explanation itself against the windows (detection, fuzzing, embedding); the
    # ceiling control (the true activations standing in for a simulation) means nothing to it
    reads_simulation: bool = True

    def reports(self, control: str) -> bool:
        """Whether the scorer has a value under `control` ("floor", "ceiling")."""
        return control != "ceiling" or self.reads_simulation

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if fnmatchcase(name, m.pattern):
                return m
        raise ConfigError(f"scorer {self.name} declares no metric {name!r}")


def reporting(scorers: list[tuple[Scorer, dict[str, Any]]], control: str) -> list[tuple[Scorer, dict[str, Any]]]:
    """The (scorer, parameters) pairs that have a value under `control` (Scorer.reports)."""
    return [(s, p) for s, p in scorers if s.reports(control)]


def per_neuron(fn: Callable[[Simulated], dict[str, float]]) -> Callable[..., list[dict[str, float]]]:
    """Lift a rule that scores one neuron at a time to the batch interface."""
    return lambda batch, **params: [fn(s, **params) for s in batch]


CORRELATION = Scorer(
    "correlation", per_neuron(lambda s: correlation_scores(s.neuron.test, s.test, s.neuron.calibration, s.calibration)),
    headline="ev_correlation_score", needs_calibration=True,
    # no prediction counts as predicting 0 everywhere: rsquared = absolute_dev_explained = 0
    # Pearson r in [-1, 1]; both explained-variance ratios are 1 - (a mean of >= 0 terms)
    metrics=(Metric("ev_correlation_*", 0.0, low=-1.0, high=1.0), Metric("rsquared*", 0.0, high=1.0),
             Metric("absolute_dev_explained*", 0.0, high=1.0)))
THRESHOLD = Scorer(
    "threshold", per_neuron(lambda s, **params: threshold_scores(s.neuron, s.test, s.calibration, **params)),
    headline=THRESHOLD_HEADLINE, needs_calibration=True,
    # F1 of an uninformative rule depends on the share of positives: no fixed value
    metrics=(Metric("auroc_*", 0.5, low=0.0, high=1.0), Metric("balacc_*", 0.5, low=0.0, high=1.0),
             Metric("f1_*", None, low=0.0, high=1.0)))
ABLATION = Scorer(
    "ablation", ablation_scores, headline=ABLATION_HEADLINE, needs_context=True, needs_calibration=True,
    # score 0 = no better than mean-ablation; KLs are nats/token, lower is better
    # score = 1 - KL(simulated)/KL(reference) with KLs >= 0
    metrics=(Metric("score*", 0.0, high=1.0), Metric("kl_*", None, higher_is_better=False, low=0.0)))


def _embedding(batch: list[Simulated], context: RunContext | None = None, path: str | None = None,
               device: str = "cpu", batch_size: int = 32, active: str = "max50") -> list[dict[str, float]]:
    from harness.embedding import embedding_scores_batch

    context = context or RunContext()
    return embedding_scores_batch([s.neuron for s in batch], [s.explanation for s in batch],
                                  context.embedder(path, device, batch_size), context.set_hash, active)


EMBEDDING = Scorer(
    "embedding", _embedding, headline="auroc", needs_context=True, reads_simulation=False,
    # AUROC of cosine similarity(explanation, window) against the window's active label; the gap is a
    # difference of mean cosines of unit vectors
    metrics=(Metric("auroc", 0.5, low=0.0, high=1.0), Metric("similarity_gap", 0.0, low=-2.0, high=2.0)))


def _judged(fuzz: bool) -> Callable[..., list[dict[str, float]]]:
    def score(batch: list[Simulated], context: RunContext | None = None, llm: dict | None = None,
              sampling: dict | None = None, windows_per_prompt: int = 1, active: str = "max50",
              seed: int = 0) -> list[dict[str, float]]:
        from harness.scoring.detection import WindowJudge

        context = context or RunContext()
        judge = WindowJudge(context.llm(llm), sampling, windows_per_prompt, fuzz, active, seed)
        return judge.score([(s.neuron, s.explanation) for s in batch])
    return score


# A judge's own decision (P(yes) > 0.5): precision, recall, F1 and the false-positive rate move with its
# bias towards "yes" and the share of active windows, so they have no fixed no-information value.
_JUDGE_METRICS = (Metric("auroc", 0.5, low=0.0, high=1.0), Metric("balacc", 0.5, low=0.0, high=1.0),
                  Metric("precision", None, low=0.0, high=1.0), Metric("recall", None, low=0.0, high=1.0),
                  Metric("f1", None, low=0.0, high=1.0), Metric("fpr", None, higher_is_better=False, low=0.0, high=1.0),
                  Metric("failed_fraction", None, higher_is_better=False, low=0.0, high=1.0))
DETECTION = Scorer("detection", _judged(fuzz=False), headline="auroc", needs_context=True, reads_simulation=False,
                   metrics=_JUDGE_METRICS)
FUZZING = Scorer("fuzzing", _judged(fuzz=True), headline="auroc", needs_context=True, reads_simulation=False,
                 metrics=_JUDGE_METRICS)


def get_scorer(name: str) -> Scorer:
    return SCORERS[name]


def scorers_from(scorer_cfg: Any) -> list[tuple[Scorer, dict[str, Any]]]:
    """A config's `scorer` block (name → parameters) as (Scorer, every parameter, checked and
    defaulted by the scorer's params class)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(scorer_cfg):
        scorer_cfg = OmegaConf.to_container(scorer_cfg, resolve=True)
    return [(SCORERS[name], SCORERS.component(name).parse(params, f"scorer.{name}"))
            for name, params in (scorer_cfg or {}).items()]


def score_batch(scorer: Scorer, params: dict[str, Any], batch: list[Simulated],
                context: RunContext | None = None) -> list[dict[str, float]]:
    """One scorer on a batch, passing `context` to the scorers that need it."""
    if scorer.needs_context:
        return scorer.score(batch, context=context, **params)
    return scorer.score(batch, **params)


def run_scorers(scorers: list[tuple[Scorer, dict[str, Any]]], batch: list[Simulated],
                context: RunContext | None = None) -> list[dict[str, float]]:
    """Every scorer on every neuron: one flat {"<scorer>.<metric>": value} per neuron. `context`
    (the run's RunContext) goes to the scorers that declare `needs_context`."""
    rows: list[dict[str, float]] = [{} for _ in batch]
    if not batch:
        return rows
    for scorer, params in scorers:
        for row, scores in zip(rows, score_batch(scorer, params, batch, context)):
            row.update({f"{scorer.name}.{metric}": value for metric, value in scores.items()})
    return rows
