"""The benchmark cell end to end: `python -m harness` on a tiny built set and on the frozen set."""

import json
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from omegaconf import OmegaConf

from harness.cell import floor_partners, run_cell
from harness.errors import ConfigError, SetIntegrityError
from harness.paths import CONF_DIR, REPO_ROOT
from harness.components import SCORERS
from harness.records import load_set
from harness.scoring.correlation import pooled
from harness.simulate import TokenMatchSimulator
from harness.validation import config_rules, leaves, rule_for, validate_cell_config
from tests.cells import build_tiny_set, cell_cfg
from tests.fake_llm_server import FakeLLMServer
from harness.set_info import set_info

FROZEN = ("smollm2-135m-brown-v1", "smollm2-135m-brown-v2")  # v2 is the default set


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
    scores = table["correlation.ev_correlation_score"]
    # The headline is over every neuron, an undefined correlation counting as 0 (no information);
    # the mean over defined neurons and the coverage stand beside it.
    assert block["mean"] == pytest.approx(scores.fillna(0.0).mean())
    assert block["mean_defined"] == pytest.approx(scores.dropna().mean())
    assert block["n"] == 5 and block["n_defined"] == scores.notna().sum() and block["coverage"] == block["n_defined"] / 5
    assert block["ci95"][0] <= block["mean"] <= block["ci95"][1]


def test_undefined_scores_count_at_the_no_information_value(tiny_set, tmp_path):
    """A cell whose explanations name nothing (constant predictions: every correlation undefined)
    has headline 0 over all neurons and coverage 0; AUROC's no-information value is 0.5."""
    summary = run_cell(cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=4", "explainer=baseline_empty",
                                "scorer=[correlation,threshold]"), tmp_path)
    corr, thr = summary["scores"]["correlation"], summary["scores"]["threshold"]
    assert corr["n_defined"] == 0 and corr["mean_defined"] is None
    assert corr["mean"] == 0.0 and corr["ci95"] == [0.0, 0.0] and corr["coverage"] == 0.0
    assert thr["metric"] == "auroc_max50" and thr["no_information"] == 0.5
    assert thr["metrics"]["f1_max50"]["mean"] is None  # F1 has no fixed no-information value


def test_floor_of_a_single_neuron_is_undefined(tiny_set, tmp_path):
    """With one explained neuron there is no other explanation to borrow: no floor, not the neuron's own."""
    summary = run_cell(cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=1"), tmp_path)
    table = pd.read_parquet(tmp_path / "neurons.parquet")
    assert table["correlation.ev_correlation_score"].notna().all()
    assert "floor.correlation.ev_correlation_score" not in table or table["floor.correlation.ev_correlation_score"].isna().all()
    assert summary["floor"]["correlation"]["n_defined"] == 0


def test_a_floor_on_a_sample_simulates_and_summarises_only_the_sample(tiny_set, tmp_path):
    """controls.floor_neurons=3: three seeded neurons get the floor, each borrowing the explanation the
    full floor would give it; the floor's summary is over those three, the scores' over all eight."""
    full = floor_partners(list(range(8)), 0)
    sample = floor_partners(list(range(8)), 0, 3)
    assert len(sample) == 3 and all(full[i] == j for i, j in sample.items())
    assert sample == floor_partners(list(range(8)), 0, 3) != floor_partners(list(range(8)), 1, 3)
    assert floor_partners(list(range(8)), 0, 8) == full
    summary = run_cell(cell_cfg(f"neuron_set.path={tiny_set}", "controls.floor_neurons=3"), tmp_path)
    table = pd.read_parquet(tmp_path / "neurons.parquet")
    floored = table.filter(like="floor.").notna().any(axis=1)
    assert floored.any() and not floored[~table.index.isin(list(sample))].any()
    assert summary["floor"]["correlation"]["n"] == 3 and summary["scores"]["correlation"]["n"] == 8
    assert summary["config"]["controls"]["floor_neurons"] == 3


def test_limit_takes_the_sets_fixed_order(tiny_set, tmp_path):
    run_cell(cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=3"), tmp_path / "a")
    run_cell(cell_cfg(f"neuron_set.path={tiny_set}"), tmp_path / "b")
    first = pd.read_parquet(tmp_path / "a" / "neurons.parquet")
    every = pd.read_parquet(tmp_path / "b" / "neurons.parquet")
    own = [c for c in first.columns if not c.startswith("floor.")]  # the floor borrows across the neurons run
    pd.testing.assert_frame_equal(first[own], every.head(3)[own])
    assert len(every) == 8


def test_a_cells_hypothesis_loop_is_judged_on_calibration_never_test(tiny_set, tmp_path, monkeypatch):
    """explainer=hypothesis_loop in a cell: every hypothesis is scored with the cell's simulator and
    first scorer on the neuron's calibration split, and the best there is kept."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-0123456789abcdefghijklmnopqrstuv")
    answer = '1. the token is "the"\n2. the token is ","\n3. the token is "."\n4. the token is "of"'
    with FakeLLMServer(reply=lambda request: answer) as server:
        cfg = cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=3", "explainer=hypothesis_loop",
                       "explainer.rounds=1", "~explainer.llm",
                       f'+explainer.llm={{backend:openai,model:gpt-4o-mini,base_url:"{server.url}/v1",timeout:5,'
                       'max_retries:0}', f"call_cache={tmp_path / 'calls.sqlite'}", "controls.floor=false",
                       "controls.ceiling=false")
        summary = run_cell(cfg, tmp_path / "cell")
        requests = len(server.requests)
    assert requests == 3 * 2 and summary["cost"]["calls"] == requests  # its calls go through the cell's ledger
    rows = pd.read_parquet(tmp_path / "cell" / "neurons.parquet")
    simulator, differs = TokenMatchSimulator(), 0

    def pearson(records, text):
        real, pred = pooled(records, simulator.simulate(text, records), {"top", "random"})
        return float(np.corrcoef(real, pred)[0, 1]) if pred.std() > 0 and real.std() > 0 else math.nan

    for neuron, row in zip(load_set(tiny_set, limit=3).neurons, rows.itertuples()):
        tried = json.loads(row.details)["hypotheses"]
        assert [t["round"] for t in tried] == [0] * 4 + [1] * 4
        for t in tried:
            on_calibration, on_test = pearson(neuron.calibration, t["text"]), pearson(neuron.test, t["text"])
            assert t["calibration_score"] == pytest.approx(on_calibration, abs=1e-6, nan_ok=True)
            differs += on_calibration != pytest.approx(on_test, abs=1e-6, nan_ok=True)
        best = max((t for t in tried if not math.isnan(t["calibration_score"])), key=lambda t: t["calibration_score"])
        assert row.explanation == best["text"]
    assert differs  # the splits tell the hypotheses apart differently: the check above could fail


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_cli_unknown_config_name_lists_options(tmp_path):
    proc = _harness("explainer=no_such_explainer", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "no_such_explainer" in proc.stderr and "baseline_top_tokens" in proc.stderr


@pytest.mark.parametrize("name", FROZEN)
def test_frozen_set_is_complete_and_intact(name):
    info = set_info(name)
    assert info["hash_ok"] is True
    assert info["n_neurons"] == 300
    assert info["layers"] == list(range(30))
    assert info["records_per_split"] == {"explain": {"min": 30, "max": 30},
                                         "calibration": {"min": 10, "max": 10},
                                         "test": {"min": 30, "max": 30}}
    assert info["shared_docs_explain_vs_scoring"] == 0


@pytest.mark.heavy
def test_default_cell_runs_on_the_frozen_set(tmp_path):
    proc = _harness("neuron_set.limit=20", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "| correlation | ev_correlation_score (headline) |" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_neurons"] == 20
    assert summary["config"]["neuron_set"]["path"] == "smollm2-135m-brown-v2"
    assert summary["scores"]["correlation"]["mean"] is not None


@pytest.mark.heavy
def test_single_run_refuses_a_finished_cell_of_another_configuration(tiny_set, tmp_path):
    run = tmp_path / "run"
    first = _harness(f"neuron_set.path={tiny_set}", "explainer=baseline_top_tokens", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr
    before = (run / "summary.json").read_bytes()
    same = _harness(f"neuron_set.path={tiny_set}", "explainer=baseline_top_tokens", f"hydra.run.dir={run}")
    assert same.returncode == 0, same.stderr  # the same configuration: a repeat is fine
    other = _harness(f"neuron_set.path={tiny_set}", "explainer=baseline_empty", f"hydra.run.dir={run}")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "ConfigError" in other.stderr and str(run) in other.stderr and "+overwrite=true" in other.stderr
    assert json.loads((run / "summary.json").read_text())["config"]["explainer"]["kind"] == "baseline_top_tokens"
    assert json.loads(before)["config"] == json.loads((run / "summary.json").read_text())["config"]
    forced = _harness(f"neuron_set.path={tiny_set}", "explainer=baseline_empty", f"hydra.run.dir={run}",
                      "+overwrite=true")
    assert forced.returncode == 0, forced.stderr
    saved = json.loads((run / "summary.json").read_text())
    assert saved["config"]["explainer"]["kind"] == "baseline_empty" and "overwrite" not in saved["config"]


@pytest.mark.heavy
def test_second_run_on_a_busy_output_directory_fails_clearly(tiny_set, tmp_path):
    import fcntl

    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "w") as held:  # another run holds the directory
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = _harness(f"neuron_set.path={tiny_set}", f"hydra.run.dir={run}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "OutputBusyError" in proc.stderr and str(run) in proc.stderr
    written = {p.name for p in run.iterdir()}
    assert not written & {".hydra", "provenance.json", "summary.json", "neurons.parquet"}, written


# --- Validating a cell's configuration ----------------------------------------------------------

@pytest.mark.parametrize("override, option", [
    ("neuron_set.limit=-1", "neuron_set.limit"), ("neuron_set.limit=true", "neuron_set.limit"),
    ("neuron_set.limit=abc", "neuron_set.limit"), ("neuron_set.limit=1.5", "neuron_set.limit"),
    ("neuron_set.limit=0", "neuron_set.limit"), ("batch_neurons=0", "batch_neurons"),
    ("stats.bootstrap_resamples=-5", "stats.bootstrap_resamples"), ("controls.floor=2", "controls.floor"),
    ("controls.floor_neurons=1", "controls.floor_neurons"),
    ("explainer=openai", None), ("explainer=openai explainer.llm.timeout=0", "explainer.llm.timeout"),
    ("explainer=openai explainer.sampling.n=0", "explainer.sampling.n"),
    ("scorer=[threshold] scorer.threshold.quantiles=[0.9,1.5]", "scorer.threshold.quantiles.1"),
])
def test_numeric_options_are_checked_at_load(tiny_set, tmp_path, override, option):
    cfg = cell_cfg(f"neuron_set.path={tiny_set}", *override.split())
    if option is None:
        validate_cell_config(cfg)  # the shipped defaults pass
        return
    with pytest.raises(ConfigError, match=re.escape(option) + "=") as err:
        run_cell(cfg, tmp_path)
    assert "must be" in str(err.value)
    assert not (tmp_path / "summary.json").exists()


def test_limit_null_and_a_positive_limit_pass(tiny_set):
    validate_cell_config(cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=null"))
    validate_cell_config(cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=3"))


def test_every_numeric_option_of_every_config_has_a_rule():
    """A new numeric option in conf/ must get a rule: on its component's params class, or in
    harness.validation.RULES."""
    groups = {g: sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml"))
              for g in ("explainer", "prompt", "simulator", "scorer", "pricing", "neuron_set")}
    for group, names in groups.items():
        for name in names:
            override = f"scorer=[{name}]" if group == "scorer" else f"{group}={name}"
            tree = OmegaConf.to_container(cell_cfg(override), resolve=True)
            for path, value in leaves(tree).items():
                if isinstance(value, (bool, int, float)):
                    assert rule_for(path, config_rules(tree)) is not None, f"{group}={name}: no rule for {'.'.join(path)}"


@pytest.mark.heavy
def test_unknown_scorer_in_a_list_lists_the_available_ones(tmp_path):
    proc = _harness("scorer=[correlation,nope]", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "nope" in proc.stderr and ", ".join(sorted(SCORERS)) in proc.stderr
    proc = _harness("-m", "scorer=[correlation],[nope]", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode != 0 and ", ".join(sorted(SCORERS)) in proc.stderr


def test_scorer_unknown_to_the_registry_is_named(tiny_set):
    with pytest.raises(ConfigError, match=f"unknown scorer 'nope'; available: {', '.join(sorted(SCORERS))}"):
        validate_cell_config(cell_cfg(f"neuron_set.path={tiny_set}", "+scorer.nope={}"))


@pytest.mark.heavy
def test_cli_bad_limit_is_one_line_without_traceback(tmp_path):
    proc = _harness("neuron_set.limit=abc", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "ConfigError" in proc.stderr and "neuron_set.limit='abc'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_set_path_says_it_does_not_exist(tmp_path):
    with pytest.raises(SetIntegrityError, match="does not exist"):
        run_cell(cell_cfg(f"neuron_set.path={tmp_path / 'nowhere'}"), tmp_path / "run")


@pytest.mark.heavy
def test_a_failed_overwrite_leaves_no_result_of_the_replaced_cell(tiny_set, tmp_path):
    run = tmp_path / "run"
    assert _harness(f"neuron_set.path={tiny_set}", f"hydra.run.dir={run}").returncode == 0
    failed = _harness(f"neuron_set.path={tmp_path / 'missing'}", f"hydra.run.dir={run}", "+overwrite=true")
    assert failed.returncode == 2 and "does not exist" in failed.stderr
    assert not (run / "summary.json").exists()  # else the old result would sit beside the new .hydra/
