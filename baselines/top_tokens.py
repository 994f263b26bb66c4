"""`baseline_top_tokens`: name the tokens with the highest activation in the explain split."""

from __future__ import annotations

from dataclasses import dataclass

from harness.records import NeuronRecord
from harness.types import Explanation


@dataclass
class TopTokensExplainer:
    n_tokens: int = 5

    def tokens(self, neuron: NeuronRecord) -> list[str]:
        """The `n_tokens` most activating tokens (stripped, lower-cased), strongest first."""
        best: dict[str, float] = {}  # token text (stripped, lower-cased) → its max activation
        for record in neuron.explain:
            for token, act in zip(record.tokens, record.activations):
                key = token.strip().lower()
                if key and act > best.get(key, float("-inf")):
                    best[key] = act
        return sorted(best, key=best.get, reverse=True)[: self.n_tokens]

    @staticmethod
    def describe(tokens: list[str]) -> str:
        """The explanation text of a token list (harness.metric_sanity perturbs the list and reuses it)."""
        return "the tokens " + ", ".join(f'"{t}"' for t in tokens)

    def explain(self, neuron: NeuronRecord) -> Explanation:
        return Explanation(text=self.describe(self.tokens(neuron)))
