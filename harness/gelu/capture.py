"""The check's two passes over the windows: the model's own run, for the neuron choice (pass 1), then
per batch the own run with pre-activations and each variant, locally and propagated (pass 2)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from harness.gelu.histogram import AbsHistogram
from harness.gelu.variants import Variant, local_activations, record_with_preactivations, swap_activation
from harness.sets.windows import Windows, forward_batches
from harness.subject import Subject


def own_window_maxima(subject: Subject, win: Windows, layers: list[int], batch_size: int) -> torch.Tensor:
    """Pass 1: each window's maximum of every neuron in the model's own run, [W, len(layers) * n]."""
    out = torch.zeros((len(win.ids), len(layers) * subject.neurons.n_neurons))
    for sl, acts in forward_batches(subject, win.ids, layers, batch_size, "pass 1: own activation"):
        out[sl] = acts.amax(1)
    return out


def _batches(n: int, size: int, desc: str):
    with tqdm(total=n, desc=desc, unit="window") as bar:
        for lo in range(0, n, size):
            yield slice(lo, min(lo + size, n))
            bar.update(min(size, n - lo))


class VariantRuns:
    """Pass 2's results: |activation| of the own run (`scale`), |Δ| per variant applied locally and
    propagated, each variant's window maxima [W, L·n], and every run's activations of the chosen
    neurons [W, T, chosen] ("own" and each variant's name)."""

    def __init__(self, subject: Subject, ids: torch.Tensor, layers: list[int], variants: list[Variant],
                 chosen: list[int], histogram: dict):
        self.subject, self.ids, self.layers, self.variants = subject, ids, layers, variants
        self.chosen = torch.tensor(chosen)
        W, T = ids.shape
        L = len(layers)
        self.scale = AbsHistogram(L, **histogram)
        self.local = {v.name: AbsHistogram(L, **histogram) for v in variants}
        self.prop = {v.name: AbsHistogram(L, **histogram) for v in variants}
        self.var_max = {v.name: torch.zeros((W, L * subject.neurons.n_neurons)) for v in variants}
        self.chosen_acts = {name: torch.zeros((W, T, len(chosen))) for name in ["own", *self.local]}

    def run(self, batch_size: int) -> VariantRuns:
        for sl in _batches(len(self.ids), batch_size, f"pass 2: own + {len(self.variants)} variants"):
            self._batch(self.ids[sl], sl)
        return self

    def _batch(self, ids: torch.Tensor, sl: slice) -> None:
        subject, layers = self.subject, self.layers
        base, pre, up = record_with_preactivations(subject, ids, layers)
        self.chosen_acts["own"][sl] = torch.cat([base[layer] for layer in layers], -1)[..., self.chosen]
        for layer in layers:
            self.scale.add(layer, base[layer])
        for v in self.variants:
            with torch.no_grad():
                for layer in layers:
                    self.local[v.name].add(layer, local_activations(subject, v.fn, pre[layer], up.get(layer))
                                           - base[layer])
            with swap_activation(subject, v.fn):
                acts = subject.record(ids, layers)
            for layer in layers:
                self.prop[v.name].add(layer, acts[layer] - base[layer])
            flat = torch.cat([acts[layer] for layer in layers], -1)
            self.var_max[v.name][sl] = flat.amax(1)
            self.chosen_acts[v.name][sl] = flat[..., self.chosen]
            del acts, flat
