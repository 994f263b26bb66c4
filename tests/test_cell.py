"""The benchmark cell end to end: `python -m harness` on a tiny built set and on the frozen set."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.cell import run_cell
from harness.paths import REPO_ROOT
from tests.cells import build_tiny_set, cell_cfg
from harness.set_info import set_info

FROZEN = "smollm2-135m-brown-v1"


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return build_tiny_set(tmp_path_factory.mktemp("sets") / "tiny")


def _harness(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True)


def test_cell_writes_rows_and_summary(tiny_set, tmp_path):
    summary = run_cell(cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=5"), tmp_path)
    table = pd.read_parquet(tmp_path / "neurons.parquet")
    assert len(table) == 5 == summary["n_neurons"]
    assert table["explanation"].str.startswith("the tokens").all()
    assert {"layer", "neuron", "failure", "correlation.ev_correlation_score"} <= set(table.columns)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["set_hash"] == json.loads((tiny_set / "manifest.json").read_text())["hash"]
    block = saved["scores"]["correlation"]
    assert block["metric"] == "ev_correlation_score"
    finite = table["correlation.ev_correlation_score"].dropna()
    assert block["mean"] == pytest.approx(finite.mean())
    assert block["ci95"][0] <= block["mean"] <= block["ci95"][1]


def test_limit_takes_the_sets_fixed_order(tiny_set, tmp_path):
    run_cell(cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=3"), tmp_path / "a")
    run_cell(cell_cfg(f"neuron_set.path={tiny_set}"), tmp_path / "b")
    first = pd.read_parquet(tmp_path / "a" / "neurons.parquet")
    every = pd.read_parquet(tmp_path / "b" / "neurons.parquet")
    own = [c for c in first.columns if not c.startswith("floor.")]  # the floor borrows across the neurons run
    pd.testing.assert_frame_equal(first[own], every.head(3)[own])
    assert len(every) == 8


def test_cli_refuses_a_tampered_set(tiny_set, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_set, bad)
    table = pq.read_table(bad / "neurons.parquet").to_pandas()
    table.loc[0, "max_activation"] += 1.0
    table.to_parquet(bad / "neurons.parquet", index=False)
    proc = _harness(f"neuron_set.path={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert "fails its content hash" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
    assert set_info(str(bad))["hash_ok"] is False


def test_cli_unknown_config_name_lists_options(tmp_path):
    proc = _harness("explainer=no_such_explainer", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "no_such_explainer" in proc.stderr and "baseline_top_tokens" in proc.stderr


def test_frozen_set_is_complete_and_intact():
    info = set_info(FROZEN)
    assert info["hash_ok"] is True
    assert info["n_neurons"] == 300
    assert info["layers"] == list(range(30))
    assert info["records_per_split"] == {"explain": {"min": 30, "max": 30},
                                         "calibration": {"min": 10, "max": 10},
                                         "test": {"min": 30, "max": 30}}
    assert info["shared_docs_explain_vs_scoring"] == 0


def test_default_cell_runs_on_the_frozen_set(tmp_path):
    proc = _harness("neuron_set.limit=20", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "| correlation | ev_correlation_score (headline) |" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_neurons"] == 20
    assert summary["scores"]["correlation"]["mean"] is not None
