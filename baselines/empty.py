"""`baseline_empty`: the same uninformative explanation for every neuron: the floor of what a
simulator makes of no information."""

from __future__ import annotations

from dataclasses import dataclass

from harness.records import NeuronRecord
from harness.types import Explanation


@dataclass
class EmptyExplainer:
    text: str = "nothing in particular"

    def explain(self, neuron: NeuronRecord) -> Explanation:
        return Explanation(text=self.text)
