"""Streaming quantiles of |Δ| per layer: a histogram in log-spaced bins, so memory does not grow
with the number of windows."""

from __future__ import annotations

import math

import numpy as np
import torch

QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}


class AbsHistogram:
    """Counts of |x| per layer in log-spaced bins, `per_decade` bins per decade from 10**min_exp to
    10**max_exp (smaller non-zero values go to the first bin, larger to the last), plus the
    exact number of zeros, the exact maximum and the sum."""

    def __init__(self, n_layers: int, per_decade: int = 500, min_exp: int = -12, max_exp: int = 4):
        self.per_decade, self.min_exp = per_decade, min_exp
        self.n_bins = (max_exp - min_exp) * per_decade
        self.counts = torch.zeros((n_layers, self.n_bins), dtype=torch.int64)
        self.zeros = torch.zeros(n_layers, dtype=torch.int64)
        self.max = torch.zeros(n_layers, dtype=torch.float64)
        self.sum = torch.zeros(n_layers, dtype=torch.float64)

    def add(self, layer: int, values: torch.Tensor) -> None:
        v = values.detach().abs().flatten().float()
        nonzero = v[v > 0]
        self.zeros[layer] += v.numel() - nonzero.numel()
        if nonzero.numel():
            idx = ((torch.log10(nonzero) - self.min_exp) * self.per_decade).floor()
            self.counts[layer] += torch.bincount(idx.clamp(0, self.n_bins - 1).long(), minlength=self.n_bins)
            self.max[layer] = max(self.max[layer].item(), nonzero.max().item())
            self.sum[layer] += nonzero.double().sum()

    def summary(self, layer: int | None = None) -> dict[str, float]:
        """{median, p90, p99, p99.9, max, mean, n} of one layer (or all layers pooled)."""
        sel = slice(None) if layer is None else slice(layer, layer + 1)
        counts = self.counts[sel].sum(0).numpy()
        zeros = int(self.zeros[sel].sum())
        n = zeros + int(counts.sum())
        top = float(self.max[sel].max())
        out = {name: self._quantile(q, counts, zeros, n, top) for name, q in QUANTILES.items()}
        out.update(max=top, mean=float(self.sum[sel].sum()) / n if n else math.nan, n=n)
        return out

    def _quantile(self, q: float, counts: np.ndarray, zeros: int, n: int, top: float) -> float:
        if n == 0:
            return math.nan
        rank = q * (n - 1)  # numpy's default (linear) position among the sorted values
        if rank < zeros:
            return 0.0
        r = rank - zeros
        cum = np.cumsum(counts)
        b = int(np.searchsorted(cum, r, side="right"))
        b = min(b, len(counts) - 1)
        within = (r - (cum[b] - counts[b]) + 0.5) / max(counts[b], 1)  # values spread log-uniformly
        return min(10 ** (self.min_exp + (b + within) / self.per_decade), top)

