"""Where things live on disk: the repository, the frozen sets and the download/model cache."""

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
