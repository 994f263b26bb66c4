"""`check-pr`: what the leaderboard's pull-request workflow runs on a submission.

A submission is a pull request that adds entry files under `leaderboard/entries/` and, if the
submitter rendered the board, the re-rendered `leaderboard/README.md`, `index.html` and new records
in `verification.json`. This check runs **this checkout's code** (the base branch's, in CI) and reads
the pull request's files as data from git (`git ls-tree`, `git cat-file`): a pull request that changes code
or configuration is never run by it, it is refused and left to a maintainer's review.

Refused: a change to any other path, a changed or deleted entry, a file that is not a regular file,
an entry that fails the board's checks (schema, name, set, allow-list, duplicate) or fails
verification, a change to any record the base holds in `verification.json` (down to the type of a
number) or a record of an entry the pull request does not add, a `verification.json` that cannot be
read within bounds (nesting, number length) or holds a key twice, and a rendered board that does not
match what `render` gives with the new entries. Entries whose simulator is behind an API pass as
pending: the maintainers' CI verifies them, with its key, after the merge.

The pull request is compared with the base tip itself (a tree diff, `base head`), not with the merge
base, and must contain the base tip (else: rebase it), so what is checked is what the merge gives: an
entry the base holds is "changed" by a pull request that adds it again. Refused too: a tree under the
board that holds one name twice (git trees can; a checkout keeps one of them), or names equal apart
from case or Unicode normalization (one file on some checkouts, two in git).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from harness.errors import HarnessError
from harness.leaderboard.assess import assess
from harness.leaderboard.board import render
from harness.leaderboard.schema import EntryError, parse_entry_text, safe_name
from harness.text import for_terminal

log = logging.getLogger(__name__)
RENDERED = ("README.md", "index.html")  # and every file under data/
RECORDS = "verification.json"
MAX_BOARD_BYTES = 1 << 30


class CheckPRError(HarnessError):
    """The repository or the refs given to check-pr cannot be read."""


@dataclass
class PRCheck:
    added: list[str] = field(default_factory=list)      # entry names the pull request adds
    problems: list[str] = field(default_factory=list)   # each one refuses the pull request
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        """The verdict, with every string from the pull request (paths, reasons) escaped for a terminal."""
        lines = [f"check-pr: {'ACCEPTED' if self.ok else 'REFUSED'} ({len(self.added)} new "
                 f"entr{'y' if len(self.added) == 1 else 'ies'}: {', '.join(self.added) or 'none'})"]
        lines += [f"  refused: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        return "\n".join(for_terminal(line) for line in lines)


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], input=stdin, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip() or str(exc)
        raise CheckPRError(for_terminal(f"git {' '.join(args)} failed in {repo}: {detail}"))


def _commit(repo: Path, rev: str) -> str:
    """The sha of commit `rev` (a ref given to check-pr), so that a ref that moves meanwhile changes nothing."""
    try:
        return _git(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}").decode().strip()
    except CheckPRError as exc:
        raise CheckPRError(f"{for_terminal(rev)!r} is not a commit of {repo}: fetch it first") from exc


def _fold(path: str) -> str:
    """The name a case-insensitive or normalizing file system gives `path`."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def _paths(repo: Path, rev: str, rel: str) -> list[str]:
    """Every path (files and folders) under `rel` at `rev`, as the tree holds them: duplicates kept."""
    raw = _git(repo, "ls-tree", "-r", "-t", "-z", "--name-only", rev, "--", rel).split(b"\0")
    return [p.decode(errors="surrogateescape") for p in raw if p]


def _same_names(paths: list[str]) -> list[list[str]]:
    """Groups of paths that one checkout cannot hold apart: the same name twice, or names equal
    apart from case or Unicode normalization."""
    groups: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        groups[_fold(path)].append(path)
    return [sorted(g) for _, g in sorted(groups.items()) if len(g) > 1]


def _changes(repo: Path, base: str, head: str) -> list[tuple[str, str]]:
    """(status letter, path) of every file that differs between the base tip and the pull request."""
    raw = _git(repo, "diff", "--name-status", "--no-renames", "-z", base, head).split(b"\0")
    fields = [f.decode(errors="replace") for f in raw if f]
    return list(zip(fields[0::2], fields[1::2]))


def _blob(repo: Path, head: str, path: str, max_bytes: int) -> bytes:
    """A regular file's bytes at `head`, refused before reading when it is not one or too large."""
    listing = _git(repo, "ls-tree", "-z", head, "--", path).split(b"\0")[0].decode(errors="replace")
    mode, kind, oid = (listing.split("\t")[0].split(" ") + ["", "", ""])[:3]
    if mode != "100644" or kind != "blob":
        raise CheckPRError(f"{path} is not a regular file (mode {mode or 'missing'})")
    size = int(_git(repo, "cat-file", "-s", oid))
    if size > max_bytes:
        raise CheckPRError(f"{path} is {size} bytes, over the limit of {max_bytes}")
    return _git(repo, "cat-file", "blob", oid)


def _tree(repo: Path, head: str, rel: str) -> dict[str, bytes]:
    """Every regular file under `rel` at `head`, by path relative to its parent, read in one batch."""
    listing = [line for line in _git(repo, "ls-tree", "-r", "-z", "-l", head, "--", rel).split(b"\0") if line]
    oids, names, total = [], [], 0
    for line in listing:
        meta, path = line.decode(errors="replace").split("\t", 1)
        mode, _kind, oid, size = meta.split()
        if mode != "100644":
            raise CheckPRError(f"{path} is not a regular file (mode {mode})")
        total += int(size)
        if total > MAX_BOARD_BYTES:
            raise CheckPRError(f"the rendered board under {rel} is over {MAX_BOARD_BYTES} bytes")
        oids.append(oid)
        names.append(PurePosixPath(path).relative_to(PurePosixPath(rel).parent).as_posix())
    if not oids:
        return {}
    out = _git(repo, "cat-file", "--batch", stdin="\n".join(oids).encode() + b"\n")
    files, pos = {}, 0
    for name in names:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        files[name] = out[header_end + 1: header_end + 1 + size]
        pos = header_end + 1 + size + 1
    return files


def check_pr(base: str, head: str, cfg: dict[str, Any]) -> PRCheck:
    """Check the pull request `head` against the base tip `base`, in the git repository holding
    `cfg['entries_dir']`, whose working tree is the trusted base checkout."""
    entries_dir = Path(cfg["entries_dir"]).resolve()
    repo = Path(_git(entries_dir.parent, "rev-parse", "--show-toplevel").decode().strip()).resolve()
    entries_rel = entries_dir.relative_to(repo).as_posix()
    board_rel = entries_dir.parent.relative_to(repo).as_posix()
    base_ref, base, head = base, _commit(repo, base), _commit(repo, head)  # shas: fixed for the whole check
    result = PRCheck()
    try:
        _git(repo, "merge-base", "--is-ancestor", base, head)
    except CheckPRError:
        result.problems.append(f"the pull request does not contain the base tip {base_ref}: rebase it on the base "
                               "branch, so that what is checked is what the merge gives")
        return result
    for group in _same_names(_paths(repo, head, board_rel)):
        result.problems.append(f"{', '.join(group)}: one name twice in the pull request's tree (or names equal "
                               "apart from case or Unicode normalization): a checkout would keep only one of them")
    if result.problems:
        return result  # which of the files a path means is ambiguous: nothing below could be trusted
    new_files: dict[str, bytes] = {}
    touched: set[str] = set()  # rendered-board files and records the pull request changes
    for status, path in _changes(repo, base, head):
        p = PurePosixPath(path)
        if p.parent.as_posix() == entries_rel and p.suffix == ".json":
            if status != "A":
                result.problems.append(f"{path}: an entry is never changed or deleted by a submission "
                                       "(submit it under a new name)")
            elif not safe_name(p.stem):
                result.problems.append(f"{path}: not a valid entry name")
            else:
                new_files[p.name] = b""
        elif p.parent.as_posix() == board_rel and p.name in (*RENDERED, RECORDS) and status == "M":
            touched.add(p.name)
        elif path.startswith(f"{board_rel}/data/"):
            touched.add("data")  # the rendered page's data: compared as a whole below
        else:
            result.problems.append(f"{path}: a submission changes only {entries_rel}/ (and the rendered board); "
                                   "changes to anything else need a maintainer's review")
    for name in list(new_files):
        try:
            new_files[name] = _blob(repo, head, f"{entries_rel}/{name}", cfg["max_entry_bytes"])
        except CheckPRError as exc:
            result.problems.append(str(exc))
            del new_files[name]
    result.added = sorted(PurePosixPath(n).stem for n in new_files)

    with tempfile.TemporaryDirectory(prefix="check-pr-") as tmp:
        # The base's entries plus the new files, assessed by the very code that renders the board.
        trial_entries = Path(tmp) / "board" / "entries"
        shutil.copytree(entries_dir, trial_entries) if entries_dir.is_dir() else trial_entries.mkdir(parents=True)
        for name, raw in new_files.items():
            (trial_entries / name).write_bytes(raw)
        records = entries_dir.parent / RECORDS
        if records.is_file():
            shutil.copy(records, trial_entries.parent / RECORDS)
        if (entries_dir.parent / "connections").is_dir():  # the base's tables, which render shows per neuron
            shutil.copytree(entries_dir.parent / "connections", trial_entries.parent / "connections")
        trial = {**cfg, "entries_dir": trial_entries}
        assessed = assess(trial)
        for a in assessed:
            if a.path.name not in new_files:
                # A back-dated copy would push the original off the board as "the duplicate".
                if a.status == "rejected" and any(a.reason.startswith(f"a duplicate of {n} ") for n in result.added):
                    result.problems.append(f"{a.path.name} would become a duplicate of a new entry: {a.reason}")
                continue
            if a.status in ("rejected", "failed"):
                result.problems.append(f"{a.path.name}: {a.status}: {a.reason}")
            elif a.status == "pending":
                result.notes.append(f"{a.path.name}: pending: {a.reason}")
        if RECORDS in touched:
            try:
                pr_records = _blob(repo, head, f"{board_rel}/{RECORDS}", cfg["max_entry_bytes"])
                result.problems += _record_changes(records, pr_records, set(result.added))
            except CheckPRError as exc:
                result.problems.append(str(exc))
        rendered = bool(touched & {*RENDERED, "data"})
        if rendered and result.ok:
            out = Path(tmp) / "rendered"
            render(trial, out, assessed)
            expected = {n: (out / n).read_bytes() for n in RENDERED}
            expected |= {f"data/{f.relative_to(out / 'data').as_posix()}": f.read_bytes()
                         for f in sorted((out / "data").rglob("*")) if f.is_file()}
            try:
                submitted = {n: _blob(repo, head, f"{board_rel}/{n}", cfg["max_entry_bytes"]) for n in RENDERED}
                submitted |= _tree(repo, head, f"{board_rel}/data")
            except CheckPRError as exc:
                submitted = {}
                result.problems.append(str(exc))
            stale = sorted(n for n in set(expected) | set(submitted) if expected.get(n) != submitted.get(n))
            if submitted and stale:
                result.problems.append(f"the rendered board is not what render gives with these entries ({len(stale)} "
                                       f"files differ: {', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}): run "
                                       "python -m harness.leaderboard render, or leave the board out of the pull "
                                       "request")
        if new_files and not rendered:
            result.notes.append("the board is not re-rendered in this pull request: render it after the merge")
    return result


def _record_changes(base_records: Path, pr_records: bytes, added: set[str]) -> list[str]:
    """A pull request may add records for its own entries only: every record of the base (the
    maintainers' signed ones among them) stays exactly as it is, down to the type of each number
    (30.0 for 30 would read as another record)."""
    try:
        new = parse_entry_text(pr_records.decode("utf-8"))  # bounds, duplicate keys, NaN, a JSON object
    except UnicodeDecodeError:
        return [f"{RECORDS} is not UTF-8 text"]
    except EntryError as exc:
        return [f"{RECORDS}: {exc}"]
    old = json.loads(base_records.read_text()) if base_records.is_file() else {}
    changed = sorted(name for name in old if name not in new or _as_written(old[name]) != _as_written(new[name]))
    foreign = sorted(set(new) - set(old) - added)
    return ([f"{RECORDS}: the record of {name!r} is changed or removed; a submission adds records of its own "
             "entries only" for name in changed]
            + [f"{RECORDS}: a record of {name!r} is added, an entry this pull request does not add"
               for name in foreign])


def _as_written(record: Any) -> str:
    """`record` as JSON with every key, value and number type as parsed (unlike `==` or `canonical_json`,
    which take 30.0 for 30); only key order and spacing are set aside."""
    return json.dumps(record, sort_keys=True)
