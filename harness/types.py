"""Types and names shared by the harness and its plug-ins (baselines/): a leaf module, so that a
plug-in can import them without importing the registry that names it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from harness.records import NeuronRecord

# The controls a cell reports beside every score (summary.json keys, column prefixes "floor." and
# "ceiling."): columns, never leaderboard entries.
CONTROLS = ("floor", "ceiling")

# judge(neuron, explanation text) → score on the neuron's calibration split (NaN if undefined)
Judge = Callable[[NeuronRecord, str], float]


@dataclass
class Explanation:
    text: str
    raw: str = ""  # the explainer's full output, where it differs from `text`
    cost_usd: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # e.g. every hypothesis and its score


class Explainer(Protocol):
    def explain(self, neuron: NeuronRecord) -> Explanation: ...
