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

This module runs the steps; each lives in `harness.sets` (see its docstring for the map).
"""

from __future__ import annotations

import logging
import time

import hydra
import numpy as np
from omegaconf import DictConfig

from harness.cli import exit_on_harness_error
from harness.records import write_set
from harness.sets.accumulators import ExactSum, TopK
from harness.sets.draw import alive_mask, draw_neurons
from harness.sets.pass1 import Pass1, run_pass1, shard_ranges
from harness.sets.plan import Planner, read_sampled
from harness.sets.setup import output_path, prepare
from harness.sets.shards import pass1_state, remove_shards, shard_dir, shard_job
from harness.sets.tables import manifest, neurons_table, records_table, windows_table
from harness.sets.windows import POOLS, Windows, make_windows

# What other modules and tests use from here.
__all__ = ["POOLS", "ExactSum", "Pass1", "TopK", "Windows", "build", "main", "make_windows", "run_pass1",
           "shard_dir", "shard_ranges"]

log = logging.getLogger(__name__)


def build(cfg: DictConfig) -> str | None:
    """Build the set (returns its hash); with `shard=J`, only compute shard J's pass-1 file (None)."""
    t0 = time.time()
    out = output_path(cfg)
    setup = prepare(cfg)
    if cfg.shard is not None:
        shard_job(cfg, setup, out)
        return None
    state = pass1_state(cfg, setup, out)
    assert all(np.array_equal(state.sample_windows[p], setup.sample[p]) for p in POOLS)

    # One generator, in this order: the draw, the neurons' fixed order, then their records.
    rng = np.random.default_rng(cfg.seeds.neurons)
    alive = alive_mask({name: a.cpu() for name, a in state.active.items()}, cfg.alive.min_windows)
    chosen = draw_neurons(alive, setup.layers, cfg.neurons_per_layer, rng)
    order = rng.permutation(len(chosen))  # the fixed order `neuron_set.limit` takes from
    plan, quantiles, planner = [], {}, Planner(state, setup.sample, cfg.counts, rng)
    for f in chosen:
        records, quantiles[f] = planner.records(f)
        plan += records
    plan = read_sampled(setup.subject, setup.win, setup.layers, cfg.batch_size, plan)

    tables = {"windows": windows_table(setup, plan), "records": records_table(setup, plan),
              "neurons": neurons_table(setup, state, chosen, order, quantiles)}
    info = manifest(cfg, setup, state, int(alive.sum()), planner.calibration_ranks, time.time() - t0)
    digest = write_set(out, info, tables, overwrite=cfg.overwrite)
    remove_shards(shard_dir(out))
    log.info("wrote %s (%d neurons, hash %s) in %.0f s", out, len(chosen), digest, time.time() - t0)
    return digest


@hydra.main(version_base="1.3", config_path="../conf", config_name="build_set")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    build(cfg)


if __name__ == "__main__":
    main()
