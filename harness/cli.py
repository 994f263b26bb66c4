"""Command-line plumbing shared by the `python -m harness.*` entry points."""

import functools
import sys

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
