"""Writing the board: `render` and `export` change everything or nothing (issue 22: L4, L5, R1, a board
without page data), through `harness.atomic`; README.md shows entry text as inert text (L14, L19)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import leaderboard as lb
from harness.atomic import WriteError
from harness.leaderboard.__main__ import main
from harness.leaderboard.board import DATA_MARK, TEMPLATE
from harness.leaderboard.export import export
from tests.test_atomic import _snapshot
from tests.leaderboard.test_leaderboard import board, lb_cells, lb_sets  # noqa: F401  (fixtures)


def _by_name(assessed: list[lb.Assessed], name: str) -> lb.Assessed:
    return next(a for a in assessed if a.entry and a.entry["name"] == name)


@pytest.fixture
def rendered(board, tmp_path):  # noqa: F811
    """The board's two entries assessed (both verified) and rendered into tmp_path/out."""
    cfg = board["cfg"]
    assessed = lb.assess(cfg)
    assert {a.status for a in assessed} == {"verified"}
    out = tmp_path / "out"
    lb.render(cfg, out, assessed)
    return cfg, assessed, out


# --- render: all or nothing -------------------------------------------------------------------

@pytest.mark.parametrize("field", ["submitter", "explanation"])
def test_a_render_that_cannot_write_leaves_the_previous_board_byte_identical(rendered, field):
    """L4, L5: a lone surrogate reaching render fails it before any file changes (it used to rewrite
    README.md, or empty it, and index.html, and leave .data-PID/ behind); the next render replaces all."""
    cfg, assessed, out = rendered
    before = _snapshot(out)
    _by_name(assessed, "top-tokens").entry["submitter"] = "someone else"  # README.md and index.html would change
    empty = _by_name(assessed, "empty").entry
    clean = (empty["submitter"], empty["neurons"][0]["explanation"])
    if field == "submitter":
        empty["submitter"] = "x\ud800"
    else:
        empty["neurons"][0]["explanation"] = "x\ud800"
    with pytest.raises(WriteError, match="cannot be written as UTF-8"):
        lb.render(cfg, out, assessed)
    assert _snapshot(out) == before  # nothing rewritten, no temporary file or directory left

    empty["submitter"], empty["neurons"][0]["explanation"] = clean
    _by_name(assessed, "empty").status = "failed"
    lb.render(cfg, out, assessed)
    assert "someone else" in (out / "README.md").read_text() and "someone else" in (out / "index.html").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "index.html"]
    assert (out / "data" / "entries" / "top-tokens.js").is_file()
    assert not (out / "data" / "entries" / "empty.js").exists()  # the previous data/ was replaced, not merged


def test_render_out_refuses_a_foreign_data_dir_before_writing_anything(board, tmp_path, capsys):  # noqa: F811
    """R1: `render --out DIR` used to overwrite DIR's README.md and index.html, then refuse DIR/data."""
    cfg, out = board["cfg"], tmp_path / "site"
    (out / "data").mkdir(parents=True)
    (out / "data" / "photo.txt").write_text("mine\n")
    (out / "README.md").write_text("my readme\n")
    (out / "index.html").write_text("<p>my page</p>\n")
    before = _snapshot(out)
    with pytest.raises(SystemExit) as stop:
        main(["--entries-dir", str(cfg["entries_dir"]), "--sets-dir", str(cfg["sets_dir"]),
              "render", "--out", str(out)])
    assert stop.value.code == 2
    assert "was not written by render" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_render_without_verified_entries_into_a_fresh_out_dir(lb_sets, tmp_path):  # noqa: F811
    """No payloads: render used to die with FileNotFoundError on DIR/.data-PID/.neuronbench-board."""
    entries, out = tmp_path / "board" / "entries", tmp_path / "fresh" / "site"
    entries.mkdir(parents=True)
    assert main(["--entries-dir", str(entries), "--sets-dir", str(lb_sets), "render", "--out", str(out)]) == 0
    assert "No verified entries yet" in (out / "README.md").read_text()
    page = (out / "index.html").read_text()
    assert json.loads(page.split('id="data">', 1)[1].split("</script>", 1)[0])["entries"] == []
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "index.html"]
    assert [p.name for p in (out / "data").iterdir()] == [DATA_MARK]


# --- what README.md and index.html show -------------------------------------------------------

def test_readme_shows_links_images_and_bidi_controls_in_entries_as_inert_text(rendered):
    """L14, L19: every entry-derived string in README.md goes through harness.text.for_markdown."""
    cfg, assessed, out = rendered
    top = _by_name(assessed, "top-tokens").entry
    top["submitter"] = "[x](http://evil) ![i](http://evil/i.png) \u202eevil"
    top["explainer"] = {**top["explainer"], "kind": "llm", "backend": "openai", "model": "[m](http://evil)"}
    lb.render(cfg, out, assessed)
    text = (out / "README.md").read_text()
    assert r"\[x\]\(http://evil\) \!\[i\]\(http://evil/i.png\) \\u202eevil" in text
    assert r"openai:\[m\]\(http://evil\)" in text
    assert "](" not in text.replace("[index.html](index.html)", "") and "![" not in text and "\u202e" not in text
    # In the page the same strings are data: JSON inside the data script, shown by textContent only.
    page = (out / "index.html").read_text()
    head, data = page.split('<script type="application/json" id="data">', 1)
    data, tail = data.split("</script>", 1)
    assert "evil" not in head + tail
    assert {e["name"]: e["submitter"] for e in json.loads(data)["entries"]}["top-tokens"] == top["submitter"]
    template = TEMPLATE.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in template


# --- export -----------------------------------------------------------------------------------

@pytest.fixture
def exported(board, tmp_path, monkeypatch):  # noqa: F811
    """An earlier export in tmp_path/exports, and `export` made to export these assessed entries."""
    cfg = board["cfg"]
    out = tmp_path / "exports" / "board.parquet"
    export(cfg, out)
    assessed = lb.assess(cfg)
    monkeypatch.setattr("harness.leaderboard.export.assess", lambda cfg: assessed)
    return cfg, assessed, out


def test_export_of_text_that_cannot_be_written_is_a_clear_error_and_changes_nothing(exported):
    """L5: `export` died with a bare UnicodeEncodeError."""
    cfg, assessed, out = exported
    before = _snapshot(out.parent)
    _by_name(assessed, "empty").entry["neurons"][0]["explanation"] = "x\ud800"
    with pytest.raises(WriteError, match="cannot be written as UTF-8"):
        export(cfg, out)
    assert _snapshot(out.parent) == before


def test_a_failed_export_leaves_the_previous_file_intact(exported, monkeypatch):
    """A write that fails (here, moving the new file into place) leaves the old file and no temporary."""
    cfg, assessed, out = exported
    before = _snapshot(out.parent)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WriteError, match="Permission denied"):
        export(cfg, out)
    assert _snapshot(out.parent) == before
