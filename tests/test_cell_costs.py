"""What a cell's summary says it cost: every model call of the run, the simulator's as well as the
explainer's (issue 25: an API simulator's spend was missing from summary.json)."""

from __future__ import annotations

import pytest

from harness.cell import run_cell
from tests.cells import build_tiny_set, cell_cfg
from tests.fake_llm_server import FakeLLMServer


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return build_tiny_set(tmp_path_factory.mktemp("sets") / "tiny")


def test_the_simulators_calls_are_counted_and_priced(tiny_set, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-0123456789abcdefghijklmnopqrstuv")
    with FakeLLMServer(reply=lambda request: "[[0, 5]]") as server:
        cfg = cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=2", "explainer=baseline_top_tokens",
                       "simulator=json", "~simulator.llm",
                       f'+simulator.llm={{backend:openai,model:gpt-4o-mini,base_url:"{server.url}/v1",timeout:5,'
                       'max_retries:0}', f"simulator.call_cache={tmp_path / 'calls.sqlite'}",
                       "controls.floor=false", "controls.ceiling=false")
        summary = run_cell(cfg, tmp_path / "cell")
        requests = len(server.requests)
    # the explainer (a baseline) made no call: every call and every token counted is the simulator's
    assert requests > 0 and summary["cost"]["calls"] == requests
    assert summary["cost"]["input_tokens"] > 0 and summary["cost"]["usd"] > 0
