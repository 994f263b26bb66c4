"""Build a frozen held-out neuron set: `python -m harness.build_set [overrides]`.

Two passes over the corpus, in 64-token windows:
1. Every neuron of every chosen layer, streaming: running top-k windows per pool (values and
   per-token activations), mean/variance/max, how many windows it is active in, and its
   window maxima on a fixed seeded sample of windows per pool. Memory is bounded by
   neurons × (k + sample), not by corpus length.
2. After choosing the neurons (seeded, among neurons that are not dead), only the sampled
   windows they use as random/quantile records are run again to read their activations.

Documents are split once, by seed, into an explain pool and a scoring pool: explain records come
from the first, calibration and test records from the second, so no document is shared.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

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


class TopK:
    """Running top-k windows per neuron by window-max activation, with per-token activations."""

    def __init__(self, n_neurons: int, k: int, window: int):
        self.values = torch.full((n_neurons, k), -torch.inf)
        self.windows = torch.full((n_neurons, k), -1, dtype=torch.int64)
        self.acts = torch.zeros((n_neurons, k, window))

    def update(self, wmax: torch.Tensor, window_ids: torch.Tensor, acts: torch.Tensor) -> None:
        """wmax [b, N], window_ids [b], acts [b, T, N]."""
        if len(window_ids) == 0:
            return
        # Only neurons where some candidate beats the current k-th value change.
        rows = (wmax.amax(0) > self.values[:, -1]).nonzero().squeeze(1)
        if len(rows) == 0:
            return
        k = self.values.shape[1]
        vals = torch.cat([self.values[rows], wmax[:, rows].T], 1)
        vals, idx = vals.topk(k, dim=1)
        wins = torch.cat([self.windows[rows], window_ids.expand(len(rows), -1)], 1).gather(1, idx)
        cand = torch.cat([self.acts[rows], acts[:, :, rows].permute(2, 0, 1)], 1)
        self.acts[rows] = cand.gather(1, idx[..., None].expand(-1, -1, cand.shape[2]))
        self.values[rows], self.windows[rows] = vals, wins


def _free(sample: np.ndarray, taken: list[int], needed: int) -> np.ndarray:
    """The sampled windows not already used as top records; at least `needed` of them."""
    free = sample[~np.isin(sample, taken)]
    if len(free) < needed:
        raise ConfigError(f"only {len(free)} sampled windows are free for random/quantile records but "
                          f"{needed} are needed: raise sample_windows or use a larger corpus.")
    return free


def forward_batches(subject: Subject, ids: np.ndarray, layers: list[int], batch_size: int, desc: str):
    """Yield (batch slice, activations [b, T, len(layers) * n_neurons]) with a progress bar."""
    with tqdm(total=len(ids) * ids.shape[1], desc=desc, unit="tok", unit_scale=True) as bar:
        for lo in range(0, len(ids), batch_size):
            batch = torch.from_numpy(ids[lo:lo + batch_size])
            acts = subject.record(batch, layers)
            yield slice(lo, lo + len(batch)), torch.cat([acts[layer] for layer in layers], -1).float().cpu()
            bar.update(batch.numel())


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def output_path(cfg: DictConfig) -> Path:
    """Where the set goes (`output_dir`, else leaderboard/sets/<name>); refuses an unsafe name or a
    directory the build may not replace, before any work is done."""
    if cfg.name is None or not PLAIN_NAME.fullmatch(str(cfg.name)):
        raise ConfigError(f"name={cfg.name!r} is not a plain name (letters, digits, '.', '_', '-'; not starting "
                          "with '.'); put the set elsewhere with output_dir=DIR.")
    out = SETS_DIR / cfg.name if cfg.output_dir is None else Path(hydra.utils.to_absolute_path(cfg.output_dir))
    check_replaceable(out, cfg.overwrite)
    return out


def build(cfg: DictConfig) -> str:
    t0 = time.time()
    out = output_path(cfg)
    subject = load_subject(cfg.subject)
    layers = list(cfg.layers) if cfg.layers is not None else list(range(subject.neurons.n_layers))
    subject.check_layers(layers)
    n_per_layer = subject.neurons.n_neurons
    n_total = len(layers) * n_per_layer
    if cfg.neurons_per_layer > n_per_layer:
        raise ConfigError(f"neurons_per_layer={cfg.neurons_per_layer} but {subject.name} has {n_per_layer} per layer")
    counts = cfg.counts
    corpus = load_corpus(cfg.corpus)
    win, pools, n_all_windows = make_windows(corpus, subject.tokenizer, cfg.window, cfg.explain_fraction,
                              cfg.seeds.pools, cfg.max_windows)
    n_windows, T = win.ids.shape
    log.info("%d documents → %d windows of %d tokens; %d layers × %d neurons", len(corpus.documents),
             n_windows, T, len(layers), n_per_layer)

    # Stop before writing anything if the hooks disagree with the layer's own arithmetic.
    fidelity_check(subject, torch.from_numpy(win.ids[: min(4, n_windows)]), layers, cfg.fidelity_tolerance)

    # Fixed seeded samples of windows per pool, for random and quantile records.
    rng = np.random.default_rng(cfg.seeds.records)
    sample = {}
    for p, name in enumerate(POOLS):
        in_pool = np.flatnonzero(win.pool == p)
        sample[name] = np.sort(rng.choice(in_pool, size=min(cfg.sample_windows, len(in_pool)), replace=False))
    sample_pos = {name: {int(w): i for i, w in enumerate(s)} for name, s in sample.items()}
    sample_max = {name: torch.zeros((len(s), n_total)) for name, s in sample.items()}
    k_top = {"explain": counts.explain_top, "scoring": counts.calibration_top + counts.test_top}
    for p, name in enumerate(POOLS):
        if (win.pool == p).sum() < k_top[name]:
            raise ConfigError(f"the {name} pool has {(win.pool == p).sum()} windows but {k_top[name]} top "
                              "windows per neuron are asked for: use more documents or fewer top records.")
    top = {name: TopK(n_total, k_top[name], T) for name in POOLS}
    act_sum = torch.zeros(n_total, dtype=torch.float64)
    act_sq = torch.zeros(n_total, dtype=torch.float64)
    act_max = torch.full((n_total,), -torch.inf)
    active = {name: torch.zeros(n_total, dtype=torch.int64) for name in POOLS}

    for sl, acts in forward_batches(subject, win.ids, layers, cfg.batch_size, "pass 1: all neurons"):
        flat = acts.reshape(-1, n_total)
        act_sum += flat.sum(0).double()
        act_sq += flat.square().sum(0).double()
        wmax = acts.amax(1)
        act_max = torch.maximum(act_max, wmax.amax(0))
        ids = torch.arange(sl.start, sl.stop)
        for p, name in enumerate(POOLS):
            m = torch.from_numpy(win.pool[sl] == p)
            active[name] += (wmax[m] > cfg.alive.min_activation).sum(0)
            top[name].update(wmax[m], ids[m], acts[m])
            for row, w in enumerate(ids.tolist()):
                if w in sample_pos[name]:
                    sample_max[name][sample_pos[name][w]] = wmax[row]

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
    mean = act_sum / n_tokens
    var = act_sq / n_tokens - mean.square()
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
        "build": {"torch": torch.__version__, "device": str(subject.device)},
    }
    digest = write_set(out, manifest, {"windows": windows_tab, "records": records_tab, "neurons": neurons_tab},
                       overwrite=cfg.overwrite)
    log.info("wrote %s (%d neurons, hash %s) in %.0f s", out, len(chosen), digest, time.time() - t0)
    return digest


@hydra.main(version_base="1.3", config_path="../conf", config_name="build_set")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    build(cfg)


if __name__ == "__main__":
    main()
