"""Simulators: predict a neuron's activation on each token of held-out records from an
explanation. A registry from config name to a class with `simulate(explanation, records)`,
returning one list of predictions (on the 0–10 scale) per record, or None for a record the
simulator failed on (scorers leave such windows out and never treat them as zeros). The
simulators live in harness/simulators/, one module per concern."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Protocol

from omegaconf import OmegaConf

from harness.records import ActivationRecord
from harness.registry import Registry
from harness.simulators.chat import ChatLogprobsSimulator, JsonSimulator
from harness.simulators.readout import ValueTokens, expected_values
from harness.simulators.rules import OracleQuantizedSimulator, TokenMatchSimulator

__all__ = ["SIMULATORS", "AllAtOnceSimulator", "ChatLogprobsSimulator", "JsonSimulator", "OneAtATimeSimulator",
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


SIMULATORS = Registry("simulator kind", {"token_match": "harness.simulators.rules:TokenMatchSimulator",
                                         "oracle_quantized": "harness.simulators.rules:OracleQuantizedSimulator",
                                         "all_at_once": "harness.simulators.local:AllAtOnceSimulator",
                                         "one_at_a_time": "harness.simulators.local:OneAtATimeSimulator",
                                         "json": "harness.simulators.chat:JsonSimulator",
                                         "chat_logprobs": "harness.simulators.chat:ChatLogprobsSimulator"})


def make_simulator(cfg: Any, ledger=None) -> Simulator:
    """The simulator `cfg` names, handed the run's `ledger` where it makes model calls (those that
    take one), so a cell's cost counts what simulating cost as well as explaining."""
    params = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    cls = SIMULATORS[params.pop("kind")]
    if ledger is not None and "ledger" in inspect.signature(cls).parameters:
        params["ledger"] = ledger
    return cls(**params)
