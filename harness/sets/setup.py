"""What every build job does first, the same in each shard job and in the merge: check the output
path, load and place the subject, cut the windows, draw the fixed samples and the shard ranges."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from harness.corpus import Corpus, load_corpus
from harness.errors import ConfigError
from harness.paths import SETS_DIR
from harness.records import check_replaceable
from harness.sets.pass1 import Pass1, shard_ranges
from harness.sets.windows import POOLS, Windows, make_windows
from harness.subject import Subject, fidelity_check, load_subject

log = logging.getLogger(__name__)

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


def record_samples(win: Windows, size: int, seed: int) -> dict[str, np.ndarray]:
    """Per pool, a fixed seeded sample of `size` windows (sorted ids), for random and quantile records."""
    rng = np.random.default_rng(seed)
    sample = {}
    for p, name in enumerate(POOLS):
        in_pool = np.flatnonzero(win.pool == p)
        sample[name] = np.sort(rng.choice(in_pool, size=min(size, len(in_pool)), replace=False))
    return sample


def top_counts(win: Windows, counts) -> dict[str, int]:
    """How many top windows pass 1 keeps per neuron in each pool (refused when a pool has fewer)."""
    k_top = {"explain": counts.explain_top, "scoring": counts.calibration_top + counts.test_top}
    for p, name in enumerate(POOLS):
        if (win.pool == p).sum() < k_top[name]:
            raise ConfigError(f"the {name} pool has {(win.pool == p).sum()} windows but {k_top[name]} top "
                              "windows per neuron are asked for: use more documents or fewer top records.")
    return k_top


def prepare(cfg: DictConfig) -> Setup:
    """Load and place the subject, cut the corpus into windows and check the hooks, before any pass."""
    subject = load_subject(cfg.subject)
    place_subject(subject, cfg.device, cfg.dtype)
    layers = list(cfg.layers) if cfg.layers is not None else list(range(subject.neurons.n_layers))
    subject.check_layers(layers)
    n_per_layer = subject.neurons.n_neurons
    if cfg.neurons_per_layer > n_per_layer:
        raise ConfigError(f"neurons_per_layer={cfg.neurons_per_layer} but {subject.name} has {n_per_layer} per layer")
    corpus = load_corpus(cfg.corpus)
    win, pools, n_all_windows = make_windows(corpus, subject.tokenizer, cfg.window, cfg.explain_fraction,
                                             cfg.seeds.pools, cfg.max_windows)
    n_windows, T = win.ids.shape
    log.info("%d documents → %d windows of %d tokens; %d layers × %d neurons", len(corpus.documents),
             n_windows, T, len(layers), n_per_layer)
    ranges = shard_ranges(n_windows, cfg.batch_size, cfg.shards)

    # Stop before writing anything if the hooks disagree with the layer's own arithmetic.
    fidelity_check(subject, torch.from_numpy(win.ids[: min(4, n_windows)]), layers, cfg.fidelity_tolerance)
    sample = record_samples(win, cfg.sample_windows, cfg.seeds.records)
    return Setup(subject, layers, corpus, win, pools, n_all_windows, sample, top_counts(win, cfg.counts), ranges)
