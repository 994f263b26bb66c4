"""How activation records are written into prompts: Bills et al.'s 0–10 scale, `token<TAB>value`
lines, text with the strongest tokens in [[double brackets]], token escaping, and the few-shot
neurons that explainer and simulator prompts share. Explainers (harness/explain.py) and simulators
(harness/simulators/) both read from here. Also the one number formatter of every table ("n/a"
for an undefined value)."""

from __future__ import annotations

import math
from typing import Any, Callable

from harness.records import ActivationRecord


def normalized(records: list[ActivationRecord]) -> list[list[int]]:
    """Bills et al.'s prompt scale: min(10, floor(10 * relu(a) / max_a)), max over the records shown."""
    max_a = max((max(r.activations) for r in records), default=0.0)
    if max_a <= 0:
        return [[0] * len(r.activations) for r in records]
    return [[min(10, math.floor(10 * max(a, 0.0) / max_a)) for a in r.activations] for r in records]


def token_lines(records: list[ActivationRecord]) -> str:
    blocks = []
    for record, acts in zip(records, normalized(records)):
        lines = "\n".join(f"{tok}\t{a}" for tok, a in zip(record.tokens, acts))
        blocks.append(f"<start>\n{lines}\n<end>")
    return "\n\n".join(blocks)


def highlighted_text(record: ActivationRecord, threshold: float) -> str:
    """The window as text with tokens at or above `threshold` in [[double brackets]]."""
    return "".join(f"[[{t}]]" if a >= threshold and t.strip() else t for t, a in zip(record.tokens, record.activations))


def escaped(token: str) -> str:
    """A token as it appears on its prompt line: newlines and tabs escaped so lines stay lines."""
    return token.replace("\n", "\\n").replace("\t", "\\t")


# Few-shot neurons written for NeuronBench (not from any other project): a window and its
# explanation. Explainer prompts show the first two (`EXPLAINER_SHOTS`), simulator prompts all three.
FEW_SHOT_NEURONS: list[tuple[ActivationRecord, str]] = [
    (ActivationRecord(tokens=["We", " met", " on", " Tuesday", " and", " again", " on", " Friday", "."],
                      activations=[0, 0, 0.4, 6.1, 0, 0, 0.3, 5.2, 0]),
     "names of weekdays, especially after \"on\""),
    (ActivationRecord(tokens=["The", " result", " (", "see", " Table", " 2", ")", " was", " clear", "."],
                      activations=[0, 0, 0.2, 0, 0, 0.5, 3.9, 0, 0, 0]),
     "closing parentheses, particularly ones that end a citation or cross-reference"),
    (ActivationRecord(tokens=["She", " poured", " the", " coffee", " into", " a", " mug", " and", " sipped", " the",
                              " hot", " tea", "."],
                      activations=[0, 0.3, 0, 9.0, 0, 0, 2.1, 0, 2.8, 0, 1.2, 7.5, 0]),
     "hot drinks such as coffee and tea, weakly on words about drinking"),
]
EXPLAINER_SHOTS = FEW_SHOT_NEURONS[:2]


# --- Numbers in tables ------------------------------------------------------------------------

def undefined(x: Any) -> bool:
    """None or NaN: a value no score exists for."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: Any, spec: str | Callable[[Any], str] = ".3f") -> str:
    """A number for a table: "n/a" if it is undefined, else formatted by `spec`, a format spec or a
    function of the number that gives one."""
    if undefined(x):
        return "n/a"
    return format(x, spec(x) if callable(spec) else spec)
