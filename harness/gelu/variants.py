"""The GELU variants the check swaps in, and the hooks it needs: swapping a subject's MLP
activation, and recording each layer's pre-activation beside its activations."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harness.components import GELU_VARIANTS as VARIANTS
from harness.errors import ConfigError
from harness.subject import Subject, gelu_fast, gelu_tanh, quick_gelu


@dataclass(frozen=True)
class Variant:
    name: str  # transformers' activation name, so a subject's own activation is one of these
    fn: Callable[[torch.Tensor], torch.Tensor]
    formula: str


def _gelu_pytorch_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# Each computes exactly what transformers' ACT2FN entry of the same name computes (bit for bit;
# tests check this), so swapping in the subject's own activation changes nothing. Each is the target
# of the `gelu_variant` component of its name (harness/components.py): VARIANTS, by name.
GELU = Variant("gelu", F.gelu, "exact GELU x·Φ(x) = 0.5x(1+erf(x/√2)) (torch.nn.functional.gelu)")
GELU_NEW = Variant("gelu_new", gelu_tanh, "tanh approximation, GPT-2's own `gelu_new`: "
                   "0.5x(1+tanh(√(2/π)(x+0.044715x³)))")
GELU_PYTORCH_TANH = Variant("gelu_pytorch_tanh", _gelu_pytorch_tanh, "PyTorch's tanh GELU, "
                            "torch.nn.functional.gelu(x, approximate='tanh') (Gemma's `gelu_pytorch_tanh`)")
GELU_FAST = Variant("gelu_fast", gelu_fast, "the \"fast\" form 0.5x(1+tanh(0.7978845608·x(1+0.044715x²)))")
QUICK_GELU = Variant("quick_gelu", quick_gelu, "x·sigmoid(1.702x)")


def get_variant(name: str) -> Variant:
    """The variant of that name; an unknown one is the group's ConfigError, naming the known ones."""
    return VARIANTS[name]


class _Activation(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


ACT_ATTR = {"gpt2": "act", "gated": "act_fn"}  # the MLP's activation module


def _act_attr(subject: Subject) -> str:
    attr = ACT_ATTR[subject.neurons.architecture]
    if not all(isinstance(getattr(subject.neurons.mlp(i), attr, None), nn.Module)
               for i in range(subject.neurons.n_layers)):
        raise ConfigError(f"subject {subject.name}: its MLPs have no activation module `{attr}`, so a "
                          "variant cannot be swapped in; the GELU check supports GPT-2 and Gemma-style MLPs.")
    return attr


@contextlib.contextmanager
def swap_activation(subject: Subject, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block every MLP of the subject computes `fn` instead of its own activation."""
    attr = _act_attr(subject)
    mlps = [subject.neurons.mlp(i) for i in range(subject.neurons.n_layers)]
    originals = [getattr(mlp, attr) for mlp in mlps]
    try:
        for mlp in mlps:
            setattr(mlp, attr, _Activation(fn))
        yield
    finally:
        for mlp, module in zip(mlps, originals):
            setattr(mlp, attr, module)


def record_with_preactivations(subject: Subject, input_ids: torch.Tensor, layers: list[int]):
    """`Subject.record` plus each layer's pre-activation (the activation module's input: GPT-2's
    `c_fc` output, a gated MLP's `gate_proj` output) and, for gated MLPs, the `up_proj` output.
    Returns (acts, pre, up) as {layer: [batch, tokens, n_neurons]}; `up` is empty for GPT-2."""
    attr = _act_attr(subject)
    pre: dict[int, torch.Tensor] = {}
    up: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        mlp = subject.neurons.mlp(layer)
        handles.append(getattr(mlp, attr).register_forward_pre_hook(
            lambda _m, args, layer=layer: pre.__setitem__(layer, args[0].detach())))
        if subject.neurons.architecture == "gated":
            handles.append(mlp.up_proj.register_forward_hook(
                lambda _m, _args, out, layer=layer: up.__setitem__(layer, out.detach())))
    try:
        acts = subject.record(input_ids, layers)
    finally:
        for h in handles:
            h.remove()
    return acts, pre, up


def local_activations(subject: Subject, fn: Callable, pre: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor:
    """The layer's neurons with `fn` applied to the same pre-activation."""
    return fn(pre) if subject.neurons.architecture == "gpt2" else fn(pre) * up

