"""Rendering the board: README.md, index.html and the page's data/ from the entries as `assess`
finds them (`render`), written together or not at all.

The steps live apart: `assess` (which entries are ranked), `views` (what the board shows of a set
and of an entry), `rows` (the rankings and trained-vs-random rows), `markdown` (README.md) and
`page` (the data index.html embeds and loads).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.atomic import WriteError, replace_together
from harness.leaderboard.assess import Assessed, assess
from harness.leaderboard.markdown import render_markdown
from harness.leaderboard.page import load_connections, page_data
from harness.leaderboard.ranks import rankings
from harness.paths import REPO_ROOT

TEMPLATE = REPO_ROOT / "leaderboard" / "templates" / "index.html"
DATA_MARK = ".neuronbench-board"  # marks a data/ directory render wrote (and may replace)


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element (no '</script>', no HTML comment openers)."""
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            .replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_html(index: dict[str, Any]) -> str:
    return TEMPLATE.read_text().replace("/*__DATA__*/null", _script_json(index))


def _payload_js(kind: str, key: str, data: Any) -> str:
    return f"NB_LOAD({json.dumps(kind)},{json.dumps(key)},{_script_json(data)});\n"


def _check_data_dir(target: Path) -> None:
    """Refuse to replace a data/ directory that render did not write."""
    if os.path.lexists(target) and not (target / DATA_MARK).is_file():
        raise WriteError(f"{target} exists and was not written by render: move it away first")


def render(cfg: dict[str, Any], out_dir: Path | None = None,
           assessed: list[Assessed] | None = None) -> tuple[Path, Path]:
    """Write README.md, index.html and the page's data/ from the entries as `assess` finds them
    (done here unless given): all three are built first and then replaced together, so a failure
    leaves the previous board as it was."""
    board_dir = cfg["entries_dir"].parent
    out_dir = Path(out_dir) if out_dir else board_dir
    md, page, data = out_dir / "README.md", out_dir / "index.html", out_dir / "data"
    _check_data_dir(data)
    assessed = assess(cfg) if assessed is None else assessed
    ranks = rankings([a.entry for a in assessed if a.status == "verified"])  # for README.md and the page alike
    index, payloads = page_data(assessed, cfg, load_connections(board_dir), ranks)
    files = {rel: _payload_js(kind, key, value) for rel, (kind, key, value) in payloads.items()}
    files[DATA_MARK] = "written by python -m harness.leaderboard render: replaced at every render\n"
    replace_together({md: render_markdown(assessed, cfg, ranks) + "\n", page: render_html(index), data: files})
    return md, page
