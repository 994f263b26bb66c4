"""The label perturbations of `python -m harness.metric_sanity`: of the oracle simulation, for the
scorers that read a simulation, and of a true label list, for the scorers that judge the explanation.
Both are seeded per neuron and nested (a larger fraction perturbs a superset of what a smaller one
does)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

from harness.components import build
from harness.errors import ConfigError
from harness.planted import CLASS
from harness.records import NeuronRecord
from harness.scoring import Simulated
from harness.simulate import OracleQuantizedSimulator

DIRECTIONS = ("missing", "extra")

@dataclass
class Plan:
    """One split's oracle labels, flattened, and the seeded order in which tokens are perturbed."""

    labels: np.ndarray        # the oracle simulation of every token of the split, flattened
    lengths: list[int]        # tokens per record, to unflatten
    active_order: np.ndarray  # indices of active tokens (label > 0), in removal order
    inactive_order: np.ndarray  # indices of inactive tokens, in labelling order
    extra_values: np.ndarray  # the label each inactive token gets, in that order

    @classmethod
    def draw(cls, sims: list[list[float]], rng: np.random.Generator) -> "Plan":
        labels = np.concatenate([np.asarray(s, dtype=np.float64) for s in sims]) if sims else np.zeros(0)
        active = np.flatnonzero(labels > 0)
        inactive = np.flatnonzero(labels <= 0)
        values = rng.choice(labels[active], size=len(inactive)) if len(active) else np.zeros(len(inactive))
        return cls(labels, [len(s) for s in sims], rng.permutation(active), rng.permutation(inactive), values)

    def perturbed(self, direction: str, fraction: float) -> list[list[float]]:
        out = self.labels.copy()
        if direction == "missing":
            out[self.active_order[:round(fraction * len(self.active_order))]] = 0.0
        elif direction == "extra":
            k = round(fraction * len(self.inactive_order))
            out[self.inactive_order[:k]] = self.extra_values[:k]
        else:
            raise ConfigError(f"unknown perturbation {direction!r}; known: {list(DIRECTIONS)}")
        return [part.tolist() for part in np.split(out, np.cumsum(self.lengths)[:-1])]


def conditions(fractions: list[float]) -> list[tuple[str, float]]:
    """(direction, fraction) pairs; f = 0 once, as ("missing", 0.0), shared by both directions."""
    return [("missing", 0.0)] + [(d, f) for d in DIRECTIONS for f in fractions if f > 0]


def perturbed_batch(neuron: NeuronRecord, fractions: list[float], seed: int) -> list[Simulated]:
    """The oracle simulation of `neuron` under every condition, one `Simulated` each (test and
    calibration perturbed alike, each split with its own seeded plan)."""
    oracle = OracleQuantizedSimulator()
    rng = np.random.default_rng(seed)
    plans = {split: Plan.draw(oracle.simulate("", neuron.split(split)), rng) for split in ("test", "calibration")}
    return [Simulated(neuron, test=plans["test"].perturbed(d, f), calibration=plans["calibration"].perturbed(d, f))
            for d, f in conditions(fractions)]


def label_count(fraction: float, n: int) -> int:
    """How many of n labels a fraction perturbs: ceil(f·n), so every f > 0 perturbs at least one
    (label lists are short: round(0.1 · 5) would perturb none of 5 top tokens)."""
    return min(n, math.ceil(round(fraction * n, 9)))


@dataclass
class LabelPlan:
    """One neuron's true label list and the seeded order in which it is perturbed."""

    labels: list[str]   # the true labels, in the explanation's order
    removal: list[int]  # indices into `labels`, in removal order
    extras: list[str]   # wrong labels in the order they are added, as many as `labels`
    slots: list[int]    # extras[j] goes before labels[slots[j]] (len(labels): after the last)

    @classmethod
    def draw(cls, labels: list[str], wrong: Iterable[str], rng: np.random.Generator) -> "LabelPlan":
        pool = sorted(set(wrong) - set(labels))
        if len(pool) < len(labels):
            raise ConfigError(f"only {len(pool)} wrong labels to draw {len(labels)} extra labels from for the list "
                              f"{labels}; give more neurons (set_neurons) so that other neurons' lists supply them")
        extras = [pool[i] for i in rng.choice(len(pool), size=len(labels), replace=False)]
        return cls(list(labels), rng.permutation(len(labels)).tolist(), extras,
                   rng.integers(0, len(labels) + 1, size=len(labels)).tolist())

    def perturbed(self, direction: str, fraction: float) -> list[str]:
        k = label_count(fraction, len(self.labels))
        if direction == "missing":
            gone = set(self.removal[:k])
            return [label for i, label in enumerate(self.labels) if i not in gone]
        if direction == "extra":
            # a fixed slot per extra label: a larger f inserts more of them, the rest stay in place
            placed = [((i, 1), label) for i, label in enumerate(self.labels)]
            placed += [((self.slots[j], 0), self.extras[j]) for j in range(k)]
            return [label for _, label in sorted(placed, key=lambda p: p[0])]
        raise ConfigError(f"unknown perturbation {direction!r}; known: {list(DIRECTIONS)}")


@dataclass(frozen=True)
class Labeller:
    """How a label list becomes an explanation: the top-tokens baseline's text, and the empty
    baseline's text ("nothing in particular") for a list with no labels left."""

    describe: Any  # list[str] → text
    empty: str

    @classmethod
    def from_baselines(cls) -> "Labeller":
        return cls(build("explainer", "baseline_top_tokens").describe, build("explainer", "baseline_empty").text)

    def text(self, labels: list[str]) -> str:
        return self.describe(labels) if labels else self.empty


def explained_batch(neuron: NeuronRecord, plan: LabelPlan, labeller: Labeller,
                    fractions: list[float]) -> list[Simulated]:
    """`neuron` with its perturbed explanation under every condition (no simulation: these scorers read none)."""
    return [Simulated(neuron, test=[], calibration=[], explanation=labeller.text(plan.perturbed(d, f)))
            for d, f in conditions(fractions)]


def planted_labels(neuron: NeuronRecord) -> tuple[list[str], list[str]]:
    """The planted neuron's true labels (its class, as tokens: " he" → "he", " He" → "He") and the
    wrong ones it may be given: every other token of its explain windows."""
    labels = [c.strip() for c in CLASS]
    wrong = {t.strip() for r in neuron.explain for t in r.tokens} - set(labels) - {""}
    return labels, sorted(wrong)


def fewer_windows(neuron: NeuronRecord, windows_per_kind: dict[str, int]) -> NeuronRecord:
    """`neuron` with only the first `windows_per_kind[kind]` test windows of each kind."""
    taken: dict[str, int] = {}
    test = []
    for r in neuron.test:
        if taken.get(r.kind, 0) < windows_per_kind.get(r.kind, 0):
            taken[r.kind] = taken.get(r.kind, 0) + 1
            test.append(r)
    return replace(neuron, test=test)

