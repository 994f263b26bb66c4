"""How much of what a neuron set would hold a variant changes: each neuron's top-k windows, which
neurons are alive, and the frozen-set draw (`harness.sets.draw`) applied to the same windows."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from harness.gelu.capture import VariantRuns
from harness.gelu.variants import Variant
from harness.sets.draw import alive_mask, draw_neurons
from harness.sets.windows import POOLS


def alive_on(window_max: torch.Tensor, pool: np.ndarray, alive: DictConfig) -> torch.Tensor:
    """The frozen-set alive rule on window maxima [W, n_neurons] of windows in pools `pool` [W]."""
    active = {name: (window_max[torch.from_numpy(pool == p)] > alive.min_activation).sum(0)
              for p, name in enumerate(POOLS)}
    return alive_mask(active, alive.min_windows)


def draw(cfg: DictConfig, alive: torch.Tensor, layers: list[int], strict: bool = True) -> list[int]:
    """The frozen-set draw with the configured seed (strict=False: a short layer gives what it has)."""
    return draw_neurons(alive, layers, cfg.neurons_per_layer, np.random.default_rng(cfg.seeds.neurons), strict)


def topk_jaccard(base_max: torch.Tensor, var_max: torch.Tensor, k: int) -> torch.Tensor:
    """[n_neurons] Jaccard overlap of each neuron's top-k windows (rows of [W, n_neurons])."""
    a = torch.zeros_like(base_max, dtype=torch.bool).scatter_(0, base_max.topk(k, 0).indices, True)
    b = torch.zeros_like(var_max, dtype=torch.bool).scatter_(0, var_max.topk(k, 0).indices, True)
    return (a & b).sum(0) / (a | b).sum(0)


def variant_results(cfg: DictConfig, v: Variant, own: str, runs: VariantRuns, base_max: torch.Tensor,
                    alive_own: torch.Tensor, pool: np.ndarray, chosen: list[int]) -> dict[str, Any]:
    """One variant's |Δ| summaries and stability, overall and per layer."""
    layers, N = runs.layers, runs.subject.neurons.n_neurons
    jac = topk_jaccard(base_max, runs.var_max[v.name], cfg.top_k)
    alive_v = alive_on(runs.var_max[v.name], pool, cfg.alive)
    redrawn = draw(cfg, alive_v, layers, strict=False)
    per_layer = []
    for layer in layers:
        cols = slice(layer * N, (layer + 1) * N)
        a = alive_own[cols]
        in_layer = [f for f in chosen if f // N == layer]
        per_layer.append({
            "layer": layer,
            "local": runs.local[v.name].summary(layer), "propagated": runs.prop[v.name].summary(layer),
            "topk_jaccard": float(jac[cols][a].mean()) if a.any() else math.nan,
            "topk_identical": float((jac[cols][a] == 1).float().mean()) if a.any() else math.nan,
            "alive_flips": int((a != alive_v[cols]).sum()),
            "chosen_still_alive": int(sum(bool(alive_v[f]) for f in in_layer)),
            "chosen_redrawn_same": len(set(in_layer) & {f for f in redrawn if f // N == layer}),
            "chosen": len(in_layer),
        })
    return {
        "formula": v.formula, "is_own": v.name == own,
        "overall": {
            "local": runs.local[v.name].summary(), "propagated": runs.prop[v.name].summary(),
            "topk_jaccard": float(jac[alive_own].mean()),
            "topk_identical": float((jac[alive_own] == 1).float().mean()),
            "alive_flips": int((alive_own != alive_v).sum()),
            "chosen_still_alive": int(alive_v[runs.chosen].sum()),
            "chosen_redrawn_same": len(set(chosen) & set(redrawn)),
            "chosen": len(chosen),
        },
        "per_layer": per_layer,
    }
