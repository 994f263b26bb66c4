"""Per-neuron accumulators of pass 1 whose states merge exactly: integer-exact sums and running
top-k windows under one total order, so shards merged in window order equal one pass bit for bit."""

from __future__ import annotations

import torch

from harness.errors import HarnessError


class ExactSum:
    """Per-neuron sums of float32 partials, exact and independent of the order they are added in:
    each partial is rounded once to a multiple of 2**-32 and added as an integer held in two int64
    limbs (`hi`·2**32 + `lo`, 0 ≤ lo < 2**32), so shards merged in any grouping give the same bits
    as one pass. A partial must be finite and below 2**30 in magnitude (else `value` refuses)."""

    SHIFT = 32

    def __init__(self, n: int, device: torch.device):
        self.hi = torch.zeros(n, dtype=torch.int64, device=device)
        self.lo = torch.zeros(n, dtype=torch.int64, device=device)
        self.bad = torch.zeros(n, dtype=torch.bool, device=device)

    def add(self, cols: slice, partial: torch.Tensor) -> None:
        x = partial.float()
        self.bad[cols] |= ~(x.abs() < 2.0 ** 30)  # also NaN
        fixed = (x.double() * 2.0 ** self.SHIFT).round()  # exact: a float32 times a power of two
        self.lo[cols] += torch.where(self.bad[cols], 0.0, fixed).long()
        self._carry(cols)

    def merge(self, other: ExactSum) -> None:
        self.hi += other.hi
        self.lo += other.lo
        self.bad |= other.bad
        self._carry(slice(None))

    def _carry(self, cols: slice) -> None:
        carry = self.lo[cols] >> self.SHIFT  # floor division by 2**32
        self.hi[cols] += carry
        self.lo[cols] -= carry << self.SHIFT

    def value(self) -> torch.Tensor:
        """The sums as float64 [n] (on the CPU)."""
        if self.bad.any():
            raise HarnessError(f"{int(self.bad.sum())} neurons have a non-finite or huge (≥ 2**30) activation "
                               "sum over one batch; their statistics cannot be kept: check the subject's "
                               "weights and dtype (float16 overflows easily; use float32 or bfloat16).")
        return self.hi.cpu().double() + self.lo.cpu().double() * 2.0 ** -self.SHIFT

    def state(self) -> dict[str, torch.Tensor]:
        return {"hi": self.hi, "lo": self.lo, "bad": self.bad}


class TopK:
    """Running top-k windows per neuron by window-max activation, with per-token activations.

    Entries are kept in a strict total order, value descending then window id ascending, so the
    top k of a stream is one well-defined set: updating with later windows and merging the top k's
    of consecutive shards give the same bits. Per-token activations stay in the slot they were
    written to (`slots` maps each ranked entry to its slot): an update writes only the windows that
    enter the top k, never moves the others."""

    def __init__(self, n_neurons: int, k: int, window: int, device: torch.device):
        self.values = torch.full((n_neurons, k), -torch.inf, device=device)
        self.windows = torch.full((n_neurons, k), -1, dtype=torch.int64, device=device)
        self.slots = torch.arange(k, device=device).repeat(n_neurons, 1)
        self.acts = torch.zeros((n_neurons, k, window), device=device)  # by slot

    def ranked_acts(self) -> torch.Tensor:
        """Per-token activations [n, k, T] in rank order."""
        return self.acts.gather(1, self.slots[..., None].expand(-1, -1, self.acts.shape[2]))

    def update(self, cols: slice, wmax: torch.Tensor, window_ids: torch.Tensor, acts: torch.Tensor,
               rows: torch.Tensor) -> None:
        """Neurons `cols` (one layer) see windows `window_ids` [b'] (later than any seen before):
        their maxima `wmax` [b', n] and activations `acts[rows]` ([b, T, n] indexed by `rows`)."""
        # Only neurons where some candidate beats the current k-th value change (a tie ranks below:
        # its window id is larger).
        better = (wmax.amax(0) > self.values[cols, -1]).nonzero().squeeze(1)
        if len(better) == 0:
            return
        self._combine(better + cols.start, wmax[:, better].T, window_ids.expand(len(better), -1),
                      lambda r, j: acts[rows[j], :, better[r]])

    def merge(self, other: TopK) -> None:
        """Add the top k's of a shard whose windows all come after this one's."""
        g = torch.arange(len(self.values), device=self.values.device)
        self._combine(g, other.values, other.windows, lambda r, j: other.acts[r, other.slots[r, j]])

    def _combine(self, g: torch.Tensor, values: torch.Tensor, windows: torch.Tensor, fetch) -> None:
        """Rows `g` keep the top k of their entries and the candidates `values`/`windows` [r, c] (all
        with larger window ids); `fetch(r, j)` gives the activations [m, T] of candidates j of rows r."""
        k = self.values.shape[1]
        # A stable sort keeps equal values in window order: current entries first, then candidates.
        vals, order = torch.cat([self.values[g], values], 1).sort(dim=1, descending=True, stable=True)
        order = order[:, :k]
        old = order < k  # ranks held by current entries, which keep their slots
        kept_slots = self.slots[g].gather(1, order.clamp(max=k - 1))
        used = torch.zeros_like(kept_slots).scatter_add_(1, kept_slots, old.long()) > 0
        free = used.int().argsort(dim=1, stable=True)  # free slots first, in slot order
        new = ~old
        nth_new = (new.cumsum(1) - 1).clamp(min=0)
        slots = torch.where(old, kept_slots, free.gather(1, nth_new))
        r, rank = new.nonzero(as_tuple=True)
        self.acts[g[r], slots[r, rank]] = fetch(r, order[r, rank] - k)
        self.windows[g] = torch.cat([self.windows[g], windows], 1).gather(1, order)
        self.values[g], self.slots[g] = vals[:, :k], slots

    def state(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "windows": self.windows, "slots": self.slots, "acts": self.acts}
