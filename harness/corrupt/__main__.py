"""`python -m harness.corrupt [overrides]`: one corruption of the subject, measured against the
clean model (`-m` sweeps, e.g. `-m corruption=skip_last corruption.n=0,5,10`).

Each run writes into its Hydra output directory `results.parquet` (one row per measure), then
`summary.json` (written last: its presence marks a finished run), `report.md` and
`corruption.png`. As with cells, a sweep re-run with the same `hydra.sweep.dir` skips finished
jobs of the same configuration; a directory holding another configuration's result is refused
unless `+overwrite=true`; a lock on the directory keeps two runs apart. When a sweep ends, its
jobs are aggregated into the sweep directory (harness/corrupt/report.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from harness import __version__
from harness.__main__ import git_commit, save_hydra_config
from harness.cell import _write_atomic, lock_output_dir
from harness.cli import exit_on_harness_error
from harness.corrupt import check_measure, corruption_spec, make_probe, measure
from harness.corrupt.report import write_report
from harness.errors import ConfigError
from harness.redact import redact
from harness.subject import load_subject

log = logging.getLogger(__name__)
RUN_OPTIONS = ("resume", "overwrite")


def run_corruption(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    t0 = time.time()
    m = check_measure(cfg.measure)
    subject = load_subject(cfg.subject)
    corruption = corruption_spec(cfg.corruption, subject.neurons.n_layers)
    log.info("%s on %s: layers run %s", corruption.label, subject.name, list(corruption.order))
    probe = make_probe(subject, cfg.corpus, m)
    rows = pd.DataFrame(measure(subject, corruption, probe, m))
    _write_atomic(output_dir / "results.parquet", lambda p: rows.to_parquet(p, index=False))
    summary = {"harness_version": __version__, "subject": subject.name, "weights_digest": subject.weights_digest,
               "corruption": corruption.label, "order": list(corruption.order), "windows": probe.window_ids,
               "headline": {r.measure: r.value for r in rows.itertuples() if pd.isna(r.prompt)},
               "wall_seconds": round(time.time() - t0, 2), "config": redact(OmegaConf.to_container(cfg, resolve=True))}
    _write_atomic(output_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
    write_report(rows, output_dir)
    return summary


def finished(output_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of a finished run of this very configuration in `output_dir`, or None; a
    finished run of another configuration is refused."""
    try:
        summary = json.loads((output_dir / "summary.json").read_text())
        pd.read_parquet(output_dir / "results.parquet", columns=["measure"])
    except (OSError, ValueError):
        return None
    if summary.get("config") != redact(OmegaConf.to_container(cfg, resolve=True)):
        raise ConfigError(f"{output_dir} already holds a finished corruption run with a different configuration; "
                          "choose another output directory (hydra.run.dir / hydra.sweep.dir) or pass "
                          "+overwrite=true to replace it.")
    return summary


@hydra.main(version_base="1.3", config_path="../../conf", config_name="corrupt")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    overwrite = bool(cfg.get("overwrite", False)) or not bool(cfg.get("resume", True))
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        for option in RUN_OPTIONS:
            run_cfg.pop(option, None)
    check_measure(run_cfg.measure)
    with lock_output_dir(output_dir):
        summary = None if overwrite else finished(output_dir, run_cfg)
        if summary is not None:
            print(f"skipped (already complete): {output_dir} ({summary['corruption']})")
            return
        (output_dir / "summary.json").unlink(missing_ok=True)
        save_hydra_config(output_dir, cfg, hydra_cfg)
        provenance = {"harness_version": __version__, **git_commit(), "argv": redact(sys.argv[1:])}
        (output_dir / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
        summary = run_corruption(run_cfg, output_dir)
    print(f"{summary['corruption']}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["headline"].items()))
    print(f"wrote {output_dir / 'results.parquet'}, report.md and corruption.png")


if __name__ == "__main__":
    main()
