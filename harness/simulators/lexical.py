"""Simulators without a model: a rule that reads the explanation (`token_match`) and the ceiling
control that reads the true activations (`oracle_quantized`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from harness.formatting import normalized
from harness.records import ActivationRecord

_STOPWORDS = {"the", "and", "for", "with", "that", "this", "token", "tokens", "word", "words", "like",
              "fires", "on", "of", "in", "a", "an", "to", "or", "is", "are", "mentions", "nothing", "particular"}


@dataclass
class TokenMatchSimulator:
    """No LLM: predict `high` on tokens the explanation names, else 0. Named tokens are the
    quoted strings in the explanation if it has any, otherwise its non-stopword words."""

    high: float = 10.0
    stopwords: set[str] = field(default_factory=lambda: set(_STOPWORDS))

    def named_tokens(self, explanation: str) -> set[str]:
        quoted = re.findall(r'"([^"]+)"', explanation)
        words = quoted or [w for w in re.findall(r"[\w']+", explanation) if w.lower() not in self.stopwords]
        return {w.strip().lower() for w in words if w.strip()}

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float]]:
        named = self.named_tokens(explanation)
        return [[self.high if t.strip().lower() in named else 0.0 for t in r.tokens] for r in records]


@dataclass
class OracleQuantizedSimulator:
    """The ceiling control: ignores the explanation and returns the true activations quantised to
    the 0–10 scale simulators use (Bills et al.'s floor(10·relu(a)/max), max over the records
    given). What it loses is what the scale alone costs under each scoring rule."""

    reads_explanation = False  # a control: never a leaderboard entry

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float]]:
        return [[float(v) for v in row] for row in normalized(records)]
