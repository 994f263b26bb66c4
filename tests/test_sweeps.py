"""Sweeps: Hydra multirun with the basic, joblib and submitit launchers; resume after SIGKILL
without losing a finished cell or repeating a paid call; `python -m harness.collect`; and the
issue's whole path (joblib sweep → collect → submit → verify → render) on a tiny set."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import leaderboard as lb
from harness.collect import benjamini_hochberg, cell_names, collect, main, paired_test
from harness.paths import CONF_DIR, REPO_ROOT
from tests.fake_llm_server import FakeLLMServer, GatedServer
from tests.leaderboard.test_leaderboard import lb_sets  # noqa: F401  (session fixture)

FAKE_KEY = "sk-test-sweeps-0123456789"
# Every scorer but the judges (detection, fuzzing: a 0.5B judge model per cell would take the sweep past
# its time; tests/test_cell_costs.py runs one in a cell, tests/scoring/test_detection.py on the real models).
JUDGES = {"detection", "fuzzing"}
ALL_SCORERS = "[" + ",".join(sorted(p.stem for p in (CONF_DIR / "scorer").glob("*.yaml") if p.stem not in JUDGES)) + "]"
# Keep the subject-running ablation scorer small here (the entry records it; verify re-runs it so).
SMALL_SCORERS = ["scorer.ablation.windows_per_kind={top:2,random:2,quantile:0}"] if "ablation" in ALL_SCORERS else []


def _env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _sweep(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "-m", *args], cwd=REPO_ROOT, env={**_env(), **(env or {})},
                          capture_output=True, text=True, timeout=kwargs.get("timeout", 600))


def _cells(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


# --- Statistics -------------------------------------------------------------------------------

def test_paired_test_and_fdr():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.1, 200)
    b = a + 0.05 + rng.normal(0, 0.02, 200)
    better = paired_test(b, a, seed=0)
    assert better["mean_diff"] == pytest.approx((b - a).mean()) and better["p_value"] < 0.01
    assert better["ci95"][0] < better["mean_diff"] < better["ci95"][1] and better["ci95"][0] > 0.04
    same = paired_test(a + rng.normal(0, 0.01, 200), a, seed=0)
    assert same["p_value"] > 0.01
    nan = paired_test([1.0, float("nan"), 3.0], [0.0, 1.0, float("nan")])
    assert nan["n"] == 1
    assert paired_test(a, a, seed=3) == paired_test(a, a, seed=3)  # seeded
    assert benjamini_hochberg([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.04, None, 0.04])


# --- Launchers --------------------------------------------------------------------------------

@pytest.mark.heavy
def test_slurm_launcher_config_composes():
    proc = subprocess.run([sys.executable, "-m", "harness", "hydra/launcher=slurm", "hydra.launcher.partition=cpu",
                           "--cfg", "hydra", "--package", "hydra.launcher"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in proc.stdout
    assert "partition: cpu" in proc.stdout and "timeout_min: 240" in proc.stdout


@pytest.mark.heavy
def test_submitit_local_sweep(lb_sets, tmp_path):  # noqa: F811
    out = tmp_path / "sweep"
    proc = _sweep("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={out}",
                  f"neuron_set.path={lb_sets / 'tiny'}", "explainer=baseline_top_tokens,baseline_empty")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = _cells(out)
    assert len(cells) == 2 and all((c / "summary.json").is_file() for c in cells)
    assert (out / ".submitit").is_dir()


@pytest.mark.heavy
def test_joblib_sweep_collect_submit_verify_render(lb_sets, tmp_path):  # noqa: F811
    """The issue's 'done when': 2 explainers x 2 prompts x all scorers with joblib, collected,
    submitted, verified and rendered."""
    with FakeLLMServer() as server:
        out = tmp_path / "sweep"
        proc = _sweep("hydra/launcher=local", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={out}",
                      f"neuron_set.path={lb_sets / 'tiny'}", f"call_cache={tmp_path / 'calls.sqlite'}",
                      f"scorer={ALL_SCORERS}", *SMALL_SCORERS, "explainer=baseline_top_tokens,openai",
                      "prompt=openai_tokens,top_tokens",
                      env={"OPENAI_BASE_URL": f"{server.url}/v1"})  # the SDK's own variable: baselines have no llm block
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(server.requests) == 16  # 2 prompts x 8 neurons for the openai explainer
    cells = _cells(out)
    assert len(cells) == 4 and all((c / "summary.json").is_file() for c in cells)

    table, paired = collect(out)
    assert len(table) == 4
    assert set(table["explainer"]) == {"baseline_top_tokens", "openai:gpt-4o-mini"}
    for scorer in ALL_SCORERS.strip("[]").split(","):
        assert any(c.startswith(scorer + ".") for c in table.columns)
    assert {"floor.correlation.ev_correlation_score", "ceiling.correlation.ev_correlation_score",
            "correlation.ev_correlation_score.ci_lo", "cost_usd", "wall_seconds", "calls"} <= set(table.columns)
    assert table["calls"].tolist() == [0, 8, 0, 8] or sorted(table["calls"]) == [0, 0, 8, 8]
    n_scorers = len(ALL_SCORERS.strip("[]").split(","))
    assert len(paired) == 6 * n_scorers and (paired["n_pairs"] > 0).any()
    cli = subprocess.run([sys.executable, "-m", "harness.collect", str(out), "--out", str(tmp_path / "tables")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "| correlation.ev_correlation_score [95% CI] | floor | ceiling |" in cli.stdout
    assert "| explainer=openai prompt=top_tokens |" in cli.stdout and "Paired comparisons" in cli.stdout
    assert len(pd.read_parquet(tmp_path / "tables" / "cells.parquet")) == 4
    assert len(pd.read_csv(tmp_path / "tables" / "paired.csv")) == 6 * n_scorers

    cfg = lb.load_config(entries_dir=tmp_path / "board" / "entries", sets_dir=lb_sets)
    submitted = []
    for cell in cells:
        try:
            path = lb.submit(cell, f"cell-{cell.name}", "tests", cfg)
        except lb.EntryError as exc:
            # A baseline ignores the prompt, and the fake server answers every prompt alike: the
            # second prompt's cell repeats the first one's explanations, so it is one submission.
            assert "already on the board" in str(exc)
            continue
        result = lb.verify(lb.read_entry(path, cfg), cfg)
        assert result.status == "verified", result.report()
        assert FAKE_KEY.encode() not in path.read_bytes()
        submitted.append(path)
    assert len(submitted) == 2
    md, page = lb.render(cfg)
    assert md.read_text().split("## How entries")[0].count("| tests |") == 2 * n_scorers
    assert page.stat().st_size > 10_000


# --- Resume after SIGKILL ---------------------------------------------------------------------

def _cached_calls(path: Path) -> int:
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.heavy
def test_sigkilled_sweep_resumes_without_losing_results_or_repaying(lb_sets, tmp_path):  # noqa: F811
    out, cache = tmp_path / "sweep", tmp_path / "calls.sqlite"
    args = [sys.executable, "-m", "harness", "-m", f"hydra.sweep.dir={out}", f"neuron_set.path={lb_sets / 'tiny'}",
            f"call_cache={cache}", "explainer=openai", "explainer.llm.max_retries=0", "explainer.llm.timeout=100",
            "prompt=openai_tokens,top_tokens,contrastive"]
    with GatedServer(open_for=8 + 3) as server:  # cell 0's 8 calls, then 3 of cell 1's, then it hangs
        args.insert(5, f"explainer.llm.base_url={server.url}/v1")
        sweep = subprocess.Popen(args, cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while not (server.held and _cached_calls(cache) >= 11):
            assert sweep.poll() is None and time.time() < deadline, "the sweep ended or stalled before the kill point"
            time.sleep(0.1)
        finished = out / "0" / "summary.json"
        assert finished.is_file() and not (out / "1" / "summary.json").exists()
        before = (finished.read_bytes(), (out / "0" / "neurons.parquet").read_bytes(), finished.stat().st_mtime_ns)
        os.killpg(sweep.pid, signal.SIGKILL)  # mid-cell: cell 1 is waiting on its answers
        sweep.wait(timeout=60)
        first_run = list(server.answered)
        assert len(first_run) == 11
        server.gate.set()  # let the held handlers end; the killed client is gone

        rerun = subprocess.run(args, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "skipping" in rerun.stdout + rerun.stderr
    # No completed result lost or rewritten.
    after = (finished.read_bytes(), (out / "0" / "neurons.parquet").read_bytes(), finished.stat().st_mtime_ns)
    assert after == before
    # Every cell complete; no paid (answered) call made twice.
    assert all((out / str(i) / "summary.json").is_file() for i in range(3))
    assert len(server.answered) == 24 == len(set(server.answered))
    resumed = json.loads((out / "1" / "summary.json").read_text())
    assert resumed["cost"]["cache_hits"] == 3 and resumed["cost"]["calls"] == 5
    assert resumed["n_failed"] == 0
    table, _ = collect(out)
    assert len(table) == 3


@pytest.mark.heavy
def test_a_finished_cell_of_another_configuration_is_not_overwritten(lb_sets, tmp_path):  # noqa: F811
    out = tmp_path / "sweep"
    first = _sweep(f"hydra.sweep.dir={out}", f"neuron_set.path={lb_sets / 'tiny'}", "explainer=baseline_top_tokens")
    assert first.returncode == 0, first.stderr
    other = _sweep(f"hydra.sweep.dir={out}", f"neuron_set.path={lb_sets / 'tiny'}", "explainer=baseline_empty")
    assert other.returncode != 0 and "different configuration" in other.stderr
    forced = _sweep(f"hydra.sweep.dir={out}", f"neuron_set.path={lb_sets / 'tiny'}", "explainer=baseline_empty",
                    "+resume=false")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "0" / "summary.json").read_text())["config"]["explainer"]["kind"] == "baseline_empty"
    # A cell whose table does not match its summary is re-run, not trusted.
    summary = json.loads((out / "0" / "summary.json").read_text())
    summary["n_neurons"] = 99
    (out / "0" / "summary.json").write_text(json.dumps(summary))
    again = _sweep(f"hydra.sweep.dir={out}", f"neuron_set.path={lb_sets / 'tiny'}", "explainer=baseline_empty")
    assert again.returncode == 0 and "inconsistent" in again.stdout + again.stderr
    assert json.loads((out / "0" / "summary.json").read_text())["n_neurons"] == 8


@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_collect_names_missing_and_incomplete_cells(lb_sets, tmp_path):  # noqa: F811
    from harness.cell import run_cell
    from harness.collect import incomplete_cells
    from tests.cells import cell_cfg

    out = tmp_path / "sweep"
    run_cell(cell_cfg(f"neuron_set.path={lb_sets / 'tiny'}"), out / "0")
    (out / "1").mkdir()
    (out / "1" / "provenance.json").write_text("{}")  # started, never finished (e.g. an outage)
    (out / "multirun.yaml").write_text(  # what Hydra writes: three cells were asked for
        "hydra:\n  overrides:\n    task:\n    - explainer=baseline_top_tokens,baseline_empty,baseline_weight_in\n"
        "    - neuron_set.limit=4\n")
    assert incomplete_cells(out) == {"incomplete": ["1"], "missing": ["2"]}
    table, _ = collect(out)
    assert list(table["cell"]) == ["0"]
    cli = subprocess.run([sys.executable, "-m", "harness.collect", str(out)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert "incomplete (no summary.json): 1" in cli.stdout + cli.stderr
    assert "missing: 2" in cli.stdout + cli.stderr


def test_cell_names_are_the_overrides_that_differ():
    assert cell_names([["n=4", "explainer=a", "prompt=p"], ["n=4", "explainer=b", "prompt=p"]], ["0", "1"]) == [
        "explainer=a", "explainer=b"]
    assert cell_names([["n=4", "explainer=a"]], ["0"]) == ["n=4 explainer=a"]  # nothing differs: all of them
    assert cell_names([[]], ["0"]) == ["0"]  # no overrides: the directory
    assert cell_names([["explainer=a"], ["explainer=a"]], ["s1/0", "s2/0"]) == ["explainer=a [s1/0]",
                                                                                "explainer=a [s2/0]"]


def test_collect_prints_headlines_by_name_and_writes_every_column(lb_sets, tmp_path, capsys):  # noqa: F811
    """Issue 25: a two-cell sweep prints a short table and a paired table that name cells by their
    overrides; `--all` prints the wide table; the files keep every column."""
    from harness.cell import run_cell
    from tests.cells import cell_cfg

    out = tmp_path / "sweep"
    for i, explainer in enumerate(["baseline_top_tokens", "baseline_empty"]):
        overrides = [f"neuron_set.path={lb_sets / 'tiny'}", "neuron_set.limit=4", f"explainer={explainer}",
                     "scorer=[correlation,threshold]"]
        run_cell(cell_cfg(*overrides), out / str(i))
        (out / str(i) / ".hydra").mkdir(exist_ok=True)  # what harness.__main__ writes for a sweep's cell
        (out / str(i) / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    main([str(out)])
    printed = capsys.readouterr().out
    cells, paired = (block.strip().splitlines() for block in printed.split("Paired comparisons")[:2])
    assert cells[0] == ("| cell | correlation.ev_correlation_score [95% CI] | floor | ceiling "
                        "| threshold.auroc_max50 [95% CI] | floor | ceiling | USD | wall s |")
    assert [line.split(" | ")[0] for line in cells[2:]] == ["| explainer=baseline_top_tokens",
                                                            "| explainer=baseline_empty"]
    assert all(line.count(" | ") == 8 for line in cells[2:])
    pairs = [line for line in paired if line.startswith("| explainer=")]
    assert len(pairs) == 2 and all(line.startswith("| explainer=baseline_top_tokens | explainer=baseline_empty | ")
                                   for line in pairs)

    table, _ = collect(out)
    written = pd.read_csv(out / "cells.csv")
    assert list(written.columns) == list(table.columns) and list(written["cell"]) == list(table["cell"])
    assert list(written["dir"]) == [0, 1] and "threshold.f1_q90" in written.columns
    assert set(pd.read_parquet(out / "paired.parquet")["a"]) == {"explainer=baseline_top_tokens"}

    main([str(out), "--all"])
    wide = capsys.readouterr().out.splitlines()[0]
    assert wide.startswith("| cell | dir | explainer | prompt |") and "| threshold.f1_q90 |" in wide
