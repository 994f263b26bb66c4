"""`python -m harness [overrides]`: run one benchmark cell (or a sweep with `-m`).

Resume (sweeps, `-m`): a cell whose output directory already holds a complete, consistent result (its
`summary.json`, written last, and a `neurons.parquet` with as many rows as the summary counts, for
the same neuron set hash and the same configuration) is skipped, so re-running an interrupted
sweep with the same `hydra.sweep.dir` finishes only the missing cells; those re-use the LLM call
cache, so no paid call is repeated. `+resume=false` re-runs every cell. A single run (no `-m`)
always runs its cell (with the same call cache, so a repeat pays nothing).

An output directory holding a finished cell of a *different* configuration is refused (single runs
and sweeps alike) unless `+overwrite=true` (or, in a sweep, `+resume=false`) says to replace it.
"""

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pyarrow.parquet as pq
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.cell import results_table, run_cell
from harness.cli import exit_on_harness_error
from harness.errors import ConfigError
from harness.paths import CONF_DIR
from harness.records import resolve_set_path
from harness.redact import redact_file
from harness.rundir import finished, lock_output_dir, run_options, start_run
from harness.validation import validate_cell_config

log = logging.getLogger("harness")

# Keys that change how a cell runs but not what it computes: a finished cell is kept across them.
RUNTIME_ONLY = ("call_cache", "batch_neurons", "max_failed_fraction")
# Options added to conf/config.yaml since cells were saved, at the value that does what those cells did.
ADDED = {"evaluate_on": "test", "controls": {"floor_neurons": None}}


def finished_cell(output_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of a complete cell already in `output_dir` for this very configuration, or None.

    Complete means: summary.json parses, neurons.parquet has `n_neurons` rows, the summary's set
    hash is the configured set's current hash, and the saved configuration equals this one (up to
    runtime-only keys). A directory holding a *different* cell is an error, never overwritten."""
    summary = finished(output_dir, cfg, "cell", RUNTIME_ONLY, ADDED)
    if summary is None:
        return None
    try:
        rows = pq.read_metadata(output_dir / "neurons.parquet").num_rows
    except (OSError, ValueError) as exc:
        log.warning("re-running %s: its previous result is unreadable (%s)", output_dir, exc)
        return None
    try:
        manifest = json.loads((resolve_set_path(cfg.neuron_set.path) / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if rows != summary.get("n_neurons") or summary.get("set_hash") != manifest.get("hash"):
        log.warning("re-running %s: its previous result is inconsistent (%s rows for %s neurons; set hash %s, "
                    "set now %s)", output_dir, rows, summary.get("n_neurons"), summary.get("set_hash"),
                    manifest.get("hash"))
        return None
    return summary


@exit_on_harness_error
def check_group_lists(argv: list[str]) -> None:
    """Hydra lists a config group's options for `scorer=nope` but not for the list form
    `scorer=[nope]` (a cell's scorers): check list-valued group overrides against conf/ first."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if "=" in a and not a.startswith("-")])
    except HydraException:
        return  # Hydra reports its own syntax errors
    for override in overrides:
        group = CONF_DIR / override.key_or_group
        if override.key_or_group.startswith("hydra") or not group.is_dir():
            continue
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        names = [n for v in values if isinstance(v, list) for n in v]
        available = sorted(p.stem for p in group.glob("*.yaml"))
        unknown = sorted({str(n) for n in names} - set(available))
        if unknown:
            raise ConfigError(f"unknown {override.key_or_group} {', '.join(map(repr, unknown))} in "
                              f"{override.input_line}; available: {', '.join(available)}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and (Path(hydra_cfg.sweep.dir) / "multirun.yaml").is_file():
        redact_file(Path(hydra_cfg.sweep.dir) / "multirun.yaml")  # Hydra's copy of the sweep's config
    cell_cfg, overwrite = run_options(cfg)
    validate_cell_config(cell_cfg)
    with lock_output_dir(output_dir):
        summary = None if overwrite else finished_cell(output_dir, cell_cfg)  # refuses another configuration's cell
        if summary is not None and hydra_cfg.mode == RunMode.MULTIRUN:
            log.info("skipping %s: already complete (%d neurons, set %s)", output_dir, summary["n_neurons"],
                     summary["set_hash"][:12])
            print(f"skipped (already complete): {output_dir}")
            print(results_table(summary))
            return
        start_run(output_dir, cfg, hydra_cfg)
        summary = run_cell(cell_cfg, output_dir)
    print(results_table(summary))
    print(f"\nwrote {output_dir / 'neurons.parquet'} and {output_dir / 'summary.json'}")


if __name__ == "__main__":
    check_group_lists(sys.argv[1:])
    main()
