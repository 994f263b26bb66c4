"""Choosing a prompt on calibration: `evaluate_on=calibration` scores the calibration split and
never becomes a leaderboard entry; `python -m harness.prompt_sweep` picks the prompt with the
highest calibration mean. On the tiny set, with a loopback OpenAI server as the explainer."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness import leaderboard as lb
from harness.cell import run_cell
from harness.errors import CellFailedError, ConfigError
from harness.collect import collect
from harness.prompt_sweep import PromptSweepError, choose, main
from harness.records import load_set
from harness.scoring.correlation import correlation_scores
from harness.simulate import make_simulator
from harness.paths import REPO_ROOT
from harness.validation import validate_cell_config
from tests.cells import cell_cfg
from tests.fake_llm_server import FakeLLMServer
from tests.leaderboard.test_leaderboard import lb_cells, lb_sets  # noqa: F401  (session fixtures)

FAKE_KEY = "sk-test-prompt-sweep-0123456789"
HEADLINE = "correlation.ev_correlation_score"


def _top_token_reply(body: dict) -> str:
    """The first token a top_tokens prompt lists; a non-answer to any other prompt: the two prompts
    then get different explanations, and so different calibration means."""
    listed = re.search(r'^- "(.+?)": ', body["messages"][-1]["content"], re.M)
    return f'the main thing this neuron does is find the token "{listed.group(1)}".' if listed else \
        "the main thing this neuron does is find nothing in particular."


def test_evaluate_on_calibration_scores_the_calibration_split(lb_sets, tmp_path):  # noqa: F811
    """Each neuron's score is its explanation's score on calibration (computed here from the split),
    not on test; the explanations are the same; nothing is fitted, so calibrated metrics are undefined."""
    base = [f"neuron_set.path={lb_sets / 'tiny'}", "explainer=baseline_top_tokens"]
    on_test = run_cell(cell_cfg(*base), tmp_path / "test")
    on_cal = run_cell(cell_cfg(*base, "evaluate_on=calibration"), tmp_path / "cal")
    assert (on_test["evaluate_on"], on_cal["evaluate_on"]) == ("test", "calibration")
    test_rows, cal_rows = (pd.read_parquet(tmp_path / d / "neurons.parquet") for d in ("test", "cal"))
    assert list(cal_rows["explanation"]) == list(test_rows["explanation"])

    simulator = make_simulator(cell_cfg(*base).simulator)
    neurons = load_set(lb_sets / "tiny").neurons
    for split, rows in (("calibration", cal_rows), ("test", test_rows)):
        expected = [correlation_scores(getattr(n, split), simulator.simulate(text, getattr(n, split)))
                    ["ev_correlation_score"] for n, text in zip(neurons, rows["explanation"])]
        np.testing.assert_allclose(rows[HEADLINE], expected, rtol=1e-6, atol=1e-6)
    assert [len(s) for s in cal_rows["test_simulation"]] == [len(n.calibration) for n in neurons]
    assert not np.allclose(cal_rows[HEADLINE].fillna(0), test_rows[HEADLINE].fillna(0))  # the splits differ
    assert cal_rows["correlation.rsquared"].isna().all() and test_rows["correlation.rsquared"].notna().any()
    assert on_cal["scores"]["correlation"]["mean"] != on_test["scores"]["correlation"]["mean"]


def test_a_cell_saved_before_the_option_resumes_as_scored_on_test(lb_sets, tmp_path):  # noqa: F811
    """A finished cell whose saved config has no `evaluate_on` (written before the option existed) is
    the same cell as evaluate_on=test, and another cell than evaluate_on=calibration."""
    from harness.__main__ import finished_cell

    base = [f"neuron_set.path={lb_sets / 'tiny'}", "neuron_set.limit=2"]
    run_cell(cell_cfg(*base), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    del summary["evaluate_on"], summary["config"]["evaluate_on"]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert finished_cell(tmp_path, cell_cfg(*base))["n_neurons"] == 2
    with pytest.raises(ConfigError, match="different configuration"):
        finished_cell(tmp_path, cell_cfg(*base, "evaluate_on=calibration"))


@pytest.mark.parametrize("overrides, named", [
    (["evaluate_on=validation"], "evaluate_on='validation' must be 'test' or 'calibration'"),
    (["scorer=[correlation,ablation]"], "scorer ablation"),
    (["scorer=[embedding]", "scorer.embedding.active=q90"], "scorer.embedding.active=q90"),
    (["explainer=hypothesis_loop"], "explainer=hypothesis_loop"),
    (["explainer=hf_local", "explainer.sampling.n=3"], "explainer.sampling.n>1"),
])
def test_what_calibration_cannot_score_is_refused(overrides, named):
    cfg = cell_cfg("evaluate_on=calibration", *overrides)
    with pytest.raises(ConfigError, match=re.escape(named)):
        validate_cell_config(cfg)
    if overrides[0] != "evaluate_on=validation":
        validate_cell_config(cell_cfg(*overrides))  # the same cell on test runs


@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_a_calibration_cell_is_never_an_entry(lb_sets, lb_cells, tmp_path):  # noqa: F811
    """On the whole set, otherwise like a cell that submits: `submit` and `submit-sweep` refuse it."""
    cfg = lb.load_config(entries_dir=tmp_path / "entries", sets_dir=lb_sets)
    cell = tmp_path / "sweep" / "0"
    run_cell(cell_cfg(f"neuron_set.path={lb_sets / 'tiny'}", "explainer=baseline_top_tokens",
                      "evaluate_on=calibration"), cell)
    with pytest.raises(lb.EntryError, match="evaluate_on=calibration"):
        lb.submit(cell, "on-calibration", "tests", cfg)
    cli = subprocess.run([sys.executable, "-m", "harness.leaderboard", "--entries-dir", str(tmp_path / "entries"),
                          "--sets-dir", str(lb_sets), "submit-sweep", str(tmp_path / "sweep")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode != 0 and "evaluate_on=calibration" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "entries").exists() or not list((tmp_path / "entries").iterdir())
    lb.submit(lb_cells["baseline_top_tokens"], "on-test", "tests", cfg)  # the same explainer, scored on test


def _report(out: Path, explainer: str) -> tuple[dict, str]:
    return json.loads((out / f"{explainer}.json").read_text()), (out / f"{explainer}.md").read_text()


@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_the_collector_picks_the_highest_calibration_mean(lb_sets, tmp_path):  # noqa: F811
    """A Hydra sweep of two prompts on calibration; the report's choice is the prompt whose cell
    has the higher mean over every neuron (recomputed here from neurons.parquet)."""
    sweep = tmp_path / "sweep"
    with FakeLLMServer(_top_token_reply) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "harness", "-m", "evaluate_on=calibration", f"neuron_set.path={lb_sets / 'tiny'}",
             "explainer=openai", f"explainer.llm.base_url={server.url}/v1", "prompt=openai_tokens,top_tokens",
             f"call_cache={tmp_path / 'calls.sqlite'}", f"hydra.sweep.dir={sweep}"],
            cwd=REPO_ROOT, env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    means = {}
    for cell in (sweep / "0", sweep / "1"):
        summary = json.loads((cell / "summary.json").read_text())
        means[summary["config"]["prompt"]["kind"]] = pd.read_parquet(cell / "neurons.parquet")[HEADLINE].fillna(0).mean()
    assert abs(means["top_tokens"] - means["openai_tokens"]) > 1e-3
    best, other = sorted(means, key=means.get, reverse=True)

    main([str(sweep), "--out", str(tmp_path / "reports")])
    report, md = _report(tmp_path / "reports", "openai")
    assert report["chosen"] == best and report["tied"] == []
    assert [p["prompt"] for p in report["prompts"]] == [best, other]
    assert [p["mean"] for p in report["prompts"]] == pytest.approx([means[best], means[other]], abs=1e-6)
    assert all(p["ci95"][0] <= p["mean"] <= p["ci95"][1] for p in report["prompts"])
    assert report["evaluate_on"] == "calibration" and report["metric"] == HEADLINE and report["n_neurons"] == 8
    [pair] = report["paired"]
    assert pair["other"] == other and pair["mean_diff"] == pytest.approx(means[best] - means[other], abs=1e-6)
    assert f"Chosen prompt: **{best}**." in md and "evaluate_on=calibration" in report["command"]

    # A cell scored on test may not take part in the choice.
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep, mixed)
    summary = json.loads((mixed / "1" / "summary.json").read_text())
    (mixed / "1" / "summary.json").write_text(json.dumps({**summary, "evaluate_on": "test"}))
    with pytest.raises(PromptSweepError, match=r"1 cell\(s\) .* scored on test \(1\)"):
        choose(collect(mixed)[0], mixed)


def test_a_tie_goes_to_the_prompt_whose_name_sorts_first(lb_sets, tmp_path, monkeypatch):  # noqa: F811
    """The server answers two prompts alike: equal explanations, equal means, a tie, said so. It
    answers a third with nothing: that cell fails, and the report names it instead of choosing it."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    sweep = tmp_path / "sweep"
    alike = FakeLLMServer().reply
    with FakeLLMServer(lambda body: "" if "What separates" in body["messages"][-1]["content"] else alike(body)) as server:
        for i, prompt in enumerate(["top_tokens", "openai_tokens", "contrastive"]):
            overrides = [f"neuron_set.path={lb_sets / 'tiny'}", "neuron_set.limit=4", "evaluate_on=calibration",
                         "explainer=openai", f"prompt={prompt}"]
            cfg = cell_cfg(*overrides, f"explainer.llm.base_url={server.url}/v1", f"call_cache={tmp_path / 'calls.sqlite'}")
            (sweep / str(i) / ".hydra").mkdir(parents=True)  # what harness.__main__ writes for a sweep's cell
            (sweep / str(i) / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
            OmegaConf.save(cfg, sweep / str(i) / ".hydra" / "config.yaml")
            if prompt == "contrastive":
                with pytest.raises(CellFailedError, match="4 of 4 neurons failed"):
                    run_cell(cfg, sweep / str(i))
            else:
                run_cell(cfg, sweep / str(i))
    main([str(sweep), "--out", str(tmp_path / "reports")])
    report, md = _report(tmp_path / "reports", "openai")
    assert report["prompts"][0]["mean"] == report["prompts"][1]["mean"]
    assert report["chosen"] == "openai_tokens" and report["tied"] == ["top_tokens"]
    assert "Chosen prompt: **openai_tokens** (tied with top_tokens)." in md
    assert report["without_result"] == [{"dir": "2", "explainer": "openai", "prompt": "contrastive",
                                         "why": "4 of 4 neurons failed"}]
    assert "contrastive (cell 2: 4 of 4 neurons failed)" in md
