"""`baseline_weight_in` / `baseline_weight_out`: name a neuron's top input / output tokens from
its connection weights alone (no activations, no LLM); see `baselines/connection_weights.py`.

They quote tokens the way `baseline_top_tokens` does, so the `token_match` simulator can use
them. The subject is named by its config (it must be the one the neuron set was built on) and
loaded once, on the first neuron; each neuron then costs one matrix-vector product per
vocabulary chunk (two for a gated MLP's input)."""

from __future__ import annotations

from dataclasses import dataclass, field

from baselines.connection_weights import ConnectionWeights, Top
from harness.records import NeuronRecord
from harness.subject import Subject, load_subject, subject_config
from harness.types import Explanation


@dataclass
class _WeightTokensExplainer:
    subject: str | Subject = "smollm2_135m"  # a subject config name, or a loaded Subject
    n_tokens: int = 5
    _weights: ConnectionWeights | None = field(default=None, init=False, repr=False)
    # Candidates fetched per token named: room for duplicates after stripping and lower-casing.
    _OVERFETCH = 8

    @property
    def weights(self) -> ConnectionWeights:
        if self._weights is None:
            subject = self.subject if isinstance(self.subject, Subject) else load_subject(subject_config(self.subject))
            self._weights = ConnectionWeights(subject)
        return self._weights

    def _quoted(self, top: Top) -> str:
        """The first `n_tokens` distinct tokens, stripped, skipping special tokens and tokens
        that are blank or hold a double quote (which would break the quoting)."""
        tokenizer = self.weights.subject.tokenizer
        special = set(tokenizer.all_special_ids)
        seen: dict[str, str] = {}  # lower-cased (what token_match compares) → as shown
        for t in top.index[0].tolist():
            text = tokenizer.decode([t]).strip()
            if t not in special and text and '"' not in text and text.lower() not in seen:
                seen[text.lower()] = text
            if len(seen) == self.n_tokens:
                break
        return ", ".join(f'"{text}"' for text in seen.values())


class WeightInExplainer(_WeightTokensExplainer):
    def explain(self, neuron: NeuronRecord) -> Explanation:
        top = self.weights.input_tokens(neuron.layer, [neuron.neuron], self._OVERFETCH * self.n_tokens)
        return Explanation(text="fires on the tokens " + self._quoted(top))


class WeightOutExplainer(_WeightTokensExplainer):
    def explain(self, neuron: NeuronRecord) -> Explanation:
        top = self.weights.output_tokens(neuron.layer, [neuron.neuron], self._OVERFETCH * self.n_tokens)
        return Explanation(text="comes before and promotes the tokens " + self._quoted(top))
