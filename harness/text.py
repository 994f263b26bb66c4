"""Text from outside (entries, model answers, file names from a pull request) is data: one place
that says which strings are acceptable, and how each is made safe for where it is shown.

- `text_problem`: why a string may not be stored (a lone surrogate, which no UTF-8 writer can
  encode; a control character; a bidirectional override or isolate, which makes a page show
  other text than it holds), or None.
- `for_terminal`: any string, printable on a terminal (escape codes and other controls shown as
  `\\xNN` / `\\uNNNN`, never interpreted).
- `for_markdown`: any string, as plain text inside a Markdown table cell (no HTML, links, images,
  emphasis or table breaks).
- `canonical_json`: the one serialisation used to compare and fingerprint JSON values, so `30`
  and `30.0`, or key order, never make two equal values differ (or two different ones equal).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

# Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), and the
# invisible marks that reorder text (U+200E, U+200F, U+061C).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str, allow_newlines: bool = False, allow_controls: bool = False) -> str | None:
    """Why `text` may not be stored as data, or None. A tab always passes, line breaks with
    `allow_newlines`, and every other control character only with `allow_controls`: for free text
    that may quote a model's tokens (byte tokens such as U+001A are real tokens), escaped wherever
    it is shown."""
    allowed = {"\t", "\n", "\r"} if allow_newlines else {"\t"}
    for ch in text:
        if _SURROGATE.match(ch):
            return f"a lone surrogate (U+{ord(ch):04X}) that cannot be written as UTF-8"
        if ch in BIDI_CONTROLS:
            return f"a bidirectional control character (U+{ord(ch):04X}) that reorders displayed text"
        if not allow_controls and ch not in allowed and unicodedata.category(ch) == "Cc":
            return f"a control character (U+{ord(ch):04X})"
    return None


def for_terminal(text: str) -> str:
    """`text` with every control, surrogate and bidi character written as an escape, so printing
    it cannot move the cursor, recolour, retitle or reorder the terminal."""
    out = []
    for ch in str(text):
        if ch in BIDI_CONTROLS or _SURROGATE.match(ch) or unicodedata.category(ch) in ("Cc", "Cf"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def for_markdown(text: Any, max_chars: int = 200) -> str:
    """Plain text safe inside a Markdown table cell: controls escaped as for a terminal, line breaks
    folded, `&`, `<` and `>` written as HTML entities and every other Markdown metacharacter
    backslash-escaped (no HTML, links, images, emphasis, headings or cell breaks)."""
    s = re.sub(r"[\r\n]+", " ", "" if text is None else str(text))
    s = for_terminal(s)[:max_chars]
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", s)


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, and every number written one way (an integral float as an integer),
    so equal values serialise identically and different ones never do."""
    return json.dumps(_canonical_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _canonical_numbers(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical_numbers(v) for v in value]
    return value
