"""Command-line plumbing shared by the `python -m harness.*` entry points, and `neuronbench`, the
one command over all of them: `neuronbench COMMAND [ARGS...]` runs `python -m MODULE [ARGS...]`
(Hydra overrides or the module's own flags, exactly as documented for it)."""

import functools
import runpy
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.redact import redact
from harness.text import for_terminal


def exit_on_harness_error(task):
    """Turn a HarnessError into one clear line on stderr and exit code 2, and Ctrl-C
    (KeyboardInterrupt) into one line and exit code 130: no traceback."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except HarnessError as exc:
            print(f"error: {type(exc).__name__}: {for_terminal(redact(str(exc)))}", file=sys.stderr)
            raise SystemExit(2) from exc
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C): stopped; every LLM answer already received is kept in the call cache",
                  file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


# command -> (module run as `python -m`, what it does); `neuronbench --help` lists them in this order.

def hydra_output_dir() -> Path:
    """The output directory of the running Hydra job (its run or sweep cell directory)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("harness", "run one benchmark cell, or a sweep with -m (Hydra overrides)"),
    "collect": ("harness.collect", "a sweep's cells as one table, with paired comparisons"),
    "prompt-sweep": ("harness.prompt_sweep", "an explainer's prompt chosen on calibration, from a sweep of prompts"),
    "compare": ("harness.scoring.stats", "compare two cells neuron by neuron (paired bootstrap, permutation p)"),
    "agreement": ("harness.agreement", "scorer agreement: Kendall τ between scorers' rankings of verified entries"),
    "build-set": ("harness.build_set", "build a frozen, hashed neuron set"),
    "lite-set": ("harness.sets.lite", "draw a lite set: a stratified subset of a frozen set, its records unchanged"),
    "set-info": ("harness.set_info", "describe a frozen neuron set as JSON"),
    "export-openai": ("harness.export_openai", "write a set in OpenAI neuron-explainer's format"),
    "connections": ("harness.connections", "connection-weight tables of MLP neurons"),
    "check-simulator": ("harness.check_simulator", "check a simulator on planted neurons and puzzles"),
    "check-scorer": ("harness.check_scorer", "check a scorer that judges explanations (detection, fuzzing, embedding)"),
    "metric-sanity": ("harness.metric_sanity", "label-perturbation sanity checks of every metric"),
    "gelu-check": ("harness.gelu_check", "GELU-variant check of the subject's activations"),
    "corrupt": ("harness.corrupt", "corruption experiments on the subject's layers"),
    "corrupt-report": ("harness.corrupt.report", "tables and a plot of corruption results"),
    "agent": ("harness.agent", "an LLM agent running corruption experiments"),
    "board": ("harness.leaderboard", "the leaderboard: submit, submit-sweep, verify, render, ranks, check-pr, export, schema"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: neuronbench COMMAND [ARGS...]   (= python -m MODULE [ARGS...]; COMMAND --help for its own)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`neuronbench COMMAND [ARGS...]`: run COMMAND's module as `python -m` would, with ARGS."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"neuronbench: unknown command '{for_terminal(command)}'; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = COMMANDS[command][0]
    sys.argv = [f"neuronbench {command}", *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:  # the module's own exit code
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0
