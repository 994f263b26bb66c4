"""A loaded subject, and its neurons read and overwritten with forward pre-hooks on each layer's
MLP output projection (harness.subjects.neurons): recording, patching one neuron or a different
neuron per batch row, and the fidelity check of the hooked values."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from harness.errors import ConfigError, FidelityError
from harness.subjects.neurons import NeuronMap


class _StopForward(Exception):
    """Raised by a hook to skip the layers after the last one recorded."""


@dataclass
class Subject:
    name: str
    model: nn.Module
    tokenizer: Any
    neurons: NeuronMap
    weights_digest: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_layers(self, layers: list[int]) -> None:
        if not layers:
            raise ConfigError("no layers given: name at least one layer index")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"layers {list(layers)} repeat an index: name each layer once")
        bad = [layer for layer in layers if not 0 <= layer < self.neurons.n_layers]
        if bad:
            raise ConfigError(f"layer index {bad} out of range: subject {self.name} has layers "
                              f"0..{self.neurons.n_layers - 1}")

    def check_neurons(self, neurons: list[int]) -> None:
        bad = [n for n in neurons if not 0 <= n < self.neurons.n_neurons]
        if bad:
            raise ConfigError(f"neuron index {bad} out of range: subject {self.name} has neurons "
                              f"0..{self.neurons.n_neurons - 1} in each layer")

    def final_norm(self) -> nn.Module:
        """The norm between the last block and the unembedding (GPT-2 `ln_f`, else `norm`)."""
        base = self.model.base_model
        decoder = getattr(base, "language_model", base)  # Gemma 3 multimodal wraps the text model
        return decoder.ln_f if self.neurons.architecture == "gpt2" else decoder.norm

    @torch.no_grad()
    def record(self, input_ids: torch.Tensor, layers: list[int],
               on_layer: Callable[[int, torch.Tensor], None] | None = None) -> dict[int, torch.Tensor]:
        """Activations of every neuron of `layers`: {layer: [batch, tokens, n_neurons]}.
        Runs the model only up to the last requested layer. With `on_layer`, each layer's
        activations are handed to `on_layer(layer, acts)` as they are computed and not kept
        (memory stays at one layer's activations); the result is then empty."""
        self.check_layers(layers)
        out: dict[int, torch.Tensor] = {}
        last = max(layers)

        def make_hook(layer: int):
            def hook(_module, args):
                if on_layer is None:
                    out[layer] = args[0].detach()
                else:
                    on_layer(layer, args[0].detach())
                if layer == last:
                    raise _StopForward
            return hook

        handles = [self.neurons.out_proj(layer).register_forward_pre_hook(make_hook(layer)) for layer in layers]
        try:
            self.model.base_model(input_ids=input_ids.to(self.device))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return out

    @contextlib.contextmanager
    def patch(self, layer: int, neuron: int, values: torch.Tensor | float) -> Iterator[None]:
        """Within the block, neuron (layer, neuron) takes `values` (scalar or [batch, tokens])."""
        self.check_layers([layer])
        if not 0 <= neuron < self.neurons.n_neurons:
            raise ConfigError(f"neuron index {neuron} out of range 0..{self.neurons.n_neurons - 1}")

        def hook(_module, args):
            acts = args[0].clone()
            acts[..., neuron] = values
            return (acts, *args[1:])

        handle = self.neurons.out_proj(layer).register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def fidelity_check(subject: Subject, input_ids: torch.Tensor, layers: list[int], tolerance: float) -> float:
    """Compare hooked activations with a recomputation from each layer's own weights and MLP
    input, using the subject's configured activation function; raise naming the first layer
    that differs by more than `tolerance`. Returns the largest difference seen."""
    mlp_inputs: dict[int, torch.Tensor] = {}
    handles = [subject.neurons.mlp(layer).register_forward_pre_hook(
        lambda _m, args, layer=layer: mlp_inputs.__setitem__(layer, args[0].detach())) for layer in layers]
    try:
        hooked = subject.record(input_ids, layers)
    finally:
        for h in handles:
            h.remove()
    worst = 0.0
    with torch.no_grad():
        for layer in layers:
            diff = (subject.neurons.reference_activations(layer, mlp_inputs[layer]) - hooked[layer]).abs().max().item()
            if not diff <= tolerance:
                raise FidelityError(
                    f"layer {layer}: hooked activations differ from a recomputation with activation "
                    f"{subject.neurons.activation!r} by up to {diff:.3g} (tolerance {tolerance:g}); the "
                    "subject's configured activation function does not match what the model computes.")
            worst = max(worst, diff)
    return worst


@contextlib.contextmanager
def patch_rows(subject: Subject, patches: list[tuple[int, int, int, torch.Tensor]]) -> Iterator[None]:
    """Within the block, row `row` of the batch has neuron (layer, neuron) set to `values`
    ([tokens]) for each `(row, layer, neuron, values)` in `patches`: one forward pass patches a
    different neuron in every row. Rows not named run clean; a row may be named more than once."""
    by_layer: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for row, layer, neuron, values in patches:
        by_layer.setdefault(layer, []).append((row, neuron, values))
    if by_layer:
        subject.check_layers(sorted(by_layer))
        subject.check_neurons(sorted({n for _, _, n, _ in patches}))

    def make_hook(entries):
        rows = torch.tensor([r for r, _, _ in entries])
        cols = torch.tensor([n for _, n, _ in entries])
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32) for _, _, v in entries])

        def hook(_module, args):
            acts = args[0].clone()
            dev = acts.device
            positions = torch.arange(acts.shape[1], device=dev)
            acts[rows.to(dev)[:, None], positions[None, :], cols.to(dev)[:, None]] = values.to(dev, acts.dtype)
            return (acts, *args[1:])
        return hook

    handles = [subject.neurons.out_proj(layer).register_forward_pre_hook(make_hook(entries))
               for layer, entries in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
