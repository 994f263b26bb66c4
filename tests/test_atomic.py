"""`harness.atomic`: a write replaces its targets whole, or fails before changing any of them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.atomic import WriteError, replace_together, write_atomic


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder`, hidden ones included, with its bytes (None for a directory)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def test_write_atomic_replaces_files_and_directories_whole(tmp_path):
    write_atomic(tmp_path / "a.txt", "old")
    assert write_atomic(tmp_path / "a.txt", "new ✓") == tmp_path / "a.txt"
    write_atomic(tmp_path / "b.bin", b"\x00\xff")
    write_atomic(tmp_path / "d", {"x/1.txt": "one", "stale.txt": "gone next time"})
    write_atomic(tmp_path / "d", {"x/1.txt": "uno", "x/y/2.txt": b"two"})
    assert _snapshot(tmp_path) == {"a.txt": "new ✓".encode(), "b.bin": b"\x00\xff", "d": None, "d/x": None,
                                   "d/x/1.txt": b"uno", "d/x/y": None, "d/x/y/2.txt": b"two"}


@pytest.mark.parametrize("targets, match", [
    ({"a.txt": "fine", "b.txt": "x\udc80"}, "b.txt: holds text that cannot be written as UTF-8"),
    ({"a.txt": "fine", "d": {"../escape.txt": "x"}}, "is not a path inside the directory"),
    ({"a.txt": "fine", "d": "a file where a directory is"}, "is a directory: it is not replaced by a file"),
    ({"a.txt": {"f": "a directory where a file is"}}, "is a file: it is not replaced by a directory"),
])
def test_replace_together_refuses_before_changing_anything(tmp_path, targets, match):
    (tmp_path / "a.txt").write_text("before")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("kept")
    before = _snapshot(tmp_path)
    with pytest.raises(WriteError, match=match):
        replace_together({tmp_path / name: content for name, content in targets.items()})
    assert _snapshot(tmp_path) == before


def test_a_write_that_fails_midway_leaves_the_target_and_no_temporary(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("before")

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="No space left"):
        replace_together({tmp_path / "a.txt": "after", tmp_path / "d": {"1.txt": "one"}})
    assert _snapshot(tmp_path) == {"a.txt": b"before"}


def test_a_directory_that_cannot_be_replaced_is_put_back(tmp_path, monkeypatch):
    write_atomic(tmp_path / "d", {"old.txt": "old"})
    real = os.replace

    def refuse_new(src, dst):
        if Path(src).parent.name == "new":
            raise PermissionError(13, "Permission denied", str(dst))
        real(src, dst)
    monkeypatch.setattr(os, "replace", refuse_new)
    with pytest.raises(WriteError, match="Permission denied"):
        write_atomic(tmp_path / "d", {"new.txt": "new"})
    assert _snapshot(tmp_path) == {"d": None, "d/old.txt": b"old"}


def test_a_function_writes_its_target_while_staged_and_a_failing_one_replaces_nothing(tmp_path):
    write_atomic(tmp_path / "big.bin", lambda f: f.writelines([b"a" * 10, b"b" * 10]))
    write_atomic(tmp_path / "d", {"t.bin": lambda f: f.write(b"in a directory"), "m.txt": "text"})
    before = _snapshot(tmp_path)
    assert before == {"big.bin": b"a" * 10 + b"b" * 10, "d": None, "d/m.txt": b"text", "d/t.bin": b"in a directory"}

    def dies(f):
        f.write(b"half")
        raise KeyError("the state to save")
    with pytest.raises(KeyError, match="the state to save"):
        replace_together({tmp_path / "big.bin": b"new", tmp_path / "d": {"t.bin": dies}})
    assert _snapshot(tmp_path) == before
