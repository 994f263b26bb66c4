"""`neuronbench`, the one command over every `python -m harness.*` entry point (issue 25)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import COMMANDS, main

SCRIPT = Path(sys.executable).parent / "neuronbench"  # installed by `pip install -e .` (make install)


def test_every_command_names_a_runnable_module():
    for name, (module, about) in COMMANDS.items():
        spec = importlib.util.find_spec(module)
        assert spec is not None and about, name
        source = Path(spec.origin if not spec.submodule_search_locations
                      else next(iter(spec.submodule_search_locations)) + "/__main__.py").read_text()
        assert 'if __name__ == "__main__":' in source, f"{name}: {module} has no __main__ block"


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


def test_an_unknown_command_is_one_clear_error(capsys):
    assert main(["\x1b[2Jnope"]) == 2
    err = capsys.readouterr().err
    assert "unknown command '\\x1b[2Jnope'" in err and "board" in err


@pytest.mark.parametrize("args, expect", [(["board", "schema"], '"title": "NeuronBench leaderboard entry"'),
                                          (["set-info", "--help"], "describing a frozen")])
@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_the_installed_script_runs_a_module_with_its_arguments(args, expect):
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout


def test_the_modules_exit_code_is_the_commands():
    done = subprocess.run([str(SCRIPT), "set-info", "/no/such/set"], capture_output=True, text=True)
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr
