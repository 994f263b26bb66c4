"""Simulators: predict a neuron's activation on each token of held-out records from an
explanation. Each is a component (harness/components.py): a class with `simulate(explanation,
records)`, returning one list of predictions (on the 0–10 scale) per record, or None for a record
the simulator failed on (scorers leave such windows out and never treat them as zeros). The
simulators live in harness/simulators/, one module per concern; this module is their face."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from omegaconf import OmegaConf

from harness.components import RunContext, build
from harness.records import ActivationRecord
from harness.simulators.chat import ChatLogprobsSimulator, JsonSimulator
from harness.simulators.lexical import OracleQuantizedSimulator, TokenMatchSimulator
from harness.simulators.readout import ValueTokens, expected_values

__all__ = ["AllAtOnceSimulator", "ChatLogprobsSimulator", "JsonSimulator", "OneAtATimeSimulator",
           "OracleQuantizedSimulator", "Simulator", "TokenMatchSimulator", "ValueTokens", "expected_values",
           "make_simulator"]

_TORCH = {"AllAtOnceSimulator": "harness.simulators.local", "OneAtATimeSimulator": "harness.simulators.local"}


def __getattr__(name: str) -> Any:
    """The in-process simulators import torch, so they are imported on first use only (PEP 562)."""
    if name in _TORCH:
        return getattr(importlib.import_module(_TORCH[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Simulator(Protocol):
    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float] | None]: ...


def make_simulator(cfg: Any, ledger=None) -> Simulator:
    """The simulator `cfg` names (its `kind` and parameters, checked and defaulted by its params class
    in harness/components.py), handed the run's `ledger` where it makes model calls, so a cell's cost
    counts what simulating cost as well as explaining."""
    params = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return build("simulator", params.pop("kind", None), params, RunContext(ledger=ledger))
