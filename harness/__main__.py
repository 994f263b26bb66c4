"""`python -m harness [overrides]`: run one benchmark cell (or a sweep with `-m`)."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.cell import results_table, run_cell
from harness.cli import exit_on_harness_error

log = logging.getLogger("harness")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = run_cell(cfg, output_dir)
    print(results_table(summary))
    print(f"\nwrote {output_dir / 'neurons.parquet'} and {output_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
