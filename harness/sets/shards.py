"""Pass 1 split into `shards=K` consecutive ranges of whole batches, each written atomically to a
shard file next to the set (`.<name>.shards/`): a build reads the finished ones, computes only the
missing ones and merges them in window order, so a killed shard re-runs alone."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness import __version__
from harness.errors import ConfigError
from harness.rundir import write_atomic
from harness.sets.pass1 import Pass1, run_pass1
from harness.sets.setup import Setup

log = logging.getLogger(__name__)


def shard_dir(out: Path) -> Path:
    """Where a sharded build keeps its shard files until the set is written: a hidden sibling of
    the set's directory (derived from the checked output path, never from a config value)."""
    return out.parent / f".{out.name}.shards"


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
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save({"fingerprint": fp, "state": state.state()}, f))
    log.info("shard %d/%d: windows [%d, %d) in %.0f s → %s", j + 1, len(setup.ranges), lo, hi, state.seconds, path)
    return state


def remove_shards(directory: Path) -> None:
    """Delete the shard files of a finished build (and their directory, once nothing else is in it)."""
    for path in directory.glob("shard-*-of-*.pt"):
        path.unlink()
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def shard_job(cfg: DictConfig, setup: Setup, out: Path) -> None:
    """A job of a sharded build (`shard=J`): shard J's file, nothing else."""
    if not 0 <= cfg.shard < len(setup.ranges):
        raise ConfigError(f"shard={cfg.shard}: must be between 0 and shards-1={len(setup.ranges) - 1}")
    compute_shard(cfg, setup, cfg.shard, shard_dir(out), fingerprint(cfg, setup))


def pass1_state(cfg: DictConfig, setup: Setup, out: Path) -> Pass1:
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

