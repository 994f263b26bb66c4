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


def test_a_cell_loads_the_sets_subject_once_for_explainer_and_scorer(tiny_set, tmp_path, monkeypatch):
    """A weight baseline (reads the subject's weights) with the ablation scorer (runs the subject):
    one load, digest-checked, shared by both."""
    import harness.subject as subject_module

    loads = []
    real = subject_module.load_subject
    monkeypatch.setattr(subject_module, "load_subject", lambda cfg: loads.append(cfg) or real(cfg))
    monkeypatch.setattr(subject_module, "_SET_SUBJECTS", {})  # nothing loaded by earlier tests
    cfg = cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=2", "explainer=baseline_weight_in",
                   "scorer=[correlation,ablation]", "scorer.ablation.windows_per_kind.top=1",
                   "scorer.ablation.windows_per_kind.random=1", "controls.floor=false", "controls.ceiling=false")
    summary = run_cell(cfg, tmp_path / "cell")
    assert len(loads) == 1 and summary["scores"]["ablation"]["n"] == 2


def test_a_subject_whose_weights_differ_from_the_sets_is_refused(tiny_set, monkeypatch):
    import harness.subject as subject_module
    from harness.errors import SetIntegrityError
    from harness.records import load_set

    monkeypatch.setattr(subject_module, "_SET_SUBJECTS", {})
    manifest = load_set(tiny_set).manifest
    forged = {**manifest, "subject": {**manifest["subject"], "weights_digest": "0" * 64}}
    with pytest.raises(SetIntegrityError, match="loaded with weight digest"):
        subject_module.set_subject(forged)


def test_a_judge_scorers_calls_are_counted_and_it_reports_no_ceiling(tiny_set, tmp_path, monkeypatch):
    """scorer=detection next to correlation in one cell: the judge model's calls go through the
    cell's ledger and call cache, and the ceiling (a simulation standing in) exists only for the
    scorer that reads the simulation."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-0123456789abcdefghijklmnopqrstuv")
    judge = lambda request: "yes" if "the" in request["messages"][-1]["content"].split("Text:")[-1] else "no"  # noqa: E731
    with FakeLLMServer(reply=judge) as server:
        llm = f'{{backend:openai,model:gpt-4o-mini,base_url:"{server.url}/v1",timeout:5,max_retries:0}}'
        cfg = cell_cfg(f"neuron_set.path={tiny_set}", "neuron_set.limit=3", "explainer=baseline_top_tokens",
                       "scorer=[correlation,detection]", "~scorer.detection.llm", f"+scorer.detection.llm={llm}",
                       "+scorer.detection.sampling.logprobs=false", f"call_cache={tmp_path / 'calls.sqlite'}")
        summary = run_cell(cfg, tmp_path / "cell")
        requests = len(server.requests)
        again = run_cell(cfg, tmp_path / "again")  # the same calls, answered from the cache
    # every judge call is counted; the repeats within the run (the same explanation on a shared window)
    # and every call of the second run are answered from the cache, with no new request
    assert requests > 0 and summary["cost"]["calls"] == requests and len(server.requests) == requests
    assert again["cost"]["calls"] == 0 and again["cost"]["cache_hits"] == requests + summary["cost"]["cache_hits"]
    assert set(summary["scores"]) == {"correlation", "detection"} and set(summary["floor"]) == {"correlation", "detection"}
    assert set(summary["ceiling"]) == {"correlation"}
    detection = summary["scores"]["detection"]
    assert detection["metric"] == "auroc" and detection["metrics"]["failed_fraction"]["mean_defined"] == 0.0
