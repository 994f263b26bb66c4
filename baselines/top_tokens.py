"""`baseline_top_tokens`: name the tokens with the highest activation in the explain split."""

from __future__ import annotations

from dataclasses import dataclass

from harness.records import NeuronRecord
from harness.types import Explanation


@dataclass
class TopTokensExplainer:
    n_tokens: int = 5

    def explain(self, neuron: NeuronRecord) -> Explanation:
        best: dict[str, float] = {}  # token text (stripped, lower-cased) → its max activation
        for record in neuron.explain:
            for token, act in zip(record.tokens, record.activations):
                key = token.strip().lower()
                if key and act > best.get(key, float("-inf")):
                    best[key] = act
        top = sorted(best, key=best.get, reverse=True)[: self.n_tokens]
        return Explanation(text="the tokens " + ", ".join(f'"{t}"' for t in top))
