"""Connection weights: what an MLP neuron reads from and writes to, from the weights alone.

Exact to the definitions published with OpenAI's GPT-2 neuron datasets (GPT-2 Conv1D weights
are [in, out]; `g` is a norm's gain, layer biases and the norm's centring/scaling are left out):
- token → neuron (input weight):   `wte[t, :] @ diag(ln_2.g) @ c_fc.w[:, n]`;
- neuron → token (output weight):  `c_proj.w[n, :] @ diag(ln_f.g) @ wte[t, :]`;
- neuron → neuron, layers l1 < l2: `c_proj.w[n1, :] @ diag(ln_2.g of l2) @ c_fc.w[:, n2]`.

Gated MLPs (Llama, Gemma: activation `act(gate) * up`) use the analogue with the layer's pre-MLP
norm gain (`NeuronMap.pre_mlp_norm`), `gate_proj` and `up_proj` in place of `c_fc` (giving two
read weights, `gate` and `up`), `down_proj` in place of `c_proj`, the final norm gain and the
unembedding (`lm_head`, tied or not) in place of `ln_f` and `wte`. Gemma's RMSNorm gain is
`1 + weight` (`harness.subject.norm_gain`); its embedding scaling by √d is a positive constant
and is left out, like every other scale the rankings do not depend on.

Combining `gate` and `up` into one read weight: a source that adds `a` times its vector (a
token's embedding, an upstream neuron's output row) to the residual stream moves the neuron's
gate and up pre-activations by `a·gate` and `a·up`, which for large `a` drives the neuron
towards `relu(a·gate) · a·up` (SiLU and GELU are ≈ identity above 0 and ≈ 0 below). So:
- from a token (which enters with a > 0): `relu(gate) · up`, the token → neuron weight for gated
  MLPs. On SmolLM2's layer 0, its top-20 tokens share 48% with the 20 tokens that most
  activate the neuron when fed alone (mean over the 1536 neurons), against 46% for
  `gate · up`, 28% for `up` and 10% for `gate`;
- from an upstream neuron (whose activation has either sign): `gate · up`, the neuron → neuron
  weight for gated MLPs: the response `a²·gate·up` when the source fires with the sign that
  opens the gate.
`gate` and `up` are reported beside every combined weight.

Rankings: input and output tokens by the largest (signed) weight, what excites the neuron and
what it promotes; upstream and downstream neurons by the largest |weight|, excitatory or
inhibitory. Everything is vectorised: one matrix product per layer (per vocabulary chunk) over
all the requested neurons, keeping only a running top-k, so no vocab × neurons × layers tensor is
ever held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from harness.subject import Subject, norm_gain


@dataclass
class Top:
    """The k strongest connections of some neurons of one layer, strongest first.

    Row i describes neuron `neurons[i]`. `index` holds token ids or, for neuron connections,
    neuron indices within `layer`. `weight` is the (combined) connection weight; `gate` and
    `up` are the two read weights of a gated MLP it combines (None for GPT-2 and output tokens)."""

    neurons: list[int]
    index: torch.Tensor  # [n, k] int64
    weight: torch.Tensor  # [n, k]
    gate: torch.Tensor | None = None
    up: torch.Tensor | None = None
    layer: torch.Tensor | None = None  # [n, k] neuron connections: the other neuron's layer


# A block of candidate connections: (their ids [c], {"weight": [n, c], and for a gated MLP's
# read weights also "gate" and "up": [n, c]}).
Block = tuple[torch.Tensor, dict[str, torch.Tensor]]


def _combined(parts: dict[str, torch.Tensor], token: bool) -> dict[str, torch.Tensor]:
    """Weights {"w"} (one weight) or {"gate", "up"} (a gated MLP's read weights) with their
    combined "weight": relu(gate)·up from a token, gate·up from a neuron (module docstring)."""
    if "w" in parts:
        return {"weight": parts["w"]}
    gate = parts["gate"].clamp(min=0) if token else parts["gate"]
    return {"weight": gate * parts["up"], **parts}


def _running_top(blocks: Iterable[Block], n: int, k: int, by_magnitude: bool) -> dict[str, torch.Tensor]:
    """Top-k by "weight" (or |weight|) over all blocks, merging each block's own top-k into the
    running one, so only [n, 2k] candidates are held beside the current block."""
    best: dict[str, torch.Tensor] | None = None
    for ids, weights in blocks:
        key = weights["weight"].abs() if by_magnitude else weights["weight"]
        key, pos = key.topk(min(k, key.shape[1]), dim=1)
        cand = {"key": key, "id": ids[pos], **{name: w.gather(1, pos) for name, w in weights.items()}}
        if best is not None:  # merge with the running top-k
            merged = {name: torch.cat([best[name], t], 1) for name, t in cand.items()}
            key, pos = merged["key"].topk(min(k, merged["key"].shape[1]), dim=1)
            cand = {name: t.gather(1, pos) for name, t in merged.items()}
        best = cand
    if best is None:  # no candidates at all (upstream of layer 0, downstream of the last layer)
        empty = torch.zeros((n, 0))
        return {"id": empty.long(), "weight": empty, "gate": empty, "up": empty}
    return best


class ConnectionWeights:
    """Connection weights of a subject's MLP neurons. Vocabulary: the tokenizer's tokens (an
    embedding may have padding rows beyond them); `chunk` bounds the tokens per matrix product."""

    def __init__(self, subject: Subject, chunk: int = 8192):
        self.subject = subject
        self.neurons = subject.neurons
        self.gated = subject.neurons.architecture == "gated"
        model = subject.model
        n_vocab = min(len(subject.tokenizer), model.get_input_embeddings().weight.shape[0])
        self.embed = model.get_input_embeddings().weight[:n_vocab].detach()
        self.unembed = model.get_output_embeddings().weight[:n_vocab].detach()
        self.final_gain = norm_gain(subject.final_norm()).detach()
        self.chunk = chunk

    # --- The per-layer matrices every weight is a product of ----------------------------------

    def read(self, layer: int, neurons: list[int] | None = None) -> dict[str, torch.Tensor]:
        """diag(g of the layer's pre-MLP norm) @ the input projection(s): [d_model, n]."""
        gain = norm_gain(self.neurons.pre_mlp_norm(layer)).detach()
        cols = slice(None) if neurons is None else neurons
        return {name: gain[:, None] * w.detach()[:, cols] for name, w in self.neurons.read_weights(layer).items()}

    def write(self, layer: int, neurons: list[int] | None = None) -> torch.Tensor:
        """The output projection's rows: [n, d_model]."""
        rows = slice(None) if neurons is None else neurons
        return self.neurons.write_weights(layer).detach()[rows]

    # --- Tokens -------------------------------------------------------------------------------

    def _vocab_blocks(self, rows: dict[str, torch.Tensor], vocab: torch.Tensor) -> Iterator[Block]:
        """rows {name: [n, d]} against every vocabulary chunk: {name: [n, chunk]} and their weight."""
        for lo in range(0, len(vocab), self.chunk):
            part = vocab[lo:lo + self.chunk]
            parts = {name: r @ part.T for name, r in rows.items()}
            yield torch.arange(lo, lo + len(part)), _combined(parts, token=True)

    def _check(self, layer: int, neurons: list[int] | None) -> list[int]:
        self.subject.check_layers([layer])
        if neurons is None:
            return list(range(self.neurons.n_neurons))
        self.subject.check_neurons(neurons)
        return list(neurons)

    @torch.no_grad()
    def input_tokens(self, layer: int, neurons: list[int] | None = None, k: int = 10) -> Top:
        """Tokens with the largest input weight into each neuron (None: every neuron of the layer)."""
        neurons = self._check(layer, neurons)
        rows = {name: r.T for name, r in self.read(layer, neurons).items()}
        best = _running_top(self._vocab_blocks(rows, self.embed), len(neurons), k, False)
        return self._top(neurons, best)

    @torch.no_grad()
    def output_tokens(self, layer: int, neurons: list[int] | None = None, k: int = 10) -> Top:
        """Tokens each neuron's output promotes most (largest output weight)."""
        neurons = self._check(layer, neurons)
        rows = {"w": self.write(layer, neurons) * self.final_gain}
        best = _running_top(self._vocab_blocks(rows, self.unembed), len(neurons), k, False)
        return self._top(neurons, best)

    # --- Neurons ------------------------------------------------------------------------------

    @torch.no_grad()
    def downstream(self, layer: int, neurons: list[int] | None = None, k: int = 10) -> Top:
        """Neurons of later layers with the largest |weight| from each neuron."""
        neurons = self._check(layer, neurons)
        src = self.write(layer, neurons)
        n_per = self.neurons.n_neurons
        blocks = ((torch.arange(l2 * n_per, (l2 + 1) * n_per),
                   _combined({name: src @ r for name, r in self.read(l2).items()}, token=False))
                  for l2 in range(layer + 1, self.neurons.n_layers))
        return self._top(neurons, _running_top(blocks, len(neurons), k, True), n_per)

    @torch.no_grad()
    def upstream(self, layer: int, neurons: list[int] | None = None, k: int = 10) -> Top:
        """Neurons of earlier layers with the largest |weight| into each neuron."""
        neurons = self._check(layer, neurons)
        dst = self.read(layer, neurons)
        n_per = self.neurons.n_neurons
        blocks = ((torch.arange(l1 * n_per, (l1 + 1) * n_per),
                   _combined({name: (self.write(l1) @ r).T for name, r in dst.items()}, token=False))
                  for l1 in range(layer))
        return self._top(neurons, _running_top(blocks, len(neurons), k, True), n_per)

    def _top(self, neurons: list[int], best: dict[str, torch.Tensor], n_per_layer: int | None = None) -> Top:
        gated = {"gate": best["gate"], "up": best["up"]} if self.gated and "gate" in best else {}
        if n_per_layer is None:
            return Top(neurons, best["id"], best["weight"], **gated)
        return Top(neurons, best["id"] % n_per_layer, best["weight"], **gated, layer=best["id"] // n_per_layer)
