"""The value readout and the prompt shared by the logprob simulators (`all_at_once`,
`one_at_a_time`, their served form, and `chat_logprobs`).

They read the simulator model's next-token distribution over the activation values "0".."10" and
predict the expected value Σ v·p(v) (Bills et al. 2023). The prompt is our own: a short
instruction, few-shot neurons whose activations are revealed as `token<TAB>value` lines, then the
explanation and the held-out window as `token<TAB>unknown` lines. The value of token i would be
written right after its tab, so the distribution is read from the logits at the tab's position.

Values that are more than one token. Where every value "0".."10" is one token (GPT-4's
tokenizer), p(v) is that token's probability, as in Bills et al. Where a value is two tokens
(SmolLM2 writes "10" as "1","0"), each value's mass is the probability of writing exactly that
value and then ending it: p(10) = P("1" | …tab) · P("0" | …tab "1"), and the one-token value that
is its first token is read as p(1) = P("1" | …tab) · P(newline | …tab "1"). "1" followed by any
other token ("11".."19", "1.", …) writes no value and gets no mass (with SmolLM2 on frozen-set
windows: a median 27% of P("1"), 10% of the value tokens' mass; the README gives the measurement).
Other one-token values are read as P(v), as in Bills et al.: no value starts with them, so their
continuation cannot make another value. The masses are then renormalised over the 11 values. The
second factor needs the model's prediction after an extra "1" at every tab."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.errors import ConfigError
from harness.formatting import FEW_SHOT_NEURONS, escaped, normalized
from harness.records import ActivationRecord

VALUES = tuple(range(11))
_INSTRUCTION = (
    "Each neuron of a language model reads a text one token at a time and takes an activation at every "
    "token, written on a scale from 0 (silent) to 10 (its strongest response). For each neuron below there "
    "is a description of what it responds to, then a text written one token per line as token<TAB>activation. "
    "Most tokens have activation 0. Where the activation is written as unknown, it follows from the "
    "description.")
# The few-shot neurons (values revealed) are harness.formatting.FEW_SHOT_NEURONS.


def expected_values(masses: np.ndarray) -> np.ndarray:
    """(..., 11) unnormalised probabilities of the values 0..10 → their expected value, after
    renormalising over the 11 values."""
    masses = np.asarray(masses, dtype=np.float64)
    return (masses * np.arange(11)).sum(-1) / masses.sum(-1)


@dataclass(frozen=True)
class ValueTokens:
    """How the values 0..10 are written in tokens: `first[v]` is the first token of value v, and
    `second[v]` its second token (None for one-token values). `continuations` are the distinct first
    tokens of two-token values (SmolLM2: just "1"), each needing one extra readout per position."""

    first: tuple[int, ...]
    second: tuple[int | None, ...]
    tab: int
    newline: int

    @property
    def continuations(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(f for f, s in zip(self.first, self.second) if s is not None))

    @classmethod
    def of(cls, tokenizer) -> "ValueTokens":
        enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        tab, newline = enc("\t"), enc("\n")
        if len(tab) != 1 or len(newline) != 1:
            raise ConfigError("simulator tokenizer must write tab and newline as single tokens")
        first, second = [], []
        for v in VALUES:
            ids = enc(f"\t{v}\n")
            if ids[0] != tab[0] or ids[-1] != newline[0] or not 1 <= len(ids) - 2 <= 2:
                raise ConfigError(f"simulator tokenizer writes the value {v} as {ids}; only one- or two-token "
                                  "values between a tab and a newline are supported")
            first.append(ids[1])
            second.append(ids[2] if len(ids) == 4 else None)
        return cls(tuple(first), tuple(second), tab[0], newline[0])

    def masses(self, first_logprobs: np.ndarray, cont_logprobs: dict[int, np.ndarray]) -> np.ndarray:
        """(n, vocab) log-probabilities at the tab positions, and for each continuation token c its
        (n, vocab) log-probabilities after "tab c" → (n, 11) value masses, each the probability of
        writing exactly that value (see the module note)."""
        out = np.exp(first_logprobs[:, list(self.first)])
        for v, (f, s) in enumerate(zip(self.first, self.second)):
            if s is not None:  # a two-token value: its first token, then its second
                out[:, v] *= np.exp(cont_logprobs[f][:, s])
            elif f in cont_logprobs:  # a prefix of a two-token value: the value ends after it
                out[:, v] *= np.exp(cont_logprobs[f][:, self.newline])
        return out


def check_ten(ten: str) -> str:
    """How "10" is written by a model read through its top-k logprobs as text."""
    if ten not in ("split", "token"):
        raise ConfigError(f"ten must be split (\"10\" is \"1\",\"0\") or token (one token); got {ten!r}")
    return ten


def top_k_masses(top: dict[str, float], ten: str, after_one: dict[str, float] | None = None) -> np.ndarray:
    """One slot's 11 value masses from the top-k log-probabilities `top` of the token after its tab;
    a value token outside the top-k gets no mass. With `ten: split`, p(10) and p(1) are read as in
    the module note from `after_one`, the top-k after "tab 1" (None where it was not read: p(10) is 0
    and p(1) is P("1"))."""
    m = np.zeros(11)
    for v in VALUES:
        if str(v) in top:
            m[v] = math.exp(top[str(v)])
    if ten == "split":
        m[10] = 0.0
        if after_one is not None:
            m[10] = m[1] * math.exp(after_one["0"]) if "0" in after_one else 0.0
            m[1] = m[1] * math.exp(after_one["\n"]) if "\n" in after_one else 0.0
    return m


# The prompt as text segments; each "\t" and "\n" segment is one token (ValueTokens.of checks), so
# the ids are the segments' encodings concatenated and every value slot's position is exact.

def shots_segments() -> list[str]:
    """The instruction and few-shot neurons with revealed values: the same for every explanation."""
    segs = [_INSTRUCTION + "\n\n"]
    for k, (record, expl) in enumerate(FEW_SHOT_NEURONS):
        segs.append(f"Neuron {k + 1}\nDescription: {expl.strip()}\n<start>\n")
        for tok, value in zip(record.tokens, normalized([record])[0]):
            segs += [escaped(tok), "\t", str(value), "\n"]
        segs.append("<end>\n\n")
    return segs


def explanation_segment(explanation: str) -> str:
    return f"Neuron {len(FEW_SHOT_NEURONS) + 1}\nDescription: {explanation.strip()}\n<start>\n"


def window_segments(record: ActivationRecord) -> tuple[list[str], list[int]]:
    """The held-out window as `token<TAB>unknown` lines, and the index of each tab segment."""
    segs, tabs = [], []
    for tok in record.tokens:
        tabs.append(len(segs) + 1)
        segs += [escaped(tok), "\t", "unknown", "\n"]
    return segs + ["<end>"], tabs
