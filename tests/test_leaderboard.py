"""Leaderboard entries: submit from a cell, verify by re-scoring, render; hostile entries are refused.

Runs on a tiny set built in a temporary directory (its own sets dir), so it needs neither the
frozen set nor a network."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import leaderboard as lb
from harness.cell import run_cell
from harness.paths import REPO_ROOT
from tests.cells import build_tiny_set, cell_cfg


@pytest.fixture(scope="session")
def lb_sets(tmp_path_factory) -> Path:
    """A sets directory holding one tiny set, `tiny` (2 layers x 4 neurons of tiny_gpt2)."""
    # Built once per session under the base temp dir, so the modules importing this fixture
    # (test_browser, test_sweeps) reuse it instead of building their own.
    sets = tmp_path_factory.getbasetemp() / "lb-shared" / "sets"
    if not (sets / "tiny" / "manifest.json").is_file():
        build_tiny_set(sets / "tiny")
    return sets


@pytest.fixture(scope="session")
def lb_cells(lb_sets, tmp_path_factory) -> dict[str, Path]:
    """Two finished cells on the whole tiny set: top-token and empty explainers."""
    root = tmp_path_factory.getbasetemp() / "lb-shared" / "cells"
    cells = {}
    for explainer in ("baseline_top_tokens", "baseline_empty"):
        if not (root / explainer / "summary.json").is_file():
            run_cell(cell_cfg(f"neuron_set.path={lb_sets / 'tiny'}", f"explainer={explainer}"), root / explainer)
        cells[explainer] = root / explainer
    return cells


@pytest.fixture
def board(lb_sets, lb_cells, tmp_path) -> dict:
    """A fresh leaderboard directory with both cells submitted."""
    cfg = lb.load_config(entries_dir=tmp_path / "board" / "entries", sets_dir=lb_sets)
    paths = {name: lb.submit(lb_cells[explainer], name, "tests", cfg)
             for name, explainer in (("top-tokens", "baseline_top_tokens"), ("empty", "baseline_empty"))}
    return {"cfg": cfg, "paths": paths}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _write(path: Path, entry: dict) -> Path:
    path.write_text(json.dumps(entry))
    return path


# --- submit -----------------------------------------------------------------------------------

def test_submit_writes_a_complete_schema_valid_entry(board, lb_cells):
    entry = lb.read_entry(board["paths"]["top-tokens"], board["cfg"])
    table = pd.read_parquet(lb_cells["baseline_top_tokens"] / "neurons.parquet")
    summary = _load(lb_cells["baseline_top_tokens"] / "summary.json")
    assert entry["schema_version"] == lb.SCHEMA_VERSION
    assert entry["neuron_set"] == {"name": "tiny", "hash": summary["set_hash"], "n_neurons": 8}
    assert len(entry["neurons"]) == 8 == len(table)
    assert entry["explainer"]["kind"] == "baseline_top_tokens" and entry["simulator"]["kind"] == "token_match"
    assert entry["scorers"] == {"correlation": {}}
    assert entry["summary"]["scores"]["correlation"]["mean"] == pytest.approx(summary["scores"]["correlation"]["mean"])
    assert entry["summary"]["floor"] and entry["summary"]["ceiling"]
    assert entry["harness"]["version"] and "git_commit" in entry["harness"]
    first = entry["neurons"][0]
    assert first["explanation"] == table["explanation"][0]
    assert len(first["test_simulation"]) == 30 and set(first["floor"]) == set(first["scores"])


def test_submit_refuses_incomplete_cells_and_bad_names(lb_sets, lb_cells, tmp_path):
    cfg = lb.load_config(entries_dir=tmp_path / "entries", sets_dir=lb_sets)
    partial = tmp_path / "partial"
    run_cell(cell_cfg(f"neuron_set.path={lb_sets / 'tiny'}", "neuron_set.limit=3"), partial)
    with pytest.raises(lb.EntryError, match="whole set"):
        lb.submit(partial, "partial", "t", cfg)
    # A cell whose table lost a neuron's row (summary edited to match): incomplete.
    broken = tmp_path / "broken"
    broken.mkdir()
    table = pd.read_parquet(lb_cells["baseline_top_tokens"] / "neurons.parquet").iloc[1:]
    table.to_parquet(broken / "neurons.parquet", index=False)
    summary = _load(lb_cells["baseline_top_tokens"] / "summary.json")
    summary["n_neurons"] = 7
    (broken / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(lb.EntryError, match="1 neurons missing"):
        lb.submit(broken, "broken", "t", cfg)
    for bad in ("../escape", "a/b", "..", ".hidden", "x" * 81, "", "name with space", "evil\n"):
        with pytest.raises(lb.EntryError, match="not allowed|escapes"):
            lb.submit(lb_cells["baseline_top_tokens"], bad, "t", cfg)
    assert not list((tmp_path / "entries").glob("*")) if (tmp_path / "entries").exists() else True
    assert not (tmp_path / "escape.json").exists()
    lb.submit(lb_cells["baseline_top_tokens"], "ok", "t", cfg)
    with pytest.raises(lb.EntryError, match="already exists"):
        lb.submit(lb_cells["baseline_top_tokens"], "ok", "t", cfg)


# --- verify -----------------------------------------------------------------------------------

def test_honest_entries_verify_and_the_outcome_is_recorded(board):
    cfg = board["cfg"]
    for name, path in board["paths"].items():
        result = lb.verify(lb.read_entry(path, cfg), cfg)
        assert result.status == "verified", result.report()
        assert result.checked == 8
        lb.record_verification(path, result, cfg)
        assert lb.verification_status(name, path, cfg) == "verified"
    # Editing the file afterwards voids the recorded verification.
    path = board["paths"]["top-tokens"]
    entry = _load(path)
    entry["submitter"] = "someone else"
    _write(path, entry)
    assert lb.verification_status("top-tokens", path, cfg) == "unverified"


def test_forged_scores_fail_with_a_clear_report(board):
    cfg = board["cfg"]
    entry = _load(board["paths"]["top-tokens"])
    forged = copy.deepcopy(entry)
    forged["neurons"][2]["scores"]["correlation.ev_correlation_score"] = 0.99
    result = lb.verify(lb.validate_entry(forged), cfg)
    assert result.status == "failed"
    n = forged["neurons"][2]
    assert any(f"layer {n['layer']} neuron {n['neuron']}: correlation.ev_correlation_score claimed 0.99" in p
               for p in result.problems), result.report()
    # A consistent forgery of the summary alone is caught too.
    summary_only = copy.deepcopy(entry)
    summary_only["summary"]["scores"]["correlation"]["mean"] = 0.95
    result = lb.verify(lb.validate_entry(summary_only), cfg)
    assert result.status == "failed" and any("headline mean claimed 0.95" in p for p in result.problems)


def test_stale_scores_fail(board):
    """Scores left over from other explanations (explanations edited afterwards)."""
    cfg = board["cfg"]
    entry = _load(board["paths"]["top-tokens"])
    for n in entry["neurons"]:
        n["explanation"] = "the tokens \"the\""
    result = lb.verify(lb.validate_entry(entry), cfg)
    assert result.status == "failed"
    assert any("re-scored" in p for p in result.problems)
    assert any("stored test simulation differs" in p for p in result.problems)


def test_api_simulator_without_key_is_unverified(board, monkeypatch):
    cfg = board["cfg"]
    entry = _load(board["paths"]["top-tokens"])
    entry["simulator"] = {"kind": "llm_all_at_once", "backend": "openai", "model": "gpt-4o-mini",
                          "parameters": {"llm": {"api_key_env": "NEURONBENCH_TEST_MISSING_KEY"}}}
    monkeypatch.delenv("NEURONBENCH_TEST_MISSING_KEY", raising=False)
    result = lb.verify(lb.validate_entry(entry), cfg)
    assert result.status == "unverified"
    assert "NEURONBENCH_TEST_MISSING_KEY" in result.report()


def test_verify_cli_exit_codes(board):
    cfg = board["cfg"]
    base = [sys.executable, "-m", "harness.leaderboard", "--entries-dir", str(cfg["entries_dir"]),
            "--sets-dir", str(cfg["sets_dir"])]
    ok = subprocess.run([*base, "verify", "top-tokens"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "top-tokens: VERIFIED" in ok.stdout
    assert _load(cfg["entries_dir"].parent / "verification.json")["top-tokens"]["status"] == "verified"
    forged = _load(board["paths"]["top-tokens"])
    forged["neurons"][0]["scores"]["correlation.rsquared"] = 1.0
    bad = _write(cfg["entries_dir"].parent / "forged.json", forged)
    proc = subprocess.run([*base, "verify", str(bad)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "FAILED" in proc.stdout and "correlation.rsquared claimed 1" in proc.stdout


# --- hostile entries --------------------------------------------------------------------------

@pytest.fixture
def honest(board) -> tuple[dict, dict]:
    return _load(board["paths"]["top-tokens"]), board["cfg"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinite_numbers_are_refused(honest, tmp_path, literal):
    entry, cfg = honest
    text = json.dumps(entry).replace('"correlation.ev_correlation_score":', '"correlation.ev_correlation_score": ' + literal + ', "x":', 1)
    text = json.dumps(entry)
    key = '"correlation.rsquared": '
    i = text.index(key) + len(key)
    j = text.index(",", i)
    path = tmp_path / "entry.json"
    path.write_text(text[:i] + literal + text[j:])
    with pytest.raises(lb.EntryError, match="NaN and infinite numbers are not allowed"):
        lb.read_entry(path, cfg)


def test_duplicate_neurons_are_refused(honest):
    entry, _ = honest
    entry["neurons"][1] = copy.deepcopy(entry["neurons"][0])
    with pytest.raises(lb.EntryError, match="duplicate neuron"):
        lb.validate_entry(entry)


def test_unknown_set_hash_and_set_names_are_refused(honest):
    entry, cfg = honest
    forged = copy.deepcopy(entry)
    forged["neuron_set"]["hash"] = "0" * 64
    result = lb.verify(lb.validate_entry(forged), cfg)
    assert result.status == "failed" and "unknown set hash" in result.report()
    for bad_name in ("../tiny", "/etc", "tiny/../tiny"):
        traversal = copy.deepcopy(entry)
        traversal["neuron_set"]["name"] = bad_name
        with pytest.raises(lb.EntryError, match="does not match schema"):
            lb.validate_entry(traversal)
    missing = copy.deepcopy(entry)
    missing["neuron_set"]["name"] = "no-such-set"
    assert "unknown neuron set" in lb.verify(lb.validate_entry(missing), cfg).report()


@pytest.mark.parametrize("mutate, match", [
    (lambda e: e.update({"__reduce__": "os.system"}), "Additional properties"),
    (lambda e: e.update({"schema_version": 99}), "schema_version"),
    (lambda e: e.update({"name": "../../etc/passwd"}), "name"),
    (lambda e: e["neurons"][0].update({"layer": "0; rm -rf /"}), "layer"),
    (lambda e: e["neurons"][0].update({"explanation": "x" * 5000}), "explanation"),
    (lambda e: e["neurons"][0].update({"explanation": None, "failure": None}), "neither an explanation"),
    (lambda e: e["neurons"].pop(), "neurons listed"),
    (lambda e: e["explainer"]["parameters"].update({"api_key": "sk-live-123"}), "secrets"),
    (lambda e: e["neurons"][0]["scores"].update({"correlation.score": "0.5"}), "scores"),
    (lambda e: e.update({"submitter": "a\u0000b"}), "submitter"),
    (lambda e: e["neurons"][0]["test_simulation"][0].__setitem__(1, "7"), "not a number"),
    (lambda e: e["neurons"][0]["test_simulation"][0].__setitem__(1, True), "not a number"),
    (lambda e: e["neurons"][0]["test_simulation"].__setitem__(0, {"x": 1}), "test_simulation"),
])
def test_malformed_entries_are_refused(honest, mutate, match):
    entry, _ = honest
    mutate(entry)
    with pytest.raises(lb.EntryError, match=match):
        lb.validate_entry(entry)


def test_size_limit_symlinks_and_non_objects(honest, tmp_path):
    entry, cfg = honest
    path = _write(tmp_path / "big.json", entry)
    with pytest.raises(lb.EntryError, match="over the limit"):
        lb.read_entry(path, {**cfg, "max_entry_bytes": 1000})
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(lb.EntryError, match="symbolic link"):
        lb.read_entry(link, cfg)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(lb.EntryError, match="JSON object"):
        lb.read_entry(tmp_path / "list.json", cfg)
    (tmp_path / "pickle.json").write_bytes(b"\x80\x04\x95")  # a pickle is never unpickled
    with pytest.raises(lb.EntryError):
        lb.read_entry(tmp_path / "pickle.json", cfg)


def test_submit_never_writes_an_api_key(lb_cells, lb_sets, tmp_path, monkeypatch):
    cfg = lb.load_config(entries_dir=tmp_path / "entries", sets_dir=lb_sets)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-in-entries-123")
    path = lb.submit(lb_cells["baseline_top_tokens"], "keyless", "t", cfg)
    assert b"sk-test-never-in-entries" not in path.read_bytes()
    assert lb._clean_params({"llm": {"api_key": "x", "api_key_env": "OPENAI_API_KEY",
                                     "base_url": "https://user:pw@host/v1", "max_tokens": 5}}) == \
        {"llm": {"api_key_env": "OPENAI_API_KEY", "base_url": "https://host/v1", "max_tokens": 5}}


# --- render -----------------------------------------------------------------------------------

def test_render_ranks_escapes_and_rejects(board, tmp_path):
    cfg = board["cfg"]
    for path in board["paths"].values():
        lb.record_verification(path, lb.verify(lb.read_entry(path, cfg), cfg), cfg)
    # A hostile but schema-valid entry: markup in the explanation and submitter.
    evil = _load(board["paths"]["empty"])
    evil["name"] = "evil"
    evil["submitter"] = "<img src=x onerror=alert(1)> | pipe"
    for n in evil["neurons"]:
        n["explanation"] = "</script><script>alert(1)</script> <!--"
    _write(cfg["entries_dir"] / "evil.json", evil)
    _write(cfg["entries_dir"] / "misnamed.json", _load(board["paths"]["empty"]))  # name inside is "empty"
    (cfg["entries_dir"] / "garbage.json").write_text("{not json")
    md, page = lb.render(cfg)
    text = md.read_text()
    assert "| 1 | top-tokens |" in text and "| verified |" in text
    assert "## tiny (" in text and "ev_correlation_score" in text
    assert "<img" not in text and "&lt;img" in text and "\\| pipe" in text
    assert "misnamed.json" in text and "garbage.json" in text  # listed as rejected
    html_text = page.read_text()
    assert "</script><script>alert(1)" not in html_text
    assert "<img src=x" not in html_text and "<!--" not in html_text.split('id="data">', 1)[1]
    assert "https://" not in html_text.replace("https://neuronbench", "")  # nothing fetched from a network
    data = json.loads(html_text.split('id="data">', 1)[1].split("</script>", 1)[0])
    assert {e["name"] for e in data["entries"]} == {"top-tokens", "empty", "evil"}
    assert data["entries"][0]["neurons"][0]["sim"] is not None


# --- the committed board ----------------------------------------------------------------------

def test_committed_board_is_valid_verified_and_up_to_date(tmp_path):
    """Every entry under leaderboard/entries/ passes the schema and set-hash checks, is recorded
    as verified for its exact bytes, and the committed README.md/index.html are what render gives."""
    cfg = lb.load_config()
    entries, rejected = lb.load_entries(cfg)
    assert entries and not rejected
    assert {lb.verification_status(entry["name"], path, cfg) for path, entry in entries} == {"verified"}
    md, page = lb.render(cfg, out_dir=tmp_path)
    board_dir = cfg["entries_dir"].parent
    assert md.read_text() == (board_dir / "README.md").read_text(), "run: python -m harness.leaderboard render"
    assert page.read_text() == (board_dir / "index.html").read_text(), "run: python -m harness.leaderboard render"
