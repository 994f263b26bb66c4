"""The set as written: its three tables (windows, records, neurons) and its manifest."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from omegaconf import DictConfig, OmegaConf

from harness import __version__
from harness.sets.pass1 import Pass1
from harness.sets.plan import Planned
from harness.sets.setup import Setup


def windows_table(setup: Setup, plan: list[Planned]) -> pa.Table:
    """The windows the records use, with their text."""
    used = sorted({r.window for r in plan})
    win, tok = setup.win, setup.subject.tokenizer
    return pa.table({
        "window_id": pa.array(used, pa.int64()),
        "doc_id": [setup.corpus.documents[win.doc[w]].doc_id for w in used],
        "start": pa.array(win.start[used], pa.int64()),
        "token_ids": pa.array([win.ids[w].tolist() for w in used], pa.list_(pa.int32())),
        "tokens": [[tok.decode([t]) for t in win.ids[w]] for w in used],
    })


def records_table(setup: Setup, plan: list[Planned]) -> pa.Table:
    n = setup.subject.neurons.n_neurons
    return pa.table({
        "layer": pa.array([setup.layers[r.neuron // n] for r in plan], pa.int32()),
        "neuron": pa.array([r.neuron % n for r in plan], pa.int32()),
        "split": [r.split for r in plan],
        "kind": [r.kind for r in plan],
        "window_id": pa.array([r.window for r in plan], pa.int64()),
        "activations": pa.array([r.acts.tolist() for r in plan], pa.list_(pa.float32())),
    })


def neurons_table(setup: Setup, state: Pass1, chosen: list[int], order: np.ndarray,
                  quantiles: dict[int, list[float]]) -> pa.Table:
    """The chosen neurons with their statistics over every window; `order` is the fixed order
    `neuron_set.limit` takes them in (a permutation of `chosen`'s positions)."""
    n = setup.subject.neurons.n_neurons
    n_tokens = setup.win.ids.size
    mean = state.sum.value() / n_tokens
    var = state.sq.value() / n_tokens - mean.square()
    act_max = state.max.cpu()
    position = {f: int(i) for i, f in zip(np.argsort(order), chosen)}
    return pa.table({
        "order": pa.array([position[f] for f in chosen], pa.int32()),
        "layer": pa.array([setup.layers[f // n] for f in chosen], pa.int32()),
        "neuron": pa.array([f % n for f in chosen], pa.int32()),
        "mean": pa.array([float(mean[f]) for f in chosen], pa.float64()),
        "variance": pa.array([float(var[f]) for f in chosen], pa.float64()),
        "max_activation": pa.array([float(act_max[f]) for f in chosen], pa.float64()),
        "quantile_boundaries": pa.array([quantiles[f] for f in chosen], pa.list_(pa.float64())),
    })


def manifest(cfg: DictConfig, setup: Setup, state: Pass1, n_alive: int, calibration_ranks: set[int],
             wall_seconds: float) -> dict:
    """What the set is and how it was built (all hashed but `timing`)."""
    subject, corpus, layers = setup.subject, setup.corpus, setup.layers
    n_windows, T = setup.win.ids.shape
    n_tokens, n_all_windows, counts = n_windows * T, setup.n_all_windows, cfg.counts
    tok = subject.tokenizer
    return {
        "name": cfg.name,
        "harness_version": __version__,
        "subject": {"name": subject.name, "weights_digest": subject.weights_digest,
                    "activation_function": subject.neurons.activation,
                    "architecture": subject.neurons.architecture,
                    "n_layers": subject.neurons.n_layers, "neurons_per_layer": subject.neurons.n_neurons,
                    "config": OmegaConf.to_container(cfg.subject, resolve=True)},
        "tokenizer": {"name_or_path": subject.name, "vocab_size": len(tok),
                      "class": type(tok).__name__, "add_special_tokens": False},
        "corpus": {"name": corpus.name, "digest": corpus.digest, "n_documents": len(corpus.documents),
                   "n_windows": n_windows, "n_tokens": n_tokens, "n_windows_in_corpus": n_all_windows,
                   "window_subset": (f"a seeded uniform subset of {cfg.max_windows} of the corpus's {n_all_windows} "
                                     f"full windows (seed {cfg.seeds.pools})") if cfg.max_windows else "every full window",
                   "config": OmegaConf.to_container(cfg.corpus, resolve=True)},
        "pools": setup.pools,
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
            "n_alive": n_alive, "n_candidates": setup.n_total,
            "top_by": "maximum activation of the neuron within the window",
            "calibration_top_ranks": sorted(calibration_ranks),
            "random_from": f"a seeded sample of {cfg.sample_windows} windows per pool, excluding the neuron's top windows",
            "quantile_bins": f"{counts.test_quantile} equal-count bins of window maxima over the remaining scoring sample",
        },
        "build": {"torch": torch.__version__, "device": str(subject.device), "dtype": cfg.dtype},
        # Not covered by the hash: how this build ran (the same set may be built many ways).
        "timing": {"wall_seconds": round(wall_seconds, 1), "shards": len(setup.ranges),
                   "pass1_seconds": round(state.seconds, 1),
                   "pass1_tokens_per_second": round(n_tokens / state.seconds, 1) if state.seconds else None},
    }
