"""`python -m harness.corrupt [overrides]`: one corruption of the subject, measured against the
clean model (`-m` sweeps, e.g. `-m corruption=skip_last corruption.n=0,5,10`).

Each run writes into its Hydra output directory `results.parquet` (one row per measure),
`report.md`, `corruption.png` and then `summary.json` (written last: its presence marks a finished
run; harness/rundir.py). As with cells, a sweep re-run with the same `hydra.sweep.dir` skips finished
jobs of the same configuration; a directory holding another configuration's result is refused
unless `+overwrite=true`; a lock on the directory keeps two runs apart. When a sweep ends, its
jobs are aggregated into the sweep directory (harness/corrupt/report.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness import __version__
from harness.cli import exit_on_harness_error
from harness.corrupt import check_measure, corruption_spec, make_probe, measure
from harness.corrupt.report import write_report
from harness.rundir import finished, lock_output_dir, mark_done, run_options, saved_config, start_run, write_atomic
from harness.subject import load_subject

log = logging.getLogger(__name__)


def run_corruption(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    t0 = time.time()
    m = check_measure(cfg.measure)
    subject = load_subject(cfg.subject)
    corruption = corruption_spec(cfg.corruption, subject.neurons.n_layers)
    log.info("%s on %s: layers run %s", corruption.label, subject.name, list(corruption.order))
    probe = make_probe(subject, cfg.corpus, m)
    rows = pd.DataFrame(measure(subject, corruption, probe, m))
    write_atomic(output_dir / "results.parquet", lambda f: rows.to_parquet(f, index=False))
    summary = {"harness_version": __version__, "subject": subject.name, "weights_digest": subject.weights_digest,
               "corruption": corruption.label, "order": list(corruption.order), "windows": probe.window_ids,
               "headline": {r.measure: r.value for r in rows.itertuples() if pd.isna(r.prompt)},
               "wall_seconds": round(time.time() - t0, 2), "config": saved_config(cfg)}
    write_report(rows, output_dir)
    mark_done(output_dir, summary)
    return summary


def finished_run(output_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of a finished run of this very configuration in `output_dir`, or None; a
    finished run of another configuration is refused."""
    summary = finished(output_dir, cfg, "corruption run")
    if summary is None:
        return None
    try:
        pd.read_parquet(output_dir / "results.parquet", columns=["measure"])
    except (OSError, ValueError):
        return None
    return summary


@hydra.main(version_base="1.3", config_path="../../conf", config_name="corrupt")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    run_cfg, overwrite = run_options(cfg)
    check_measure(run_cfg.measure)
    with lock_output_dir(output_dir):
        summary = None if overwrite else finished_run(output_dir, run_cfg)
        if summary is not None:
            print(f"skipped (already complete): {output_dir} ({summary['corruption']})")
            return
        start_run(output_dir, cfg, hydra_cfg)
        summary = run_corruption(run_cfg, output_dir)
    print(f"{summary['corruption']}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["headline"].items()))
    print(f"wrote {output_dir / 'results.parquet'}, report.md and corruption.png")


if __name__ == "__main__":
    main()
