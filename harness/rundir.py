"""A run's output directory, under the same rules for every command that writes one (a cell, a
corruption run, the agent):

- One run at a time: `lock_output_dir` holds a flock on `<dir>/.lock` for the whole run, and a
  second run gets `OutputBusyError`. Once the lock is held, staging directories that a killed
  writer left behind are removed (nobody else writes there).
- All-or-nothing writes: `write_atomic` (from `harness.atomic`, the one implementation),
  `write_json` and `write_figure`. Every output goes through them, the checks' and the board's
  included.
- The done marker: `summary.json`, written last and only by a finished run (`mark_done`), so its
  presence marks one. `start_run` removes it before anything else, so a failed re-run never
  leaves the old marker beside new outputs.
- Resume: `run_options` splits `+resume=false` / `+overwrite=true` off a run's configuration.
  `finished` returns the summary of a finished run of the same configuration, which a re-run skips,
  and refuses a run of another one. `check_same_config` does that comparison for a run that resumes
  from its own record (the agent's `run.json`).
- Provenance: `start_run` writes `.hydra/` (what Hydra would, without credentials) and
  `provenance.json` (version, git commit, command line).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from harness import __version__
from harness.atomic import STAGING_PREFIX, write_atomic
from harness.errors import ConfigError, OutputBusyError
from harness.paths import REPO_ROOT
from harness.redact import redact

__all__ = ["SUMMARY", "RUN_OPTIONS", "lock_output_dir", "write_atomic", "write_json", "write_figure", "mark_done", "run_options",
           "saved_config", "check_same_config", "finished", "git_commit", "save_hydra_config", "start_run"]

log = logging.getLogger(__name__)

SUMMARY = "summary.json"  # the done marker
# Options of a command itself, not of its run: `+resume=false` and `+overwrite=true` both replace
# the directory's result.
RUN_OPTIONS = ("resume", "overwrite")


@contextlib.contextmanager
def lock_output_dir(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `output_dir` (flock on its `.lock` file, released when the process
    ends, however it ends) so that two runs never write the same directory at once."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputBusyError(f"another run is writing {output_dir} (it holds {output_dir / '.lock'}); wait "
                                  "for it to end or choose another output directory (hydra.run.dir / "
                                  "hydra.sweep.dir).") from exc
        for stale in output_dir.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield


def write_json(path: Path, obj: Any) -> Path:
    """`obj` as indented JSON, all-or-nothing."""
    return write_atomic(path, json.dumps(obj, indent=1) + "\n")


def write_figure(path: Path, fig: Any, **savefig: Any) -> Path:
    """A matplotlib figure, all-or-nothing, in the format its file name ends with."""
    return write_atomic(path, lambda f: fig.savefig(f, format=path.suffix.lstrip("."), **savefig))


def mark_done(output_dir: Path, summary: dict[str, Any]) -> None:
    """Write the done marker: the run's last write, and only a finished run's."""
    write_json(output_dir / SUMMARY, summary)


def run_options(cfg: DictConfig) -> tuple[DictConfig, bool]:
    """The run's configuration without the command's own options, and whether to replace the
    directory's result (`+overwrite=true` or `+resume=false`)."""
    overwrite = bool(cfg.get("overwrite", False)) or not bool(cfg.get("resume", True))
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        for option in RUN_OPTIONS:
            run_cfg.pop(option, None)
    return run_cfg, overwrite


def saved_config(cfg: DictConfig) -> dict[str, Any]:
    """The configuration as a run saves it (resolved, without credentials) and compares it."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


def check_same_config(output_dir: Path, saved: dict[str, Any], current: dict[str, Any], what: str,
                      runtime_only: tuple[str, ...] = ()) -> None:
    """Refuse to skip or continue `what` (e.g. "an agent run") in `output_dir`, saved with another
    configuration; the keys in `runtime_only` may differ (they change how a run goes, not what it
    computes)."""
    def comparable(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in runtime_only}
    if comparable(saved) != comparable(current):
        may = f" (only {', '.join(runtime_only)} may differ)" if runtime_only else ""
        raise ConfigError(f"{output_dir} already holds {what} with a different configuration{may}; choose another "
                          "output directory (hydra.run.dir / hydra.sweep.dir) or pass +overwrite=true to replace it.")


def finished(output_dir: Path, cfg: DictConfig, what: str, runtime_only: tuple[str, ...] = (),
             added: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The summary of a finished `what` of this configuration in `output_dir`, or None when there is
    none or its summary is unreadable (the run then runs again). A finished run of another
    configuration is refused (`check_same_config`). `added`: options added to conf/ since runs were
    saved, at the value that does what those runs did; a saved configuration without one compares as
    holding that value."""
    path = output_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("re-running %s: its %s is unreadable (%s)", output_dir, SUMMARY, exc)
        return None
    if not isinstance(summary, dict):
        log.warning("re-running %s: its %s holds no summary", output_dir, SUMMARY)
        return None
    saved = _with_added(summary.get("config", {}), added or {})
    check_same_config(output_dir, saved, saved_config(cfg), f"a finished {what}", runtime_only)
    return summary


def _with_added(saved: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """`saved` with each option of `added` it lacks (nested mappings merged key by key)."""
    out = dict(saved)
    for key, value in added.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _with_added(out[key], value)
        elif key not in out:
            out[key] = value
    return out


def git_commit() -> dict[str, Any]:
    """The repository's commit and whether the working tree had changes (None outside git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def save_hydra_config(output_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """What Hydra would write to `.hydra/` (conf/config.yaml turns that off, `hydra.output_subdir:
    null`): written here instead, under the output directory's lock, so that a run refused for a
    busy or finished directory leaves no trace of its own configuration there; and without the
    credentials of any URL (Hydra's own copy would keep them)."""
    saved = output_dir / ".hydra"
    write_atomic(saved / "config.yaml", redact(OmegaConf.to_yaml(cfg)))
    write_atomic(saved / "hydra.yaml", redact(OmegaConf.to_yaml({"hydra": hydra_cfg})))
    write_atomic(saved / "overrides.yaml", redact(OmegaConf.to_yaml(list(hydra_cfg.overrides.task))))


def start_run(output_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Begin a run in `output_dir` (locked): remove the done marker first, so that a failure of this
    run cannot leave the result it replaces looking finished, then save `.hydra/` and
    `provenance.json`."""
    (output_dir / SUMMARY).unlink(missing_ok=True)
    save_hydra_config(output_dir, cfg, hydra_cfg)
    write_json(output_dir / "provenance.json", {
        "harness_version": __version__, **git_commit(), "argv": redact(sys.argv[1:]),
        "overrides": redact(list(hydra_cfg.overrides.task)), "pid": os.getpid()})
