"""Pass 1: every neuron of every chosen layer, streaming over consecutive windows, each layer's
activations consumed as the forward pass computes them. Memory is bounded by neurons × (k + sample),
not by corpus length; the state of consecutive ranges merges exactly."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from harness.errors import ConfigError, HarnessError
from harness.sets.accumulators import ExactSum, TopK
from harness.sets.windows import POOLS, Windows
from harness.subject import Subject


class Pass1:
    """Pass-1 state over the consecutive windows [lo, hi) for every neuron: running top-k per pool,
    exact sums of activations and their squares, maxima, the number of windows a neuron is active
    in per pool, and its window maxima on the sampled windows of [lo, hi). Memory is bounded by
    neurons × (k + sample) and does not grow with the number of windows. States of consecutive
    ranges merge exactly (`merge`), so a sharded build equals a single pass bit for bit."""

    def __init__(self, n_neurons: int, k_top: dict[str, int], window: int, sample: dict[str, np.ndarray],
                 lo: int, hi: int, device: torch.device):
        self.lo, self.hi = lo, hi
        self.seconds = 0.0  # time spent computing it
        self.top = {p: TopK(n_neurons, k_top[p], window, device) for p in POOLS}
        self.sum, self.sq = ExactSum(n_neurons, device), ExactSum(n_neurons, device)
        self.max = torch.full((n_neurons,), -torch.inf, device=device)
        self.active = {p: torch.zeros(n_neurons, dtype=torch.int64, device=device) for p in POOLS}
        self.sample_windows = {p: s[(s >= lo) & (s < hi)] for p, s in sample.items()}
        self.sample_max = {p: torch.zeros((len(w), n_neurons), device=device) for p, w in self.sample_windows.items()}

    def batch(self, lo: int, hi: int, pool: np.ndarray, device: torch.device) -> dict:
        """Index tensors for the windows [lo, hi) of one forward batch: per pool, the batch rows in
        it, their window ids, and the rows and sample positions of its sampled windows."""
        out = {}
        for p, name in enumerate(POOLS):
            rows = np.flatnonzero(pool[lo:hi] == p)
            sampled = self.sample_windows[name]
            in_batch = sampled[(sampled >= lo) & (sampled < hi)]
            out[name] = [torch.as_tensor(x, dtype=torch.int64, device=device) for x in
                         (rows, rows + lo, in_batch - lo, np.searchsorted(sampled, in_batch))]
        return out

    def update(self, cols: slice, acts: torch.Tensor, batch: dict, min_activation: float) -> None:
        """One layer's activations `acts` [b, T, n] (neurons `cols`) on one batch."""
        acts = acts.float()
        self.sum.add(cols, acts.sum((0, 1)))
        self.sq.add(cols, acts.square().sum((0, 1)))
        wmax = acts.amax(1)
        self.max[cols] = torch.maximum(self.max[cols], wmax.amax(0))
        for name in POOLS:
            rows, window_ids, sample_rows, sample_pos = batch[name]
            if len(rows):
                pool_max = wmax.index_select(0, rows)
                self.active[name][cols] += (pool_max > min_activation).sum(0)
                self.top[name].update(cols, pool_max, window_ids, acts, rows)
            if len(sample_rows):
                self.sample_max[name][sample_pos, cols] = wmax.index_select(0, sample_rows)

    def merge(self, other: Pass1) -> Pass1:
        """Add the state of the windows right after this one's ([self.hi, other.hi))."""
        if other.lo != self.hi:
            raise HarnessError(f"shard states must be merged in window order: [{self.lo}, {self.hi}) "
                               f"then [{other.lo}, {other.hi})")
        for p in POOLS:
            self.top[p].merge(other.top[p])
            self.active[p] += other.active[p]
            self.sample_windows[p] = np.concatenate([self.sample_windows[p], other.sample_windows[p]])
            self.sample_max[p] = torch.cat([self.sample_max[p], other.sample_max[p]])
        self.sum.merge(other.sum)
        self.sq.merge(other.sq)
        self.max = torch.maximum(self.max, other.max)
        self.hi = other.hi
        self.seconds += other.seconds
        return self

    def state(self) -> dict:
        """Everything, as CPU tensors and plain values (what a shard file holds)."""
        flat = {"lo": self.lo, "hi": self.hi, "seconds": self.seconds, "max": self.max,
                **{f"sum.{k}": v for k, v in self.sum.state().items()},
                **{f"sq.{k}": v for k, v in self.sq.state().items()}}
        for p in POOLS:
            flat.update({f"top.{p}.{k}": v for k, v in self.top[p].state().items()})
            flat.update({f"active.{p}": self.active[p], f"sample_windows.{p}": torch.from_numpy(self.sample_windows[p]),
                         f"sample_max.{p}": self.sample_max[p]})
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in flat.items()}

    def load_state(self, flat: dict) -> Pass1:
        dev = self.max.device
        self.lo, self.hi, self.seconds, self.max = flat["lo"], flat["hi"], flat["seconds"], flat["max"].to(dev)
        for name, acc in (("sum", self.sum), ("sq", self.sq)):
            acc.hi, acc.lo, acc.bad = (flat[f"{name}.{k}"].to(dev) for k in ("hi", "lo", "bad"))
        for p in POOLS:
            t = self.top[p]
            t.values, t.windows, t.slots, t.acts = (flat[f"top.{p}.{k}"].to(dev)
                                                    for k in ("values", "windows", "slots", "acts"))
            self.active[p] = flat[f"active.{p}"].to(dev)
            self.sample_windows[p] = flat[f"sample_windows.{p}"].numpy()
            self.sample_max[p] = flat[f"sample_max.{p}"].to(dev)
        return self


def run_pass1(subject: Subject, win: Windows, layers: list[int], batch_size: int, state: Pass1,
              min_activation: float, desc: str = "pass 1: all neurons") -> Pass1:
    """Stream the windows [state.lo, state.hi) through the subject in batches of `batch_size`
    windows, updating `state` layer by layer as each layer's activations are computed (and adding
    the time it took to `state.seconds`)."""
    t0 = time.time()
    n = subject.neurons.n_neurons
    cols = {layer: slice(i * n, (i + 1) * n) for i, layer in enumerate(layers)}
    device = subject.device
    with tqdm(total=(state.hi - state.lo) * win.ids.shape[1], desc=desc, unit="tok", unit_scale=True) as bar:
        for lo in range(state.lo, state.hi, batch_size):
            hi = min(lo + batch_size, state.hi)
            batch = state.batch(lo, hi, win.pool, device)
            subject.record(torch.from_numpy(win.ids[lo:hi]), layers,
                           on_layer=lambda layer, acts: state.update(cols[layer], acts, batch, min_activation))
            bar.update((hi - lo) * win.ids.shape[1])
    state.seconds += time.time() - t0
    return state


def shard_ranges(n_windows: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Consecutive window ranges of whole batches, one per shard: every shard runs exactly the
    forward batches a single pass runs, so their activations (and the merged state) are the same."""
    n_batches = -(-n_windows // batch_size)
    if not 1 <= shards <= n_batches:
        raise ConfigError(f"shards={shards}: must be between 1 and the number of batches ({n_batches} batches of "
                          f"{batch_size} windows)")
    return [(int(b[0]) * batch_size, min(int(b[-1] + 1) * batch_size, n_windows))
            for b in np.array_split(np.arange(n_batches), shards)]

