"""All-or-nothing writes: a reader sees a file's (or a directory's) old contents or its new ones,
never a half-written file, and a failed write leaves the old ones byte-identical with no temporary
file behind.

- `write_atomic(path, content)`: one file or directory.
- `replace_together({path: content, ...})`: several at once (the board's README.md, index.html and
  data/): every one is encoded and staged before the first is replaced.

`content` is text (written as UTF-8), bytes, a function that writes the bytes to a binary file (for
large outputs: `lambda f: torch.save(state, f)`), or a directory given as {relative path: any of
those}. Text and bytes are encoded before anything touches the disk, so text that cannot be written
(a lone surrogate) fails with `WriteError` having changed nothing; a function runs while its target
is staged, and if it raises, its error propagates and nothing is replaced. Each target is staged in a
temporary directory beside it (same file system; `STAGING_PREFIX` and a random suffix, so two
processes never share one), fsync'd, and moved into place with `os.replace` (a replaced directory is
first moved aside into the staging directory); the staging directory is removed whatever happens. A
file replaces only a file, a directory only a directory. Only a failure of the file system itself
between two of those renames can leave some targets replaced and others not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from harness.errors import HarnessError

Writer = Callable[[BinaryIO], None]
Content = str | bytes | Writer | Mapping[str, str | bytes | Writer]
Encoded = bytes | Writer | dict[PurePosixPath, "Encoded"]
STAGING_PREFIX = ".staging-"  # a writer's temporary directory beside its targets


class WriteError(HarnessError):
    """A file could not be written; the previous version, if any, is unchanged."""


def write_atomic(path: Path | str, content: Content) -> Path:
    """Write `content` to `path` all-or-nothing (see the module docstring); returns the path."""
    path = Path(path)
    replace_together({path: content})
    return path


def replace_together(targets: Mapping[Path, Content]) -> None:
    """Write every target all-or-nothing: encode all, stage all, then replace them one by one."""
    encoded = {Path(path): _encode(Path(path), content) for path, content in targets.items()}
    for path, data in encoded.items():
        if os.path.lexists(path) and path.is_dir() != isinstance(data, dict):
            raise WriteError(f"{path} is a {'directory' if path.is_dir() else 'file'}: it is not replaced by a "
                             f"{'directory' if isinstance(data, dict) else 'file'}; move it away first")
    stages: dict[Path, Path] = {}  # target directory -> its staging directory
    try:
        staged = []
        for path, data in encoded.items():
            parent = path.parent
            if parent not in stages:
                parent.mkdir(parents=True, exist_ok=True)
                stages[parent] = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
            new = stages[parent] / "new" / path.name
            _stage(new, data)
            staged.append((new, path))
        for new, path in staged:
            aside = None
            if new.is_dir() and os.path.lexists(path):  # os.replace cannot replace a non-empty directory
                aside = stages[path.parent] / "old" / path.name
                aside.parent.mkdir(exist_ok=True)
                os.replace(path, aside)
            try:
                os.replace(new, path)
            except OSError:
                if aside:
                    os.replace(aside, path)  # put the old directory back before its staging goes
                raise
    except OSError as exc:
        raise WriteError(f"could not write {', '.join(map(str, encoded))}: {exc}") from exc
    finally:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)


def _encode(path: Path, content: Content) -> Encoded:
    if isinstance(content, Mapping):
        files = {}
        for rel, data in content.items():
            rel_path = PurePosixPath(rel)
            if rel_path.is_absolute() or not rel_path.parts or ".." in rel_path.parts:
                raise WriteError(f"{path}: {rel!r} is not a path inside the directory")
            files[rel_path] = _encode(path / rel_path, data)
        return files
    if isinstance(content, bytes) or callable(content):
        return content
    try:
        return content.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise WriteError(f"{path}: holds text that cannot be written as UTF-8 ({bad!r} at character {exc.start}: "
                         f"{exc.reason}); nothing was written") from exc


def _stage(path: Path, data: Encoded) -> None:
    if isinstance(data, dict):
        for rel, payload in sorted(data.items()):
            _stage(path.joinpath(*rel.parts), payload)
        path.mkdir(parents=True, exist_ok=True)  # also an empty directory
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
