"""`harness.rundir`: one run per output directory, all-or-nothing outputs, the done marker and resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from harness import rundir
from harness.atomic import STAGING_PREFIX, WriteError
from harness.collect import find_cells, incomplete_cells
from harness.errors import ConfigError, OutputBusyError


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder`, hidden ones included, with its bytes (None for a directory)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


# --- The lock ---------------------------------------------------------------------------------

def test_the_lock_refuses_a_second_holder_until_the_first_lets_go(tmp_path):
    run = tmp_path / "run"
    with rundir.lock_output_dir(run):
        with pytest.raises(OutputBusyError, match=str(run)):
            with rundir.lock_output_dir(run):
                pass
    with rundir.lock_output_dir(run):  # released at the end of the first
        pass


def test_the_lock_removes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    (tmp_path / f"{STAGING_PREFIX}k1lled" / "new").mkdir(parents=True)
    (tmp_path / f"{STAGING_PREFIX}k1lled" / "new" / "summary.json").write_text("{}")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("a: 1\n")
    (tmp_path / "neurons.parquet").write_bytes(b"kept")
    with rundir.lock_output_dir(tmp_path):
        assert _snapshot(tmp_path) == {".hydra": None, ".hydra/config.yaml": b"a: 1\n", ".lock": b"",
                                       "neurons.parquet": b"kept"}


# --- All-or-nothing writes --------------------------------------------------------------------

def test_writes_replace_the_whole_file(tmp_path):
    rundir.write_json(tmp_path / "r.json", {"a": [1, 2]})
    rundir.write_json(tmp_path / "r.json", {"b": "✓"})
    assert json.loads((tmp_path / "r.json").read_text()) == {"b": "✓"}
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    rundir.write_figure(tmp_path / "plot.png", fig, dpi=20)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "r.json"]


def test_a_write_that_fails_leaves_the_old_content_and_no_temporary(tmp_path, monkeypatch):
    rundir.write_json(tmp_path / "summary.json", {"old": True})
    before = _snapshot(tmp_path)

    def half_then_fail(f):
        f.write(b'{"new": tr')
        raise RuntimeError("the writer died")
    with pytest.raises(RuntimeError, match="the writer died"):
        rundir.write_atomic(tmp_path / "summary.json", half_then_fail)
    assert _snapshot(tmp_path) == before

    with pytest.raises(ValueError, match="nope"):  # matplotlib knows no such format
        rundir.write_figure(tmp_path / "summary.nope", Figure())
    assert _snapshot(tmp_path) == before

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="No space left"):
        rundir.write_json(tmp_path / "summary.json", {"new": True})
    assert _snapshot(tmp_path) == before


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    """While one writer is staging, another (as another process would) writes the same file: each
    stages in its own directory, so the file ends whole as the last replace left it."""
    target = tmp_path / "results.json"

    def slow_writer(f):
        f.write(b'{"writer": ')
        rundir.write_json(target, {"writer": "fast"})  # the other writer starts and ends meanwhile
        assert json.loads(target.read_text()) == {"writer": "fast"}
        f.write(b'"slow"}\n')
    rundir.write_atomic(target, slow_writer)
    assert json.loads(target.read_text()) == {"writer": "slow"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# --- The done marker and resume -----------------------------------------------------------------

def test_run_options_are_split_off_and_either_replaces_the_result():
    cfg = OmegaConf.create({"a": 1, "resume": False})
    run_cfg, overwrite = rundir.run_options(cfg)
    assert overwrite and OmegaConf.to_container(run_cfg) == {"a": 1}
    assert rundir.run_options(OmegaConf.create({"a": 1, "overwrite": True}))[1]
    run_cfg, overwrite = rundir.run_options(OmegaConf.create({"a": 1}))
    assert not overwrite and OmegaConf.to_container(run_cfg) == {"a": 1}


def test_finished_finds_a_done_run_of_the_same_configuration_and_refuses_another(tmp_path):
    cfg = OmegaConf.create({"model": "m", "url": "http://user:secret@host/v1", "call_cache": "a"})
    assert rundir.finished(tmp_path, cfg, "cell") is None  # no done marker: not finished
    (tmp_path / rundir.SUMMARY).write_text('{"config": ')  # a marker cut short is no result
    assert rundir.finished(tmp_path, cfg, "cell") is None
    (tmp_path / rundir.SUMMARY).write_text("[1, 2]")
    assert rundir.finished(tmp_path, cfg, "cell") is None

    summary = {"n": 3, "config": rundir.saved_config(cfg)}
    assert "secret" not in json.dumps(summary)
    rundir.mark_done(tmp_path, summary)
    assert rundir.finished(tmp_path, cfg, "cell") == summary
    other_cache = OmegaConf.merge(cfg, {"call_cache": "b"})
    assert rundir.finished(tmp_path, other_cache, "cell", runtime_only=("call_cache",)) == summary
    with pytest.raises(ConfigError, match=rf"{tmp_path} already holds a finished cell with a different "
                                          r"configuration \(only call_cache may differ\).*\+overwrite=true"):
        rundir.finished(tmp_path, OmegaConf.merge(cfg, {"model": "other"}), "cell", runtime_only=("call_cache",))
    with pytest.raises(ConfigError, match="different configuration"):
        rundir.finished(tmp_path, other_cache, "cell")


def test_a_run_saved_before_an_option_was_added_is_finished_at_that_options_old_value(tmp_path):
    """A nested option added since (controls.floor_neurons) compares as its added value, key by key."""
    old = {"evaluate": "test", "controls": {"floor": True}}
    rundir.mark_done(tmp_path, {"config": old})
    added = {"controls": {"floor_neurons": None}}
    now = OmegaConf.create({"evaluate": "test", "controls": {"floor": True, "floor_neurons": None}})
    assert rundir.finished(tmp_path, now, "cell", added=added) is not None
    with pytest.raises(ConfigError, match="different configuration"):
        rundir.finished(tmp_path, OmegaConf.merge(now, {"controls": {"floor_neurons": 30}}), "cell", added=added)


def test_starting_a_run_removes_the_done_marker_and_records_provenance(tmp_path, monkeypatch):
    rundir.mark_done(tmp_path, {"config": {}})
    monkeypatch.setattr("sys.argv", ["prog", "llm.base_url=http://u:secret@host/v1"])
    cfg = OmegaConf.create({"llm": {"base_url": "http://u:secret@host/v1"}})
    hydra_cfg = OmegaConf.create({"overrides": {"task": ["llm.base_url=http://u:secret@host/v1"]}})
    rundir.start_run(tmp_path, cfg, hydra_cfg)
    assert not (tmp_path / rundir.SUMMARY).exists()
    files = _snapshot(tmp_path)
    assert sorted(files) == [".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
                             "provenance.json"]
    assert not any(b"secret" in data for data in files.values() if data)
    provenance = json.loads(files["provenance.json"])
    assert provenance["argv"] == ["llm.base_url=http://***@host/v1"] and provenance["pid"] == os.getpid()
    assert {"harness_version", "commit", "dirty", "overrides"} <= set(provenance)


def test_a_writers_staging_directory_is_never_taken_for_a_cell(tmp_path):
    """A sweep's table reads done markers; one being written (or left by a killed writer) is not a cell."""
    done, staging = tmp_path / "0", tmp_path / "1" / f"{STAGING_PREFIX}x" / "new"
    rundir.mark_done(done, {"config": {}})
    staging.mkdir(parents=True)
    (staging / "summary.json").write_text("{}")
    (staging / "provenance.json").write_text("{}")
    (tmp_path / "1" / "provenance.json").write_text("{}")
    assert find_cells(tmp_path) == [done]
    assert incomplete_cells(tmp_path)["incomplete"] == ["1"]
