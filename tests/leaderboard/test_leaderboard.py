"""Leaderboard entries: submit from a cell, verify by re-scoring, render; hostile entries are refused.

Runs on a tiny set built in a temporary directory (its own sets dir), so it needs neither the
frozen set nor a network."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import leaderboard as lb
from harness.cell import run_cell
from harness.components import SIMULATORS
from harness.paths import REPO_ROOT
from harness.text import canonical_json
from tests.cells import build_tiny_set, cell_cfg
from tests.fake_llm_server import FakeLLMServer


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
    assert entry["simulator"] == {"kind": "token_match", "backend": None, "model": None, "parameters": {"high": 10.0}}
    headline = entry["summary"]["scores"]["correlation"]
    assert headline["mean"] == pytest.approx(summary["scores"]["correlation"]["mean"])
    assert headline["n"] == 8 and headline["coverage"] == headline["n_defined"] / 8 and headline["no_information"] == 0
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
    with pytest.raises(lb.EntryError, match="already on the board as 'ok'"):  # the same cell under a second name
        lb.submit(lb_cells["baseline_top_tokens"], "ok-again", "t", cfg)


# --- verify -----------------------------------------------------------------------------------

def test_honest_entries_verify_and_the_outcome_is_recorded_by_file(board):
    cfg = board["cfg"]
    for name, path in board["paths"].items():
        entry = lb.read_entry(path, cfg)
        result = lb.verify(entry, cfg)
        assert result.status == "verified", result.report()
        assert result.checked == 8 == result.of
        lb.record_verification(path, result, entry, cfg)
    records = _load(cfg["entries_dir"].parent / "verification.json")
    assert set(records) == {"top-tokens", "empty"}
    record = records["top-tokens"]
    assert record["status"] == "verified" and record["entry_sha256"] == lb.file_sha256(board["paths"]["top-tokens"])
    assert record["harness_version"] and len(record["components_digest"]) == 64


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


def test_an_entry_with_a_floor_on_a_sample_verifies_and_its_sample_is_fixed(lb_sets, tmp_path):
    """controls.floor_neurons travels into the entry; verify re-draws the same sample, so a floor
    claimed outside it, or a sample size changed after the run, fails."""
    cell = tmp_path / "cell"
    run_cell(cell_cfg(f"neuron_set.path={lb_sets / 'tiny'}", "controls.floor_neurons=3"), cell)
    cfg = lb.load_config(entries_dir=tmp_path / "board" / "entries", sets_dir=lb_sets)
    entry = _load(lb.submit(cell, "sampled-floor", "tests", cfg))
    assert entry["controls"] == {"floor": True, "ceiling": True, "floor_neurons": 3}
    assert entry["summary"]["floor"]["correlation"]["n"] == 3
    assert lb.verify(lb.validate_entry(entry), cfg).status == "verified"
    outside = copy.deepcopy(entry)
    n = next(n for n in outside["neurons"] if all(v is None for v in (n.get("floor") or {}).values()))
    n["floor"] = {"correlation.ev_correlation_score": 0.5}
    assert lb.verify(lb.validate_entry(outside), cfg).status == "failed"
    resized = copy.deepcopy(entry)
    resized["controls"]["floor_neurons"] = 4
    assert lb.verify(lb.validate_entry(resized), cfg).status == "failed"


def test_api_simulator_without_the_verifiers_key_is_pending(board, monkeypatch):
    """The key variable is the verifier's (conf/explainer/openai.yaml), never the entry's."""
    cfg = board["cfg"]
    entry = _load(board["paths"]["top-tokens"])
    entry["simulator"] = {"kind": "json", "backend": "openai", "model": "gpt-4o-mini", "parameters": {}}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = lb.verify(lb.validate_entry(entry), cfg)
    assert result.status == "pending" and "OPENAI_API_KEY" in result.report()


@pytest.mark.heavy
def test_an_api_outage_leaves_the_entry_pending_not_failed(board, monkeypatch):
    """The verifier's own endpoint (here: the SDK's OPENAI_BASE_URL in the verifier's environment)
    answers 500 to everything: an outage is not a verdict."""
    cfg = board["cfg"]
    entry = _load(board["paths"]["top-tokens"])
    entry["simulator"] = {"kind": "json", "backend": "openai", "model": "gpt-4o-mini", "parameters": {}}
    with FakeLLMServer() as server:
        server.faults = ["500"] * 1000
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-verifier")
        monkeypatch.setenv("NEURONBENCH_CACHE", str(cfg["entries_dir"].parent / "cache"))
        result = lb.verify(lb.validate_entry(entry), cfg)
    assert server.requests, "the verifier's own endpoint was asked"
    assert result.status == "pending" and "did not answer" in result.note, result.report()


@pytest.mark.heavy
def test_verify_cli_exit_codes(board):
    cfg = board["cfg"]
    base = [sys.executable, "-m", "harness.leaderboard", "--entries-dir", str(cfg["entries_dir"]),
            "--sets-dir", str(cfg["sets_dir"])]
    ok = subprocess.run([*base, "verify", "top-tokens"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "top-tokens: VERIFIED" in ok.stdout
    assert _load(cfg["entries_dir"].parent / "verification.json")["top-tokens"]["status"] == "verified"
    forged = _load(board["paths"]["top-tokens"])
    forged["neurons"][0]["scores"]["correlation.ev_correlation_score"] = 1.0
    bad = _write(cfg["entries_dir"].parent / "top-tokens.json", forged)  # outside the entries dir: not recorded
    proc = subprocess.run([*base, "verify", str(bad)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "FAILED" in proc.stdout and "correlation.ev_correlation_score claimed 1" in proc.stdout
    assert _load(cfg["entries_dir"].parent / "verification.json")["top-tokens"]["status"] == "verified"


@pytest.mark.heavy
def test_a_misnamed_file_is_refused_and_cannot_overwrite_another_entrys_record(board):
    """zz-evil.json whose internal name is another entry's: refused, and the genuine record stays."""
    cfg = board["cfg"]
    base = [sys.executable, "-m", "harness.leaderboard", "--entries-dir", str(cfg["entries_dir"]),
            "--sets-dir", str(cfg["sets_dir"])]
    assert subprocess.run([*base, "verify", "top-tokens"], cwd=REPO_ROOT, capture_output=True).returncode == 0
    genuine = _load(cfg["entries_dir"].parent / "verification.json")["top-tokens"]
    forged = _load(board["paths"]["top-tokens"])
    forged["neurons"][0]["scores"]["correlation.ev_correlation_score"] = 1.0
    evil = _write(cfg["entries_dir"] / "zz-evil.json", forged)
    proc = subprocess.run([*base, "verify", str(evil)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "does not match the entry's name 'top-tokens'" in proc.stdout
    assert _load(cfg["entries_dir"].parent / "verification.json")["top-tokens"] == genuine


# --- the verifier's own infrastructure --------------------------------------------------------

class Listener:
    """A loopback TCP listener that records every connection and the bytes it receives."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.received.append(conn.recv(65536) or b"<connected>")
                except OSError:
                    self.received.append(b"<connected>")

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


HOSTILE = {
    "base_url": lambda e, url: e["simulator"]["parameters"].update({"llm": {"base_url": url}}),
    "api_key_env": lambda e, url: e["simulator"]["parameters"].update(
        {"llm": {"base_url": url, "api_key_env": "NB_DEPLOY_TOKEN"}}),
    "call_cache": lambda e, url: e["simulator"]["parameters"].update({"call_cache": "/tmp/nb-evil-cache.sqlite"}),
    "subject": lambda e, url: e["simulator"]["parameters"].update({"llm": {"subject": "../../../../tmp/x"}}),
    "backend": lambda e, url: e["simulator"].update({"backend": "openai_compatible", "model": "m"}),
    "scorer": lambda e, url: e["scorers"]["correlation"].update({"device": "cuda"}),
}


@pytest.mark.heavy
@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_verify_and_render_never_use_entry_infrastructure(board, attack, monkeypatch):
    """A hostile json-simulator entry that names its own server, key variable, cache or subject:
    verify and render refuse it naming the field, and a listener at its address receives nothing
    although the verifier holds secrets."""
    cfg = board["cfg"]
    listener = Listener()
    try:
        url = f"http://127.0.0.1:{listener.port}/v1"
        entry = _load(board["paths"]["top-tokens"])
        entry["name"] = "hostile"
        entry["simulator"] = {"kind": "json", "backend": "openai", "model": "gpt-4o-mini", "parameters": {}}
        HOSTILE[attack](entry, url)
        path = _write(cfg["entries_dir"] / "hostile.json", entry)
        env = {**os.environ, "OPENAI_API_KEY": "sk-verifier-secret-1", "NB_DEPLOY_TOKEN": "deploy-secret-2",
               "NEURONBENCH_CACHE": str(cfg["entries_dir"].parent / "cache")}
        base = [sys.executable, "-m", "harness.leaderboard", "--entries-dir", str(cfg["entries_dir"]),
                "--sets-dir", str(cfg["sets_dir"])]
        proc = subprocess.run([*base, "verify", str(path)], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "may not be set by an entry" in proc.stdout or "not allowed on the board" in proc.stdout, proc.stdout
        render = subprocess.run([*base, "render"], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
        assert render.returncode == 0, render.stderr
        board_md = (cfg["entries_dir"].parent / "README.md").read_text()
        assert "hostile.json" in board_md.split("Rejected entry files")[1]
        assert "| top-tokens |" in board_md  # the rest of the board renders
        time.sleep(0.3)
    finally:
        listener.close()
    assert listener.received == []
    assert not Path("/tmp/nb-evil-cache.sqlite").exists()


@pytest.mark.parametrize("mutate, match", [
    (lambda e: e["simulator"].update({"kind": "oracle_quantized"}), "controls are not entries"),
    (lambda e: e["simulator"].update({"kind": "no_such_simulator"}), "not allowed on the board"),
    (lambda e: e["simulator"]["parameters"].update({"high": "1; rm -rf /"}), "not a plain number"),
    (lambda e: e["simulator"].update({"backend": "openai", "model": "x"}), "uses no LLM"),
    (lambda e: e["scorers"].update({"evil": {}}), r"unknown scorer\(s\) \['evil'\]"),
])
def test_components_outside_the_allow_list_are_refused(honest, mutate, match):
    entry, cfg = honest
    mutate(entry)
    with pytest.raises(lb.EntryError, match=match):
        lb.resolve_components(lb.validate_entry(entry))
    assert lb.verify(entry, cfg).status == "failed"


@pytest.mark.parametrize("backend, model, match", [
    ("openai_compatible", "local-model", r"simulator.backend 'openai_compatible' is not allowed on the board; "
                                         r"allowed: \['anthropic', 'hf_local', 'openai'\]"),
    ("hf_local", "qwen25_coder_05b_instruct", r"not allowed for backend 'hf_local'; allowed: \['smollm2_135m_instruct'\]"),
    ("openai", "gpt-4o mini; rm", "not a plain model name"),
])
def test_the_backend_model_fields_say_which_simulator_models_an_entry_may_name(honest, backend, model, match):
    """The models an entry's simulator may name are data on each backend's `model` field
    (harness/params.py): hf_local lists its verifiable labels, openai takes any plain name, and
    openai_compatible none."""
    entry, _ = honest
    entry["simulator"] = {"kind": "all_at_once", "backend": backend, "model": model, "parameters": {}}
    with pytest.raises(lb.EntryError, match=match):
        lb.resolve_components(lb.validate_entry(entry))


def test_allowed_parameters_reach_the_simulator(honest):
    entry, cfg = honest
    entry["simulator"]["parameters"] = {"high": 5.0}
    simulator, scorers = lb.resolve_components(entry)
    assert simulator == {"kind": "token_match", "high": 5.0} and scorers == {"correlation": {}}
    entry["simulator"] = {"kind": "json", "backend": "anthropic", "model": "claude-3-5-haiku-latest", "parameters": {}}
    simulator, _ = lb.resolve_components(entry)
    assert simulator["llm"]["api_key_env"] == "ANTHROPIC_API_KEY" and simulator["llm"]["model"] == "claude-3-5-haiku-latest"


def test_an_explainer_model_needs_no_allow_list(honest):
    """Verification re-scores an entry's explanations and never reruns its explainer, so an entry
    naming any explainer model (here the offline Qwen2.5-Coder-1.5B) verifies; the models a backend's
    `model` field lets an entry give are about the simulator that verification rebuilds."""
    from harness.components import BACKENDS

    entry, cfg = honest
    entry["explainer"] = {"kind": "llm", "backend": "hf_local", "model": "qwen25_coder_15b_instruct", "parameters": {}}
    assert "qwen25_coder_15b_instruct" not in BACKENDS.component("hf_local").entry_values("model")
    result = lb.verify(lb.validate_entry(entry), cfg)
    assert result.status == "verified", result.report()


def test_an_allowed_hf_local_simulator_model_is_rebuilt_on_its_own_weights(honest):
    """An hf_local model name is only a label: the weights are the block's `subject`. Verification
    puts the entry's model name on the simulator's default block, so a name may join the allow-list
    only where that block loads the weights conf/explainer/ gives that model."""
    import yaml

    from harness.components import BACKENDS
    from harness.paths import CONF_DIR

    entry, cfg = honest
    presets = [yaml.safe_load(p.read_text())["llm"] for p in sorted((CONF_DIR / "explainer").glob("hf_local*.yaml"))]
    subject_of = {llm["model"]: llm["subject"] for llm in presets}
    for model in BACKENDS.component("hf_local").entry_values("model"):
        entry["simulator"] = {"kind": "all_at_once", "backend": "hf_local", "model": model, "parameters": {}}
        simulator, _ = lb.resolve_components(entry)
        assert simulator["llm"]["subject"] == subject_of[model], model


def test_a_literal_all_at_once_entry_is_verified_with_its_literal_flag(honest):
    """simulator=all_at_once_literal is all_at_once with `literal: true`: the entry keeps the flag
    (an allowed parameter), so verification rebuilds that simulator, not the plain one."""
    from omegaconf import OmegaConf

    from harness.leaderboard.entry import components
    from harness.paths import CONF_DIR

    entry, cfg = honest
    literal = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "simulator" / "all_at_once_literal.yaml"))
    config = {"explainer": {"kind": "top_tokens"}, "simulator": literal, "scorer": {"correlation": {}}}
    entry["simulator"] = components(config)["simulator"]
    assert entry["simulator"]["parameters"] == {"literal": True}
    simulator, _ = lb.resolve_components(entry)
    assert simulator == {"kind": "all_at_once", **SIMULATORS.component("all_at_once").defaults(), **literal}


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
    (lambda e: e["stats"].update({"bootstrap_resamples": 100_000}), "bootstrap_resamples"),
    (lambda e: e["neurons"][0]["test_simulation"][0].__setitem__(1, "7"), "not a number"),
    (lambda e: e["neurons"][0]["test_simulation"][0].__setitem__(1, True), "not a number"),
    (lambda e: e["neurons"][0]["test_simulation"].__setitem__(0, {"x": 1}), "test_simulation"),
])
def test_malformed_entries_are_refused(honest, mutate, match):
    entry, _ = honest
    mutate(entry)
    with pytest.raises(lb.EntryError, match=match):
        lb.validate_entry(entry)


@pytest.mark.parametrize("text, match", [
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),           # 400 KB of nesting
    ('{"a": ' * 50 + "1" + "}" * 50, "nested too deeply"),           # within the parser's limit, over ours
    ('{"schema_version": ' + "9" * 5000 + "}", "integer of 5000 digits"),
])
def test_unbounded_json_is_an_entry_error(honest, tmp_path, text, match):
    _, cfg = honest
    path = tmp_path / "bomb.json"
    path.write_text(text)
    with pytest.raises(lb.EntryError, match=match):
        lb.read_entry(path, cfg)


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
    assert lb.clean_params({"llm": {"api_key": "x", "api_key_env": "OPENAI_API_KEY",
                                     "base_url": "https://user:pw@host/v1", "max_tokens": 5}}) == \
        {"llm": {"api_key_env": "OPENAI_API_KEY", "base_url": "https://host/v1", "max_tokens": 5}}


# --- render -----------------------------------------------------------------------------------

def _entry_file(cfg, source: Path, name: str, mutate=lambda e: None) -> Path:
    entry = _load(source)
    entry["name"] = name
    mutate(entry)
    return _write(cfg["entries_dir"] / f"{name}.json", entry)


def _forge_mean(value):
    def mutate(entry):
        entry["summary"]["scores"]["correlation"]["mean"] = value
        for n in entry["neurons"]:  # a different cell, so not a duplicate
            n["explanation"] = (n["explanation"] or "") + f" {value}"
    return mutate


def test_render_ranks_verified_entries_only_escapes_and_lists_the_rest(board, tmp_path):
    cfg = board["cfg"]
    # Forged headlines (0.95, 1e308), a hand-written "verified" record for one of them, markup,
    # a misnamed file, a duplicate under another name, garbage and a JSON bomb.
    forged = _entry_file(cfg, board["paths"]["top-tokens"], "forged", _forge_mean(0.95))
    _entry_file(cfg, board["paths"]["top-tokens"], "huge", _forge_mean(1e308))
    (cfg["entries_dir"].parent / "verification.json").write_text(json.dumps({"forged": {
        "status": "verified", "entry_sha256": lb.file_sha256(forged), "checked": 8, "of": 8, "problems": [],
        "note": "", "name": "forged", "signature": "0" * 64}}))
    def evil(e):
        e["submitter"] = "<img src=x onerror=alert(1)> | pipe"
        for n in e["neurons"]:  # quoted: token_match predicts 0 everywhere, as for the empty entry it copies
            n["explanation"] = '"</script><script>alert(1)</script> <!--"'
    _entry_file(cfg, board["paths"]["empty"], "evil", evil)
    _write(cfg["entries_dir"] / "misnamed.json", _load(board["paths"]["empty"]))  # name inside is "empty"
    tomorrow = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)).isoformat()  # the latest allowed
    _entry_file(cfg, board["paths"]["top-tokens"], "copycat", lambda e: e.update(date=tomorrow))
    (cfg["entries_dir"] / "garbage.json").write_text("{not json")
    (cfg["entries_dir"] / "bomb.json").write_text("[" * 100_000 + "]" * 100_000)
    md, page = lb.render(cfg)
    text = md.read_text()
    ranked, unranked = text.split("## Not ranked")
    assert "| 1 | top-tokens |" in ranked and "| evil |" in ranked and "| empty |" in ranked
    for name in ("forged", "huge", "copycat"):
        assert f"| {name} |" not in ranked
    failed = unranked.split("### Failed verification")[1].split("###")[0]
    assert "forged.json: summary scores.correlation headline mean claimed 0.95" in failed and "huge.json" in failed
    rejected = unranked.split("### Rejected entry files")[1]
    assert "copycat.json: a duplicate of top-tokens" in rejected
    assert "misnamed.json" in rejected and "garbage.json" in rejected and "bomb.json: " in rejected
    assert "<img" not in text and "&lt;img" in text and "\\| pipe" in text
    assert "## How entries are trusted" in text
    html_text = page.read_text()
    assert "</script><script>alert(1)" not in html_text
    assert "<img src=x" not in html_text and "<!--" not in html_text.split('id="data">', 1)[1]
    assert "https://" not in html_text.replace("https://neuronbench", "")  # nothing fetched from a network
    data = json.loads(html_text.split('id="data">', 1)[1].split("</script>", 1)[0])
    assert {e["name"] for e in data["entries"]} == {"top-tokens", "empty", "evil"}
    assert {u["name"]: u["status"] for u in data["unranked"]}["forged.json"] == "failed"
    # Per-entry and per-neuron data are script files beside the page: escaped the same way.
    payloads = {f.relative_to(md.parent / "data").as_posix(): f.read_text() for f in (md.parent / "data").rglob("*.js")}
    assert set(payloads) >= {"entries/top-tokens.js", "entries/empty.js", "entries/evil.js"}
    assert not any(name.startswith("entries/forged") for name in payloads)
    assert all("</script" not in text and "<!--" not in text and "<img" not in text for text in payloads.values())
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in payloads["entries/evil.js"]
    neuron = next(text for name, text in payloads.items() if name.startswith("neurons/"))
    assert '"top-tokens":{' in neuron and '"sim":[[' in neuron


def _sign(record: dict, key: str) -> str:
    body = {k: v for k, v in record.items() if k != "signature"}
    return hmac.new(key.encode(), canonical_json(body).encode(), hashlib.sha256).hexdigest()


def test_api_entries_are_ranked_only_with_a_signed_record(board, monkeypatch):
    """An entry whose simulator is behind an API is pending until verify, run with the
    maintainers' key, records its outcome; an edited or unsigned record counts for nothing."""
    cfg = board["cfg"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = _entry_file(cfg, board["paths"]["top-tokens"], "api", lambda e: e.update(
        simulator={"kind": "json", "backend": "openai", "model": "gpt-4o-mini", "parameters": {}}))
    entry = lb.read_entry(path, cfg)
    status = lambda: {a.path.stem: a.status for a in lb.assess(cfg)}["api"]  # noqa: E731
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "maintainers-secret")
    assert status() == "pending"
    # What verify in the maintainers' CI would record after re-scoring (here: stated, as no API is reachable).
    lb.record_verification(path, lb.Verification("api", "verified", 30, 8), entry, cfg)
    assert status() == "verified"
    records_file = cfg["entries_dir"].parent / "verification.json"
    records = _load(records_file)
    records["api"]["checked"] = 8  # any edit breaks the signature
    records_file.write_text(json.dumps(records))
    assert status() == "pending"
    records["api"]["signature"] = _sign(records["api"], "a-guessed-key")
    records_file.write_text(json.dumps(records))
    assert status() == "pending"
    records["api"]["signature"] = _sign(records["api"], "maintainers-secret")
    records_file.write_text(json.dumps(records))
    assert status() == "verified"
    monkeypatch.delenv("NEURONBENCH_VERIFY_KEY")  # a renderer without the key cannot check a record
    assert status() == "pending"
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "maintainers-secret")
    _write(path, {**_load(path), "submitter": "someone else"})  # the entry changed since it was verified
    assert status() == "pending"


def test_llm_simulators_are_verified_on_a_keyed_subset(honest, monkeypatch):
    entry, cfg = honest
    cfg = {**cfg, "verify": {**cfg["verify"], "sample_neurons": 3}}
    from harness.leaderboard.verify import _chosen
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "k1")
    a = _chosen("json", 8, "ab" * 32, cfg)
    assert len(a) == 3 and a == _chosen("json", 8, "ab" * 32, cfg)
    assert _chosen("token_match", 8, "ab" * 32, cfg) == list(range(8))
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "k2")
    draws = {tuple(_chosen("json", 8, "ab" * 32, cfg))}
    for key in ("k3", "k4", "k5", "k6"):
        monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", key)
        draws.add(tuple(_chosen("json", 8, "ab" * 32, cfg)))
    assert len(draws) > 1  # the subset depends on the secret, not only on the file


def test_subset_verification_checks_the_drawn_neurons_and_the_whole_summary(honest, monkeypatch):
    """Verification of a subset (as for LLM simulators; token_match made to take that path here):
    the drawn neurons are re-scored, the seed is reported, a forged drawn neuron fails."""
    entry, cfg = honest
    cfg = {**cfg, "verify": {**cfg["verify"], "full": [], "sample_neurons": 3}}
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "k")
    from harness.leaderboard.verify import _chosen
    sha = "cd" * 32
    result = lb.verify(entry, cfg, entry_sha256=sha)
    assert result.status == "verified", result.report()
    assert (result.checked, result.of) == (3, 8) and result.subset_seed is not None and "subset of 3 of 8" in result.note
    drawn = _chosen("token_match", 8, sha, cfg)
    forged = copy.deepcopy(entry)
    forged["neurons"][drawn[0]]["scores"]["correlation.ev_correlation_score"] = 0.99
    assert lb.verify(forged, cfg, entry_sha256=sha).status == "failed"


# --- the committed board ----------------------------------------------------------------------

@pytest.mark.heavy
def test_committed_board_is_valid_verified_and_up_to_date(tmp_path):
    """Every entry under leaderboard/entries/ passes every check and re-verifies now, and the
    committed README.md, index.html and data/ are what render gives."""
    cfg = lb.load_config()
    assessed = lb.assess(cfg)
    assert assessed and {a.status for a in assessed} == {"verified"}, [(a.path.name, a.reason) for a in assessed]
    md, page = lb.render(cfg, out_dir=tmp_path)
    board_dir = cfg["entries_dir"].parent
    assert md.read_text() == (board_dir / "README.md").read_text(), "run: python -m harness.leaderboard render"
    assert page.read_text() == (board_dir / "index.html").read_text(), "run: python -m harness.leaderboard render"
    rendered = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "data").rglob("*")) if p.is_file()}
    committed = {p.relative_to(board_dir): p.read_bytes() for p in sorted((board_dir / "data").rglob("*")) if p.is_file()}
    assert rendered.keys() == committed.keys() and rendered == committed, "run: python -m harness.leaderboard render"


def test_explainer_labels_name_the_model_an_explainer_runs():
    from harness.leaderboard.rows import explainer_label

    def label(kind, backend=None, model=None):
        return explainer_label({"explainer": {"kind": kind, "backend": backend, "model": model, "parameters": {}}})

    assert label("llm", "hf_local", "smollm2_135m_instruct") == "hf_local:smollm2_135m_instruct"
    assert label("hypothesis_loop", "openai", "gpt-4o") == "hypothesis_loop (openai:gpt-4o)"
    assert label("baseline_top_tokens") == "baseline_top_tokens"
