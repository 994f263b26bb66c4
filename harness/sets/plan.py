"""Each chosen neuron's records per split, from pass 1's state, and pass 2, which reads the
activations of the sampled windows they use.

Explain records come from the explain pool: its top windows and random ones. Calibration and test
records come from the scoring pool: calibration takes evenly spread top ranks (0, 3, 6, … for 5 of
15) and the rest go to test; random records are drawn from the fixed sample of the pool without the
neuron's top windows, and test adds one window per equal-count bin of the neuron's window maxima
over what is left of that sample (quantile records)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from harness.errors import ConfigError
from harness.sets.pass1 import Pass1
from harness.sets.windows import Windows, forward_batches
from harness.subject import Subject


class Planned(NamedTuple):
    """One record of the set: a window of a neuron, in a split, of a kind."""

    neuron: int  # flat index: position of the layer × neurons per layer + neuron
    split: str  # explain, calibration or test
    kind: str  # top, random or quantile
    window: int
    acts: torch.Tensor | None  # [T]; None for a sampled window until pass 2 reads it


def _free(sample: np.ndarray, taken: list[int], needed: int) -> np.ndarray:
    """The sampled windows not already used as top records; at least `needed` of them."""
    free = sample[~np.isin(sample, taken)]
    if len(free) < needed:
        raise ConfigError(f"only {len(free)} sampled windows are free for random/quantile records but "
                          f"{needed} are needed: raise sample_windows or use a larger corpus.")
    return free


class Planner:
    """Plans records neuron by neuron from pass 1's top k's and sample maxima; every random choice
    comes from `rng`, in a fixed order, so the plan is a function of the seed."""

    def __init__(self, state: Pass1, sample: dict[str, np.ndarray], counts, rng: np.random.Generator):
        self.windows = {name: t.windows.cpu() for name, t in state.top.items()}
        self.acts = {name: t.ranked_acts().cpu() for name, t in state.top.items()}
        self.sample, self.counts, self.rng = sample, counts, rng
        self.scoring_max = state.sample_max["scoring"].cpu()  # [sample, neurons]
        self.position = {int(w): i for i, w in enumerate(sample["scoring"])}  # row of a window in it
        k = self.windows["scoring"].shape[1]
        self.calibration_ranks = {round(i * k / counts.calibration_top) for i in range(counts.calibration_top)}

    def records(self, f: int) -> tuple[list[Planned], list[float]]:
        """Neuron f's records, in table order, and its quantile-bin boundaries."""
        c, rng = self.counts, self.rng
        explain_top, scoring_top = self.windows["explain"][f].tolist(), self.windows["scoring"][f].tolist()
        plan = [Planned(f, "explain", "top", w, self.acts["explain"][f, r]) for r, w in enumerate(explain_top)]
        plan += [Planned(f, "calibration" if r in self.calibration_ranks else "test", "top", w,
                         self.acts["scoring"][f, r]) for r, w in enumerate(scoring_top)]
        free_e = _free(self.sample["explain"], explain_top, c.explain_random)
        plan += [Planned(f, "explain", "random", int(w), None)
                 for w in rng.choice(free_e, size=c.explain_random, replace=False)]
        free_s = _free(self.sample["scoring"], scoring_top, c.calibration_random + c.test_random + c.test_quantile)
        picks = rng.choice(len(free_s), size=c.calibration_random + c.test_random, replace=False)
        plan += [Planned(f, "calibration" if i < c.calibration_random else "test", "random", int(free_s[j]), None)
                 for i, j in enumerate(picks)]
        quantile, boundaries = self._quantile(f, np.delete(free_s, picks))
        return plan + quantile, boundaries

    def _quantile(self, f: int, rest: np.ndarray) -> tuple[list[Planned], list[float]]:
        """One window from each of `test_quantile` equal-count bins of neuron f's window maxima over
        the sampled windows `rest`, and the bins' boundaries."""
        maxima = self.scoring_max[[self.position[int(w)] for w in rest], f].numpy()
        ranked = rest[np.argsort(maxima, kind="stable")]
        bins = np.array_split(np.arange(len(ranked)), self.counts.test_quantile)
        picked = [Planned(f, "test", "quantile", int(ranked[self.rng.choice(b)]), None) for b in bins]
        return picked, np.quantile(maxima, np.linspace(0, 1, self.counts.test_quantile + 1)).tolist()


def read_sampled(subject: Subject, win: Windows, layers: list[int], batch_size: int,
                 plan: list[Planned]) -> list[Planned]:
    """Pass 2: the plan with every record's activations, running again only the windows of sampled
    records and recording only the layers of the planned neurons."""
    n = subject.neurons.n_neurons
    needed = sorted({r.window for r in plan if r.acts is None})
    planned_layers = sorted({layers[r.neuron // n] for r in plan})
    col = {layer: i for i, layer in enumerate(planned_layers)}
    second = {}
    for sl, acts in forward_batches(subject, win.ids[needed], planned_layers, batch_size, "pass 2: samples"):
        for row, w in enumerate(needed[sl]):
            second[w] = acts[row]
    return [r if r.acts is not None else
            r._replace(acts=second[r.window][:, col[layers[r.neuron // n]] * n + r.neuron % n]) for r in plan]
