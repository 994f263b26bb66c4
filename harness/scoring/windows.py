"""Window-level labels for the scorers that judge whole windows (detection, fuzzing, embedding).

A window is *active* when its maximum true activation is strictly above a threshold `t` named as
the threshold scorer names its binarisations (harness/scoring/threshold.py):
- `max<P>`: `t = (P/100) · neuron.max_activation`, the neuron's corpus maximum (needs no fitting);
- `q<P>`: `t` = the P-th percentile of the neuron's pooled per-token **calibration** activations
  (fitted on calibration, never on test).
`max50`, the default, matches the threshold scorer's headline: top windows of a set are then almost
all active and random windows almost all inactive, the task delphi's detection scorer poses.
"""

from __future__ import annotations

import re

import numpy as np

from harness.errors import ConfigError
from harness.records import ActivationRecord, NeuronRecord
from harness.scoring.threshold import thresholds

_ACTIVE = re.compile(r"^(max|q)(\d{1,2}(?:_\d{1,3})?|100)$")


def active_fraction(active: str) -> tuple[str, float]:
    """"max50" → ("max", 0.5), "q99_9" → ("q", 0.999); a ConfigError for any other name."""
    m = _ACTIVE.fullmatch(active) if isinstance(active, str) else None
    if m is None:
        raise ConfigError(f"active={active!r} must name a threshold as max<P> or q<P> (e.g. max50, q99, q99_9)")
    p = round(float(m.group(2).replace("_", ".")) / 100, 6)
    if not 0 < p <= 1:
        raise ConfigError(f"active={active!r}: P must lie in (0, 100]")
    return m.group(1), p


def threshold_value(neuron: NeuronRecord, active: str = "max50") -> float:
    """The activation threshold `active` names for this neuron (NaN: a q-threshold without calibration)."""
    family, p = active_fraction(active)
    values = thresholds(neuron, [p] if family == "max" else [], [p] if family == "q" else [])
    return next(iter(values.values()))


def window_labels(neuron: NeuronRecord, records: list[ActivationRecord], active: str = "max50") -> np.ndarray:
    """One boolean per record: its maximum activation is strictly above the threshold `active` names.
    All False when the threshold is undefined (NaN)."""
    t = threshold_value(neuron, active)
    return np.asarray([bool(r.activations) and max(r.activations) > t for r in records], dtype=bool)
