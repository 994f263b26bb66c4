"""Where each architecture's MLP neurons are, and what they compute.

A neuron's activation is the value fed into the MLP's output projection:
- GPT-2: the GELU output fed to `mlp.c_proj`;
- Llama/Gemma gated MLPs: `act(gate_proj(x)) * up_proj(x)`, fed to `mlp.down_proj`.
Both are read and overwritten with a forward *pre*-hook on that output projection
(harness.subjects.hooks), so one mechanism serves every architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from harness.errors import ConfigError


# --- Activation functions, written out so hooked values can be checked against them ----------

def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's `gelu_new` (also Gemma's `gelu_pytorch_tanh`): the tanh approximation."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def silu(x: torch.Tensor) -> torch.Tensor:
    # torch's kernel, not x*sigmoid(x): the two differ by an ulp, 1.5e-5 at SmolLM2's largest activations.
    return torch.nn.functional.silu(x)


def gelu_torch_tanh(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's tanh-approximate GELU kernel (Gemma's `gelu_pytorch_tanh`)."""
    return torch.nn.functional.gelu(x, approximate="tanh")


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    """transformers' `gelu_fast`: the tanh approximation with the constant rounded, x² factored."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """`quick_gelu`: x·sigmoid(1.702x)."""
    return x * torch.sigmoid(1.702 * x)


# transformers' activation names → our explicit reference formula
REFERENCE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_torch_tanh,
    "silu": silu,
    "gelu_fast": gelu_fast,
    "quick_gelu": quick_gelu,
}


# --- Neuron maps ------------------------------------------------------------------------------

@dataclass(frozen=True)
class NeuronMap:
    """Per-architecture knowledge of where the MLP neurons are."""

    architecture: str  # "gpt2" or "gated"
    layers: list[nn.Module]  # the transformer blocks, in order
    activation: str  # transformers' name of the MLP activation function

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_neurons(self) -> int:
        return self.out_proj(0).weight.shape[0 if self.architecture == "gpt2" else 1]

    def mlp(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp

    def out_proj(self, layer: int) -> nn.Module:
        """The module whose input is the layer's neuron activations."""
        mlp = self.mlp(layer)
        return mlp.c_proj if self.architecture == "gpt2" else mlp.down_proj

    def reference_activations(self, layer: int, mlp_input: torch.Tensor) -> torch.Tensor:
        """Recompute the neurons of `layer` from its own weights and the MLP's input."""
        act = REFERENCE_ACTIVATIONS[self.activation]
        mlp = self.mlp(layer)
        if self.architecture == "gpt2":  # Conv1D: weight is [in, out]
            return act(mlp_input @ mlp.c_fc.weight + mlp.c_fc.bias)
        gate = mlp_input @ mlp.gate_proj.weight.T
        up = mlp_input @ mlp.up_proj.weight.T
        if mlp.gate_proj.bias is not None:
            gate, up = gate + mlp.gate_proj.bias, up + mlp.up_proj.bias
        return act(gate) * up

    # Weights in a common layout, for connection weights (baselines/connection_weights.py).

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        """The norm whose output is the MLP's input: GPT-2 `ln_2`, Llama `post_attention_layernorm`,
        Gemma 2/3 `pre_feedforward_layernorm` (their `post_attention_layernorm` norms the attention
        output before it joins the residual stream)."""
        block = self.layers[layer]
        if self.architecture == "gpt2":
            return block.ln_2
        if hasattr(block, "pre_feedforward_layernorm"):
            return block.pre_feedforward_layernorm
        return block.post_attention_layernorm

    def read_weights(self, layer: int) -> dict[str, torch.Tensor]:
        """The MLP's input projections as [d_model, n_neurons]: {"w": c_fc} (GPT-2) or
        {"gate": gate_proj, "up": up_proj} (gated)."""
        mlp = self.mlp(layer)
        if self.architecture == "gpt2":  # Conv1D: weight is [in, out]
            return {"w": mlp.c_fc.weight}
        return {"gate": mlp.gate_proj.weight.T, "up": mlp.up_proj.weight.T}  # Linear: [out, in]

    def write_weights(self, layer: int) -> torch.Tensor:
        """The MLP's output projection as [n_neurons, d_model]: row n is what neuron n adds to
        the residual stream per unit of activation."""
        weight = self.out_proj(layer).weight
        return weight if self.architecture == "gpt2" else weight.T


def norm_gain(norm: nn.Module) -> torch.Tensor:
    """The per-dimension gain a LayerNorm/RMSNorm applies after normalising: its weight, except
    Gemma's RMSNorm, which stores the offset from 1 and multiplies by `1 + weight`."""
    if type(norm).__name__.startswith("Gemma"):
        return 1.0 + norm.weight
    return norm.weight


def _checked(neuron_map: NeuronMap) -> NeuronMap:
    if neuron_map.activation not in REFERENCE_ACTIVATIONS:
        raise ConfigError(f"MLP activation {neuron_map.activation!r} has no reference formula; supported: "
                          f"{sorted(REFERENCE_ACTIVATIONS)}")
    return neuron_map


def neuron_map_for(model: nn.Module) -> NeuronMap:
    cfg = model.config
    if cfg.model_type == "gpt2":
        return _checked(NeuronMap("gpt2", list(model.transformer.h), cfg.activation_function))
    if cfg.model_type in {"llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "gemma3"}:
        decoder = model.model.language_model if hasattr(model.model, "language_model") else model.model
        act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
        return _checked(NeuronMap("gated", list(decoder.layers), act))
    raise ConfigError(f"no neuron map for model type {cfg.model_type!r}; supported: gpt2 and "
                      "Llama/Gemma-style gated MLPs")
