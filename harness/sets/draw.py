"""The frozen-set neuron rule, used by the build and by the GELU check alike: a neuron is alive
when, in each pool, enough windows have a maximum activation above a threshold; per layer a fixed
number of alive neurons is drawn uniformly with a seeded generator."""

from __future__ import annotations

import numpy as np
import torch

from harness.errors import HarnessError
from harness.sets.windows import POOLS


def alive_mask(active: dict[str, torch.Tensor], min_windows: int) -> torch.Tensor:
    """[n_neurons] bool from each pool's count of windows a neuron is active in (its window
    maximum above the threshold): alive when every pool has at least `min_windows`."""
    return torch.stack([active[p] >= min_windows for p in POOLS]).all(0)


def draw_neurons(alive: torch.Tensor, layers: list[int], per_layer: int, rng: np.random.Generator,
                 strict: bool = True) -> list[int]:
    """Per layer in order, `per_layer` neurons drawn uniformly from `rng` among the alive ones
    (`alive` is flat [len(layers) * n]); returns flat indices i * n + neuron for the i-th layer.
    A layer with too few alive neurons is an error, or with strict=False gives what it has."""
    n = alive.numel() // len(layers)
    chosen = []
    for i, layer in enumerate(layers):
        candidates = np.flatnonzero(alive[i * n:(i + 1) * n].numpy())
        if len(candidates) < per_layer and strict:
            raise HarnessError(f"layer {layer} has only {len(candidates)} neurons that are not dead; lower "
                               "alive.min_windows or neurons_per_layer, or use more windows (a larger corpus "
                               "or max_windows).")
        picked = np.sort(rng.choice(candidates, size=min(per_layer, len(candidates)), replace=False))
        chosen += [i * n + int(neuron) for neuron in picked]
    return chosen
