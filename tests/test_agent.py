"""The corruption agent: action parsing, and whole runs driven by a scripted LLM behind the loopback
OpenAI-compatible server on the tiny subject (an invalid action, each budget stop, finish, resume
after a kill), plus a real run with the offline hf_local model on SmolLM2."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from harness.agent import ACTION_PROMPT, parse_action, run_agent
from harness.errors import ConfigError
from harness.paths import CONF_DIR
from tests.fake_llm_server import FakeLLMServer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["subject=tiny_llama", "corpus.max_documents=12", "measure.n_windows=2", "measure.window=16",
        "measure.max_new_tokens=2", "measure.bootstrap_resamples=100"]


def agent_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("agent", overrides=list(overrides))


class Script:
    """Answers action requests from `actions` in order and note requests with numbered notes."""

    def __init__(self, actions: list[str]):
        self.actions, self.asked, self.notes = list(actions), [], 0

    def __call__(self, body: dict) -> str:
        last = body["messages"][-1]["content"]
        if last.endswith(ACTION_PROMPT):
            self.asked.append(last)
            return self.actions.pop(0)
        self.notes += 1
        return f"note {self.notes}: the loss moved as expected."


def scripted_cfg(server, tmp_path, *overrides):
    # every call costs $0.01: 100 prompt tokens at $100 per million
    return agent_cfg(*TINY, "explainer=openai_compatible", f"explainer.llm.base_url={server.url}/v1",
                     "explainer.llm.model=scripted", "explainer.llm.paid=true", "explainer.llm.max_retries=0",
                     "+pricing.scripted={input: 100, output: 0}", f"call_cache={tmp_path / 'calls.sqlite'}",
                     *overrides)


RUN_1 = 'I will test the last layer.\n```json\n{"action": "run", "corruption": {"kind": "skip_last", "n": 1}, ' \
        '"hypothesis": "the last layer matters"}\n```'
INVALID = '{"action": "run", "corruption": {"kind": "skip_last", "n": 99}}'
REPEAT = '{"action": "run", "corruption": {"kind": "repeat", "layer": 0, "times": 2}, "hypothesis": "h2"}'
PERMUTE = '{"action": "run", "corruption": {"kind": "permute", "order": [1, 0]}, "hypothesis": "h3"}'
FINISH = '{"action": "finish", "summary": "Both layers matter; the last one most."}'


def _steps(out):
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def test_a_scripted_four_step_run_with_an_invalid_action_stops_at_the_step_budget(tmp_path):
    script = Script([RUN_1, INVALID, REPEAT, PERMUTE, FINISH])
    with FakeLLMServer(script) as server:
        summary = run_agent(scripted_cfg(server, tmp_path, "budget.max_steps=4"), tmp_path)
    assert summary["stop_reason"] == "max_steps"
    assert (summary["steps"], summary["experiments"], summary["invalid_actions"]) == (4, 3, 1)
    assert summary["cost_usd"] == pytest.approx(0.07)  # 4 actions + 3 notes
    steps = _steps(tmp_path)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert steps[0]["action"]["corruption"] == {"kind": "skip_last", "n": 1}
    assert steps[0]["result"]["corruption"] == "skip_last(n=1)" and steps[0]["result"]["kl"] > 0
    assert "n=99 must be in 0..2" in steps[1]["error"] and "result" not in steps[1]
    assert steps[2]["result"]["layers_run"] == 3 and steps[3]["result"]["corruption"] == "permute(order=[1, 0], seed=0)"
    # the agent is told why its action was invalid, and sees earlier results and its notes
    assert "Your previous answer was invalid: corruption skip_last: n=99" in script.asked[2]
    assert "skip_last(n=1)" in script.asked[1] and "note 1:" in script.asked[1]
    assert len(script.actions) == 1  # finish was never asked for
    report = (tmp_path / "report.md").read_text()
    assert "the step budget was reached" in report and "Invalid action" in report and "`repeat(layer=0, times=2)`" in report
    assert json.loads((tmp_path / "summary.json").read_text())["invalid_actions"] == 1


def test_the_cost_budget_stops_the_run(tmp_path):
    with FakeLLMServer(Script([RUN_1, REPEAT, PERMUTE])) as server:
        summary = run_agent(scripted_cfg(server, tmp_path, "budget.max_cost_usd=0.03"), tmp_path)
    assert summary["stop_reason"] == "max_cost_usd" and summary["steps"] == 2  # $0.02 < 0.03 <= $0.04


def test_the_wall_time_budget_stops_the_run_with_an_injected_clock(tmp_path):
    now = [0.0]

    def clock():  # every reading of the clock is 100 s later
        now[0] += 100.0
        return now[0]

    with FakeLLMServer(Script([RUN_1, REPEAT, PERMUTE])) as server:
        summary = run_agent(scripted_cfg(server, tmp_path, "budget.max_wall_seconds=450"), tmp_path, clock=clock)
    # each step reads the clock 3 times (budget check, step start, step end), 100 s apart
    assert summary["stop_reason"] == "max_wall_seconds" and summary["steps"] == 2
    assert summary["seconds"] == pytest.approx(200.0)


def test_finish_ends_the_run_with_its_summary_but_not_before_an_experiment(tmp_path):
    with FakeLLMServer(Script([FINISH, RUN_1, FINISH])) as server:
        summary = run_agent(scripted_cfg(server, tmp_path), tmp_path)
    assert summary["stop_reason"] == "finished" and summary["summary"] == "Both layers matter; the last one most."
    assert (summary["steps"], summary["experiments"], summary["invalid_actions"]) == (3, 1, 1)
    assert "finish only after at least 1 experiment" in _steps(tmp_path)[0]["error"]
    assert "Both layers matter" in (tmp_path / "report.md").read_text()


def test_resume_after_a_kill_continues_from_the_last_complete_step_from_the_cache(tmp_path):
    script = Script([RUN_1, REPEAT, PERMUTE])
    with FakeLLMServer(script) as server:
        cfg = scripted_cfg(server, tmp_path, "budget.max_steps=3")
        run_agent(cfg, tmp_path)
        first = _steps(tmp_path)
        received = len(server.requests)
        # a kill during step 3's write: step 2 complete, step 3 cut short
        lines = (tmp_path / "steps.jsonl").read_text().splitlines(keepends=True)
        (tmp_path / "steps.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
        summary = run_agent(cfg, tmp_path)
        assert len(server.requests) == received  # step 3's calls came from the call cache
        assert summary["steps"] == 3 and _steps(tmp_path)[2]["action"] == first[2]["action"]
        # a larger budget continues the same run
        script.actions.append(FINISH)
        summary = run_agent(scripted_cfg(server, tmp_path, "budget.max_steps=5"), tmp_path)
        assert summary["stop_reason"] == "finished" and summary["steps"] == 4
        with pytest.raises(ConfigError, match="different configuration"):
            run_agent(scripted_cfg(server, tmp_path, "measure.top_k=2"), tmp_path)


@pytest.mark.parametrize("answer, error", [
    ("I think we should skip layers.", "no JSON object found"),
    ('{"action": "run", "corruption": {"kind": "skip_last", "n": 1}', "does not parse"),
    ('{"action": "explode"}', '"action": "run" or "action": "finish"'),
    ('{"action": "finish"}', "non-empty \"summary\""),
    ('{"action": "run", "corruption": {"kind": "skip_last", "n": 1, "file": "/etc/passwd"}}', "unknown parameter"),
    ('{"action": "run", "corruption": "skip_last"}', "must be an object"),
    ('{"action": "run", "corruption": ' + "[" * 100_000 + "]" * 100_000 + "}", "characters long"),
])
def test_invalid_actions_say_why(answer, error):
    action, why = parse_action(answer, 2, max_chars=4000)
    assert action is None and error in why


def test_deeply_nested_json_within_the_size_limit_is_refused_not_a_crash():
    action, why = parse_action('{"action": "run", "corruption": ' + "[" * 1900 + "]" * 1900 + "}", 2, 4000)
    assert action is None and why


def test_the_agent_needs_an_llm_backend(tmp_path):
    with pytest.raises(ConfigError, match="the agent needs an LLM"):
        run_agent(agent_cfg(*TINY, "explainer=baseline_top_tokens"), tmp_path)


@pytest.mark.slow
def test_the_offline_hf_local_model_drives_a_short_real_run_on_smollm2(tmp_path):
    cfg = agent_cfg("subject=smollm2_135m", "explainer=hf_local", "measure.n_windows=2", "measure.window=16",
                    "measure.max_new_tokens=2", "measure.bootstrap_resamples=100", "budget.max_steps=2",
                    f"call_cache={tmp_path / 'calls.sqlite'}")
    summary = run_agent(cfg, tmp_path)
    steps = _steps(tmp_path)
    assert len(steps) == summary["steps"] and summary["stop_reason"] in ("max_steps", "finished")
    assert all(s.get("error") or s.get("result") or s["action"]["action"] == "finish" for s in steps)
    assert "## Trajectory" in (tmp_path / "report.md").read_text()


def test_a_repeated_experiment_reuses_its_result(tmp_path, monkeypatch):
    import harness.agent

    calls = []
    real = harness.agent.measure
    monkeypatch.setattr(harness.agent, "measure", lambda *a: calls.append(a[1].label) or real(*a))
    with FakeLLMServer(Script([RUN_1, RUN_1.replace('"n": 1}', '"n": 1, "path": "x"}'), RUN_1])) as server:
        summary = run_agent(scripted_cfg(server, tmp_path, "budget.max_steps=3"), tmp_path)
    steps = _steps(tmp_path)
    assert calls == ["skip_last(n=1)"] and summary["invalid_actions"] == 1
    assert steps[2]["result"] == steps[0]["result"]
