"""What a configuration value may be: small named predicates with the phrase an error quotes
("batch_size=0 must be a positive integer"). Component parameters (harness/components.py) and the
run-level options (harness/validation.py) share them."""

from __future__ import annotations

import math
import re
from typing import Any, Callable

Rule = tuple[Callable[[Any], bool], str]


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return (is_int(x) or isinstance(x, float)) and math.isfinite(x)


def one_of(*choices: Any) -> Rule:
    return (lambda x: isinstance(x, str) and x in choices, "one of " + ", ".join(map(str, choices)))


def or_null(rule: Rule) -> Rule:
    return (lambda x: x is None or rule[0](x), f"{rule[1]} or null")


INT: Rule = (is_int, "an integer")
INT_OR_NULL: Rule = or_null(INT)
INT_LIST_OR_NULL: Rule = or_null((lambda x: isinstance(x, list) and all(map(is_int, x)), "a list of integers"))
ZERO_OR_ONE: Rule = (lambda x: is_int(x) and x in (0, 1), "0 or 1")
COUNT: Rule = (lambda x: is_int(x) and x >= 1, "a positive integer")
COUNT_OR_NULL: Rule = or_null(COUNT)
NON_NEGATIVE_INT: Rule = (lambda x: is_int(x) and x >= 0, "an integer >= 0")
POSITIVE: Rule = (lambda x: is_number(x) and x > 0, "a number > 0")
POSITIVE_OR_NULL: Rule = or_null(POSITIVE)
NON_NEGATIVE: Rule = (lambda x: is_number(x) and x >= 0, "a number >= 0")
FRACTION: Rule = (lambda x: is_number(x) and 0 < x <= 1, "a number in (0, 1]")
UNIT_INTERVAL: Rule = (lambda x: is_number(x) and 0 <= x <= 1, "a number in [0, 1]")
NUMBER: Rule = (is_number, "a finite number")
BOOL: Rule = (lambda x: isinstance(x, bool), "true or false")
TEXT: Rule = (lambda x: isinstance(x, str) and 0 < len(x) <= 500, "a non-empty string")
TEXT_OR_NULL: Rule = or_null(TEXT)
STRING: Rule = (lambda x: isinstance(x, str) and len(x) > 0, "a non-empty string")  # TEXT with no length cap
SHORT_LIST: Rule = (lambda x: isinstance(x, list) and 1 <= len(x) <= 16, "a list of 1 to 16 values")  # items: own rule
LIST: Rule = (lambda x: isinstance(x, list) and len(x) >= 1, "a non-empty list")  # items: own rule
MAPPING: Rule = (lambda x: isinstance(x, dict), "a mapping")
MAPPING_OR_NULL: Rule = or_null(MAPPING)
SHA256: Rule = (lambda x: isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) is not None,
                "a sha256 digest (64 lowercase hex digits)")
