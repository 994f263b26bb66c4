"""Shared helpers for tests that run cells: a tiny built set and composed cell configs."""

from pathlib import Path

from hydra import compose, initialize_config_dir

from harness.build_set import build
from harness.paths import CONF_DIR


def build_tiny_set(out: Path) -> Path:
    """2 layers x 4 neurons of the random-init tiny_gpt2 on 12 Brown documents."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("build_set", overrides=[
            "subject=tiny_gpt2", "corpus.max_documents=12", f"output_dir={out}", "name=tiny", "max_windows=null",
            "sample_windows=48", "alive.min_windows=2", "alive.min_activation=0.0", "neurons_per_layer=4"])
    build(cfg)
    return out


def cell_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
