"""Build a frozen held-out neuron set: `python -m harness.build_set [overrides]`.

Two passes over the corpus, in 64-token windows:
1. Every neuron of every chosen layer, streaming, each layer's activations consumed as the forward
   pass computes them: running top-k windows per pool (values and per-token activations), exact
   sums for mean/variance, max, how many windows it is active in, and its window maxima on a fixed
   seeded sample of windows per pool. Memory is bounded by neurons × (k + sample), not by corpus
   length; `device=cuda` keeps all of it on the GPU.
2. After choosing the neurons (seeded, among neurons that are not dead), only the sampled
   windows they use as random/quantile records are run again to read their activations.

Pass 1 can be split into `shards=K` consecutive ranges of whole batches. Their states merge
exactly (top-k of top-k's under one total order, integer sums, maxima), so a sharded build writes
the same set, bit for bit, as one pass. Each shard's state is written atomically to a shard file
next to the set (`.<name>.shards/`); a build reads the finished ones and computes only the missing
ones, so a killed shard re-runs alone. Shards run as jobs of any Hydra launcher:

    python -m harness.build_set -m shards=8 'shard=range(8)' hydra/launcher=slurm   # pass 1, 8 jobs
    python -m harness.build_set shards=8                                             # merge, pass 2

Documents are split once, by seed, into an explain pool and a scoring pool: explain records come
from the first, calibration and test records from the second, so no document is shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import hydra
import numpy as np
import pyarrow as pa
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness import __version__
from harness.cli import exit_on_harness_error
from harness.corpus import Corpus, load_corpus
from harness.errors import ConfigError, CorpusError, HarnessError
from harness.paths import SETS_DIR
from harness.records import check_replaceable, write_set
from harness.rundir import write_atomic
from harness.subject import Subject, fidelity_check, load_subject

log = logging.getLogger(__name__)
POOLS = ("explain", "scoring")


@dataclass
class Windows:
    """Every full window of the corpus: document index, start token and token ids."""

    doc: np.ndarray  # [W] index into corpus.documents
    start: np.ndarray  # [W]
    ids: np.ndarray  # [W, T] int64
    pool: np.ndarray  # [W] 0 = explain, 1 = scoring


def make_windows(corpus: Corpus, tokenizer, window: int, explain_fraction: float, seed: int,
                 max_windows: int | None) -> tuple[Windows, dict[str, list[str]], int]:
    """All full windows (or a seeded subset of `max_windows`), the document pools, and the
    number of full windows in the corpus."""
    rng = np.random.default_rng(seed)
    n_docs = len(corpus.documents)
    order = rng.permutation(n_docs)
    n_explain = int(round(explain_fraction * n_docs))
    if n_explain == 0 or n_explain == n_docs:
        raise CorpusError(f"corpus {corpus.name} has {n_docs} documents: too few to split into an explain "
                          "and a scoring pool; use a corpus with at least 2 documents.")
    pool_of = np.zeros(n_docs, dtype=np.int64)
    pool_of[order[n_explain:]] = 1
    docs, starts, ids = [], [], []
    for d, document in enumerate(tqdm(corpus.documents, desc="tokenizing", unit="doc")):
        tokens = tokenizer(document.text, add_special_tokens=False).input_ids
        for start in range(0, len(tokens) - window + 1, window):
            docs.append(d)
            starts.append(start)
            ids.append(tokens[start:start + window])
    if not ids:
        raise CorpusError(f"corpus {corpus.name} has no document of at least {window} tokens.")
    w = Windows(np.array(docs), np.array(starts), np.array(ids, dtype=np.int64), pool_of[np.array(docs)])
    n_all = len(w.doc)
    if max_windows:  # a quick build: a seeded subset of windows, in corpus order
        keep = np.sort(rng.choice(len(w.doc), size=min(max_windows, len(w.doc)), replace=False))
        w = Windows(w.doc[keep], w.start[keep], w.ids[keep], w.pool[keep])
    for p, name in enumerate(POOLS):
        if not (w.pool == p).any():
            raise CorpusError(f"the {name} pool has no windows; use more documents or a shorter window.")
    pools = {name: sorted(corpus.documents[d].doc_id for d in range(n_docs) if pool_of[d] == p)
             for p, name in enumerate(POOLS)}
    return w, pools, n_all


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


def _free(sample: np.ndarray, taken: list[int], needed: int) -> np.ndarray:
    """The sampled windows not already used as top records; at least `needed` of them."""
    free = sample[~np.isin(sample, taken)]
    if len(free) < needed:
        raise ConfigError(f"only {len(free)} sampled windows are free for random/quantile records but "
                          f"{needed} are needed: raise sample_windows or use a larger corpus.")
    return free


def forward_batches(subject: Subject, ids: np.ndarray, layers: list[int], batch_size: int, desc: str):
    """Yield (batch slice, activations [b, T, len(layers) * n_neurons] on the CPU) with a progress bar."""
    with tqdm(total=len(ids) * ids.shape[1], desc=desc, unit="tok", unit_scale=True) as bar:
        for lo in range(0, len(ids), batch_size):
            batch = torch.from_numpy(ids[lo:lo + batch_size])
            acts = subject.record(batch, layers)
            yield slice(lo, lo + len(batch)), torch.cat([acts[layer] for layer in layers], -1).float().cpu()
            bar.update(batch.numel())


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


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def output_path(cfg: DictConfig) -> Path:
    """Where the set goes (`output_dir`, else leaderboard/sets/<name>); refuses an unsafe name or a
    directory the build may not replace, before any work is done."""
    if cfg.name is None or not PLAIN_NAME.fullmatch(str(cfg.name)):
        raise ConfigError(f"name={cfg.name!r} is not a plain name (letters, digits, '.', '_', '-'; not starting "
                          "with '.'); put the set elsewhere with output_dir=DIR.")
    out = SETS_DIR / cfg.name if cfg.output_dir is None else Path(hydra.utils.to_absolute_path(cfg.output_dir))
    check_replaceable(out, cfg.overwrite)
    return out


def shard_dir(out: Path) -> Path:
    """Where a sharded build keeps its shard files until the set is written: a hidden sibling of
    the set's directory (derived from the checked output path, never from a config value)."""
    return out.parent / f".{out.name}.shards"


def place_subject(subject: Subject, device: str, dtype: str) -> None:
    """Move the subject to `device` (cpu, cuda, cuda:1, …) in `dtype` (float32, bfloat16, float16)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device={device!r} is not a torch device (cpu, cuda, cuda:1, mps, …): {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but torch sees no CUDA device here; use device=cpu or install a "
                          "CUDA build of torch")
    subject.model.to(device=dev, dtype=DTYPES[dtype])


@dataclass
class Setup:
    """Everything pass 1 needs, the same in every shard job and in the merge."""

    subject: Subject
    layers: list[int]
    corpus: Corpus
    win: Windows
    pools: dict[str, list[str]]
    n_all_windows: int
    sample: dict[str, np.ndarray]  # per pool: the sorted seeded sample of window ids
    k_top: dict[str, int]
    ranges: list[tuple[int, int]]  # the shards' window ranges

    @property
    def n_total(self) -> int:
        return len(self.layers) * self.subject.neurons.n_neurons

    def new_state(self, lo: int, hi: int) -> Pass1:
        return Pass1(self.n_total, self.k_top, self.win.ids.shape[1], self.sample, lo, hi, self.subject.device)


def prepare(cfg: DictConfig) -> Setup:
    subject = load_subject(cfg.subject)
    place_subject(subject, cfg.device, cfg.dtype)
    layers = list(cfg.layers) if cfg.layers is not None else list(range(subject.neurons.n_layers))
    subject.check_layers(layers)
    n_per_layer = subject.neurons.n_neurons
    if cfg.neurons_per_layer > n_per_layer:
        raise ConfigError(f"neurons_per_layer={cfg.neurons_per_layer} but {subject.name} has {n_per_layer} per layer")
    counts = cfg.counts
    corpus = load_corpus(cfg.corpus)
    win, pools, n_all_windows = make_windows(corpus, subject.tokenizer, cfg.window, cfg.explain_fraction,
                                             cfg.seeds.pools, cfg.max_windows)
    n_windows, T = win.ids.shape
    log.info("%d documents → %d windows of %d tokens; %d layers × %d neurons", len(corpus.documents),
             n_windows, T, len(layers), n_per_layer)
    ranges = shard_ranges(n_windows, cfg.batch_size, cfg.shards)

    # Stop before writing anything if the hooks disagree with the layer's own arithmetic.
    fidelity_check(subject, torch.from_numpy(win.ids[: min(4, n_windows)]), layers, cfg.fidelity_tolerance)

    # Fixed seeded samples of windows per pool, for random and quantile records.
    rng = np.random.default_rng(cfg.seeds.records)
    sample = {}
    for p, name in enumerate(POOLS):
        in_pool = np.flatnonzero(win.pool == p)
        sample[name] = np.sort(rng.choice(in_pool, size=min(cfg.sample_windows, len(in_pool)), replace=False))
    k_top = {"explain": counts.explain_top, "scoring": counts.calibration_top + counts.test_top}
    for p, name in enumerate(POOLS):
        if (win.pool == p).sum() < k_top[name]:
            raise ConfigError(f"the {name} pool has {(win.pool == p).sum()} windows but {k_top[name]} top "
                              "windows per neuron are asked for: use more documents or fewer top records.")
    return Setup(subject, layers, corpus, win, pools, n_all_windows, sample, k_top, ranges)


def fingerprint(cfg: DictConfig, setup: Setup) -> str:
    """What decides a shard's content: a shard file with another fingerprint is never merged."""
    keys = {"harness": __version__, "weights": setup.subject.weights_digest, "corpus": setup.corpus.digest,
            "device": str(setup.subject.device), "dtype": cfg.dtype, "layers": setup.layers,
            "ranges": setup.ranges, "k_top": setup.k_top, "sample": {p: s.tolist() for p, s in setup.sample.items()},
            **{k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]
               for k in ("window", "explain_fraction", "max_windows", "batch_size", "seeds", "alive")}}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def compute_shard(cfg: DictConfig, setup: Setup, j: int, directory: Path, fp: str) -> Pass1:
    """Shard j's pass-1 state: read from its file when a finished one is there, else computed and
    written atomically (a killed job leaves no file, so only it runs again)."""
    lo, hi = setup.ranges[j]
    path = directory / f"shard-{j:04d}-of-{len(setup.ranges):04d}.pt"
    state = setup.new_state(lo, hi)
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is recomputed, never merged
            log.warning("shard file %s is unreadable (%s); computing the shard again", path, exc)
        else:
            if saved.get("fingerprint") != fp:
                raise ConfigError(f"{path} was written by a build with another configuration (subject, corpus, "
                                  f"seeds, shards, batch size, device or dtype); delete {directory} to start "
                                  "over, or build with the same configuration.")
            log.info("shard %d/%d: windows [%d, %d) already done (%s)", j + 1, len(setup.ranges), lo, hi, path)
            return state.load_state(saved["state"])
    run_pass1(setup.subject, setup.win, setup.layers, cfg.batch_size, state, cfg.alive.min_activation,
              f"pass 1, shard {j + 1}/{len(setup.ranges)}")
    write_atomic(path, lambda f: torch.save({"fingerprint": fp, "state": state.state()}, f))
    log.info("shard %d/%d: windows [%d, %d) in %.0f s → %s", j + 1, len(setup.ranges), lo, hi, state.seconds, path)
    return state


def remove_shards(directory: Path) -> None:
    """Delete the shard files of a finished build (and their directory, once nothing else is in it)."""
    for path in directory.glob("shard-*-of-*.pt"):
        path.unlink()
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def pass1(cfg: DictConfig, setup: Setup, out: Path) -> Pass1:
    """The pass-1 state of every window: one pass (shards=1), or the shards' states merged in
    window order, each read from its shard file or computed here."""
    if len(setup.ranges) == 1:
        return run_pass1(setup.subject, setup.win, setup.layers, cfg.batch_size,
                         setup.new_state(0, len(setup.win.ids)), cfg.alive.min_activation)
    fp, directory = fingerprint(cfg, setup), shard_dir(out)
    state = None
    for j in range(len(setup.ranges)):
        part = compute_shard(cfg, setup, j, directory, fp)
        state = part if state is None else state.merge(part)
    return state


def build(cfg: DictConfig) -> str | None:
    """Build the set (returns its hash); with `shard=J`, only compute shard J's pass-1 file (None)."""
    t0 = time.time()
    out = output_path(cfg)
    setup = prepare(cfg)
    if cfg.shard is not None:
        if not 0 <= cfg.shard < len(setup.ranges):
            raise ConfigError(f"shard={cfg.shard}: must be between 0 and shards-1={len(setup.ranges) - 1}")
        compute_shard(cfg, setup, cfg.shard, shard_dir(out), fingerprint(cfg, setup))
        return None
    state = pass1(cfg, setup, out)
    subject, layers, corpus, win, pools, sample = (setup.subject, setup.layers, setup.corpus, setup.win,
                                                    setup.pools, setup.sample)
    n_all_windows, n_total = setup.n_all_windows, setup.n_total
    n_per_layer = subject.neurons.n_neurons
    n_windows, T = win.ids.shape
    counts, k_top = cfg.counts, setup.k_top
    assert all(np.array_equal(state.sample_windows[p], sample[p]) for p in POOLS)
    sample_pos = {name: {int(w): i for i, w in enumerate(s)} for name, s in sample.items()}
    sample_max = {name: m.cpu() for name, m in state.sample_max.items()}
    top = {name: SimpleNamespace(windows=t.windows.cpu(), acts=t.ranked_acts().cpu()) for name, t in state.top.items()}
    active = {name: a.cpu() for name, a in state.active.items()}

    # Choose neurons: seeded, `neurons_per_layer` per layer, among neurons that are not dead.
    alive = (active["explain"] >= cfg.alive.min_windows) & (active["scoring"] >= cfg.alive.min_windows)
    rng = np.random.default_rng(cfg.seeds.neurons)
    chosen = []  # flat neuron indices
    for li, layer in enumerate(layers):
        candidates = np.flatnonzero(alive[li * n_per_layer:(li + 1) * n_per_layer].numpy())
        if len(candidates) < cfg.neurons_per_layer:
            raise HarnessError(f"layer {layer} has only {len(candidates)} neurons that are not dead; "
                               "lower alive.min_windows or neurons_per_layer, or use a larger corpus.")
        picked = np.sort(rng.choice(candidates, size=cfg.neurons_per_layer, replace=False))
        chosen += [li * n_per_layer + int(n) for n in picked]
    order = rng.permutation(len(chosen))  # the fixed order `neuron_set.limit` takes from

    # Assign records per neuron: calibration takes evenly spread top ranks (0, 3, 6, … for 5 of 15).
    calibration_ranks = {round(i * k_top["scoring"] / counts.calibration_top) for i in range(counts.calibration_top)}
    plan = []  # (flat neuron, split, kind, window, activations or None)
    quantiles = {}
    for f in chosen:
        explain_top = top["explain"].windows[f].tolist()
        scoring_top = top["scoring"].windows[f].tolist()
        for r, w in enumerate(explain_top):
            plan.append((f, "explain", "top", w, top["explain"].acts[f, r]))
        for r, w in enumerate(scoring_top):  # calibration ranks spread evenly, the rest to test
            split = "calibration" if r in calibration_ranks else "test"
            plan.append((f, split, "top", w, top["scoring"].acts[f, r]))
        free_e = _free(sample["explain"], explain_top, counts.explain_random)
        for w in rng.choice(free_e, size=counts.explain_random, replace=False):
            plan.append((f, "explain", "random", int(w), None))
        free_s = _free(sample["scoring"], scoring_top,
                       counts.calibration_random + counts.test_random + counts.test_quantile)
        picks = rng.choice(len(free_s), size=counts.calibration_random + counts.test_random, replace=False)
        for i, j in enumerate(picks):
            split = "calibration" if i < counts.calibration_random else "test"
            plan.append((f, split, "random", int(free_s[j]), None))
        # Quantile-stratified: one window from each of `test_quantile` equal-count bins of the
        # neuron's window maxima over the remaining scoring sample.
        rest = np.delete(free_s, picks)
        maxima = sample_max["scoring"][[sample_pos["scoring"][int(w)] for w in rest], f].numpy()
        ranked = rest[np.argsort(maxima, kind="stable")]
        bins = np.array_split(np.arange(len(ranked)), counts.test_quantile)
        for b in bins:
            plan.append((f, "test", "quantile", int(ranked[rng.choice(b)]), None))
        qs = np.linspace(0, 1, counts.test_quantile + 1)
        quantiles[f] = np.quantile(maxima, qs).tolist()

    # Pass 2: activations of the chosen neurons on the sampled windows they use.
    needed = sorted({w for (_, _, _, w, a) in plan if a is None})
    chosen_layers = sorted({layers[f // n_per_layer] for f in chosen})
    col = {layer: i for i, layer in enumerate(chosen_layers)}
    second = {}
    for sl, acts in forward_batches(subject, win.ids[needed], chosen_layers, cfg.batch_size, "pass 2: samples"):
        for row, w in enumerate(needed[sl]):
            second[w] = acts[row]
    plan = [(f, s, k, w, a if a is not None else
             second[w][:, col[layers[f // n_per_layer]] * n_per_layer + f % n_per_layer])
            for (f, s, k, w, a) in plan]

    # Tables.
    used = sorted({w for (_, _, _, w, _) in plan})
    tok = subject.tokenizer
    windows_tab = pa.table({
        "window_id": pa.array(used, pa.int64()),
        "doc_id": [corpus.documents[win.doc[w]].doc_id for w in used],
        "start": pa.array(win.start[used], pa.int64()),
        "token_ids": pa.array([win.ids[w].tolist() for w in used], pa.list_(pa.int32())),
        "tokens": [[tok.decode([t]) for t in win.ids[w]] for w in used],
    })
    records_tab = pa.table({
        "layer": pa.array([layers[f // n_per_layer] for (f, *_ ) in plan], pa.int32()),
        "neuron": pa.array([f % n_per_layer for (f, *_ ) in plan], pa.int32()),
        "split": [s for (_, s, *_ ) in plan],
        "kind": [k for (_, _, k, *_ ) in plan],
        "window_id": pa.array([w for (_, _, _, w, _) in plan], pa.int64()),
        "activations": pa.array([a.tolist() for (*_, a) in plan], pa.list_(pa.float32())),
    })
    n_tokens = n_windows * T
    mean = state.sum.value() / n_tokens
    var = state.sq.value() / n_tokens - mean.square()
    act_max = state.max.cpu()
    position = {f: int(i) for i, f in zip(np.argsort(order), chosen)}
    neurons_tab = pa.table({
        "order": pa.array([position[f] for f in chosen], pa.int32()),
        "layer": pa.array([layers[f // n_per_layer] for f in chosen], pa.int32()),
        "neuron": pa.array([f % n_per_layer for f in chosen], pa.int32()),
        "mean": pa.array([float(mean[f]) for f in chosen], pa.float64()),
        "variance": pa.array([float(var[f]) for f in chosen], pa.float64()),
        "max_activation": pa.array([float(act_max[f]) for f in chosen], pa.float64()),
        "quantile_boundaries": pa.array([quantiles[f] for f in chosen], pa.list_(pa.float64())),
    })
    manifest = {
        "name": cfg.name,
        "harness_version": __version__,
        "subject": {"name": subject.name, "weights_digest": subject.weights_digest,
                    "activation_function": subject.neurons.activation,
                    "architecture": subject.neurons.architecture,
                    "n_layers": subject.neurons.n_layers, "neurons_per_layer": n_per_layer,
                    "config": OmegaConf.to_container(cfg.subject, resolve=True)},
        "tokenizer": {"name_or_path": subject.name, "vocab_size": len(tok),
                      "class": type(tok).__name__, "add_special_tokens": False},
        "corpus": {"name": corpus.name, "digest": corpus.digest, "n_documents": len(corpus.documents),
                   "n_windows": n_windows, "n_tokens": n_tokens, "n_windows_in_corpus": n_all_windows,
                   "window_subset": (f"a seeded uniform subset of {cfg.max_windows} of the corpus's {n_all_windows} "
                                     f"full windows (seed {cfg.seeds.pools})") if cfg.max_windows else "every full window",
                   "config": OmegaConf.to_container(cfg.corpus, resolve=True)},
        "pools": pools,
        "window": T,
        "seeds": OmegaConf.to_container(cfg.seeds),
        "counts": OmegaConf.to_container(counts),
        "selection": {
            "rule": (f"{cfg.neurons_per_layer} neurons per layer in layers {layers}, drawn uniformly "
                     f"with seed {cfg.seeds.neurons} among neurons that are not dead: a neuron is dead "
                     f"unless, in each pool, at least {cfg.alive.min_windows} windows have a maximum "
                     f"activation above {cfg.alive.min_activation}"),
            "layers": layers, "neurons_per_layer": cfg.neurons_per_layer,
            "alive": OmegaConf.to_container(cfg.alive),
            "n_alive": int(alive.sum()), "n_candidates": n_total,
            "top_by": "maximum activation of the neuron within the window",
            "calibration_top_ranks": sorted(calibration_ranks),
            "random_from": f"a seeded sample of {cfg.sample_windows} windows per pool, excluding the neuron's top windows",
            "quantile_bins": f"{counts.test_quantile} equal-count bins of window maxima over the remaining scoring sample",
        },
        "build": {"torch": torch.__version__, "device": str(subject.device), "dtype": cfg.dtype},
        # Not covered by the hash: how this build ran (the same set may be built many ways).
        "timing": {"wall_seconds": round(time.time() - t0, 1), "shards": len(setup.ranges),
                   "pass1_seconds": round(state.seconds, 1),
                   "pass1_tokens_per_second": round(n_tokens / state.seconds, 1) if state.seconds else None},
    }
    digest = write_set(out, manifest, {"windows": windows_tab, "records": records_tab, "neurons": neurons_tab},
                       overwrite=cfg.overwrite)
    remove_shards(shard_dir(out))
    log.info("wrote %s (%d neurons, hash %s) in %.0f s", out, len(chosen), digest, time.time() - t0)
    return digest


@hydra.main(version_base="1.3", config_path="../conf", config_name="build_set")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    build(cfg)


if __name__ == "__main__":
    main()
