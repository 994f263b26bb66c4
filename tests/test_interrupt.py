"""Ctrl-C during hung API requests (issue 14): `python -m harness` stops within seconds, not after
the request timeout (600 s), with one line on stderr and exit code 130, and keeps every answer received."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from harness.paths import REPO_ROOT
from tests.fake_llm_server import GatedServer
from tests.leaderboard.test_leaderboard import lb_sets  # noqa: F401  (session fixture)
from tests.test_sweeps import _cached_calls, _env


def _sigint_default() -> None:
    """Start the run as a terminal's foreground process does, with SIGINT's default disposition: a
    test session launched in the background (`make test &`, many CI runners) ignores SIGINT, and a
    child inherits that, so Ctrl-C would never reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.heavy
def test_ctrl_c_stops_hung_requests_promptly_and_keeps_answers(lb_sets, tmp_path):  # noqa: F811
    cache = tmp_path / "calls.sqlite"
    with GatedServer(open_for=3) as server:  # 3 of the 8 neurons' requests answer, the other 5 hang
        with open(tmp_path / "stderr", "w") as stderr:
            run = subprocess.Popen(
                [sys.executable, "-m", "harness", f"hydra.run.dir={tmp_path / 'out'}",
                 f"neuron_set.path={lb_sets / 'tiny'}", f"call_cache={cache}", "explainer=openai",
                 f"explainer.llm.base_url={server.url}/v1", "explainer.llm.max_retries=0",
                 "explainer.llm.timeout=600"],
                cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_sigint_default)
            try:
                deadline = time.monotonic() + 300
                while not (server.held == 5 and _cached_calls(cache) == 3):
                    assert run.poll() is None and time.monotonic() < deadline, "the run ended or stalled early"
                    time.sleep(0.1)
                run.send_signal(signal.SIGINT)
                # Far below the 600 s request timeout: a behavioural bound, not a benchmark (generous,
                # so a machine busy with other work does not fail it).
                returncode = run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail("the run was still going 60 s after Ctrl-C:\n" + (tmp_path / "stderr").read_text()[-2000:])
            finally:
                run.kill()
                run.wait()
    err = (tmp_path / "stderr").read_text()
    assert returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err.splitlines()[-1], err[-3000:]
    assert _cached_calls(cache) == 3  # every answer received is kept
    assert not (tmp_path / "out" / "summary.json").exists()
