"""The corruption agent: action parsing, and whole runs driven by a scripted LLM behind the loopback
OpenAI-compatible server on the tiny subject (an invalid action, each budget stop, finish, resume
after a kill, hostile answers, an outage mid-step, options out of range, an unpriced paid model),
plus a real run with the offline hf_local model on SmolLM2."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.agent import ACTION_PROMPT, parse_action, run_agent
from harness.errors import ConfigError, TransientLLMError
from harness.paths import CONF_DIR, REPO_ROOT
from harness.text import text_problem
from harness.validation import config_rules, leaves, rule_for
from tests.fake_llm_server import FakeLLMServer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["subject=tiny_llama", "corpus.max_documents=12", "measure.n_windows=2", "measure.window=16",
        "measure.max_new_tokens=2", "measure.bootstrap_resamples=100"]


def agent_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("agent", overrides=list(overrides))


class Script:
    """Answers action requests from `actions` in order and note requests with numbered notes (or,
    while there are any, from `notes`)."""

    def __init__(self, actions: list[str], notes: list[str] = ()):
        self.actions, self.asked, self.notes, self.note_texts = list(actions), [], 0, list(notes)

    def __call__(self, body: dict) -> str:
        last = body["messages"][-1]["content"]
        if last.endswith(ACTION_PROMPT):
            self.asked.append(last)
            return self.actions.pop(0)
        self.notes += 1
        return self.note_texts.pop(0) if self.note_texts else f"note {self.notes}: the loss moved as expected."


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


@pytest.mark.heavy
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


@pytest.mark.heavy
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


@pytest.mark.heavy
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
    ('{"action": "run", "corruption": {"kind": "skip_last", "n": 1, "file": "/etc/passwd"}}', "unknown option corruption.file"),
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


# --- Hostile or broken answers ------------------------------------------------------------------

RUN = {"action": "run", "corruption": {"kind": "skip_last", "n": 1}, "hypothesis": "h"}
FINISH_OBJ = {"action": "finish", "summary": "s"}
ODD_VALUES = [None, True, -1, 1.5, 10**30, float("inf"), "x", "\ud800", "\x1b[2J", "\u202e", [], [1], [[0]], {},
              {"kind": "none"}, {"a": {"b": [None]}}]


def _with(obj: dict, path: tuple[str, ...], value) -> str:
    out = json.loads(json.dumps(obj))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(out)  # a lone surrogate is written as the escape \ud800, as a model would


@pytest.mark.parametrize("answer", [_with(base, path, value) for (base, path), value in itertools.product(
    [(RUN, ("action",)), (RUN, ("corruption",)), (RUN, ("corruption", "kind")), (RUN, ("corruption", "n")),
     (RUN, ("corruption", "layers")), (RUN, ("hypothesis",)), (FINISH_OBJ, ("summary",))], ODD_VALUES)]
                         + ["[1, 2]", '"run"', "null", '[{"action": "run"}]'])
def test_an_action_of_any_json_shape_is_parsed_or_refused_with_a_reason_never_an_exception(answer):
    action, why = parse_action(answer, 2, max_chars=4000)
    assert (action is None) != (why is None) and (why is None or isinstance(why, str) and why)
    if action is not None:  # what is accepted can be stored as data
        json.dumps(action).encode()
        assert text_problem(action.get("hypothesis") or action.get("summary") or "", allow_newlines=True) is None


@pytest.mark.parametrize("field, value, error", [
    ("summary", "done \ud800", "lone surrogate (U+D800)"),
    ("summary", "\x1b]0;owned\x07 done", "control character (U+001B)"),
    ("hypothesis", "the \u202eeno tsal", "bidirectional control character (U+202E)"),
])
def test_model_text_that_cannot_be_stored_as_data_makes_the_action_invalid(field, value, error):
    action, why = parse_action(_with(FINISH_OBJ if field == "summary" else RUN, (field,), value), 2, max_chars=4000)
    assert action is None and error in why and f'"{field}"' in why


KIND_LIST = '{"action": "run", "corruption": {"kind": ["skip_last"], "n": 1}, "hypothesis": "h"}'
KIND_DICT = '{"action": "run", "corruption": {"kind": {"skip_last": 1}}, "hypothesis": "h"}'
SURROGATE_HYPOTHESIS = '{"action": "run", "corruption": {"kind": "repeat", "layer": 0}, "hypothesis": "h \\ud800"}'
SURROGATE_FINISH = '{"action": "finish", "summary": "done \udfff"}'  # a lone surrogate in the answer itself


def test_hostile_answers_are_invalid_steps_and_the_run_and_its_resume_go_on(tmp_path, monkeypatch):
    """A `kind` of the wrong type and a lone surrogate in a summary or hypothesis are invalid steps,
    explained to the agent; the surrogate hypothesis's experiment is not run. Resuming the finished
    run replays nothing and does not crash."""
    import harness.agent

    measured = []
    real = harness.agent.measure
    monkeypatch.setattr(harness.agent, "measure", lambda *a: measured.append(a[1].label) or real(*a))
    script = Script([KIND_LIST, KIND_DICT, SURROGATE_HYPOTHESIS, RUN_1, SURROGATE_FINISH, FINISH])
    with FakeLLMServer(script) as server:
        cfg = scripted_cfg(server, tmp_path)
        summary = run_agent(cfg, tmp_path)
        assert (summary["stop_reason"], summary["steps"], summary["experiments"], summary["invalid_actions"]) == (
            "finished", 6, 1, 4)
        assert measured == ["skip_last(n=1)"]
        steps = _steps(tmp_path)
        assert "unknown corruption kind ['skip_last']" in steps[0]["error"]
        assert "unknown corruption kind {'skip_last': 1}" in steps[1]["error"]
        assert "lone surrogate" in steps[2]["error"] and "result" not in steps[2]
        assert "lone surrogate" in steps[4]["error"] and steps[4]["answer"] == SURROGATE_FINISH  # kept, escaped
        assert "Your previous answer was invalid: the \"summary\" holds a lone surrogate" in script.asked[5]
        received = len(server.requests)
        assert run_agent(cfg, tmp_path) == {**summary, "ledger_this_session": None}
        assert len(server.requests) == received


def test_an_over_long_answer_is_an_invalid_step_stored_cut_to_the_bound(tmp_path):
    with FakeLLMServer(Script(["x" * 50_000])) as server:
        summary = run_agent(scripted_cfg(server, tmp_path, "budget.max_steps=1", "max_answer_chars=300"), tmp_path)
    step = _steps(tmp_path)[0]
    assert summary["invalid_actions"] == 1 and "the answer is 50000 characters long; at most 300" in step["error"]
    assert step["answer"] == "x" * 300


HTML_HYPOTHESIS = ('{"action": "run", "corruption": {"kind": "skip_last", "n": 1}, "hypothesis": '
                   '"<img src=x onerror=alert(1)> **bold**"}')
HTML_FINISH = ('{"action": "finish", "summary": "<script>alert(1)</script>\\n\\n# Fake heading\\n'
               '[click](http://evil.example) | a | b |"}')


def test_the_report_shows_model_text_as_inert_markdown(tmp_path):
    with FakeLLMServer(Script([HTML_HYPOTHESIS, '{"action": "run", "corruption": {"kind": "<b>"}}', HTML_FINISH])) \
            as server:
        summary = run_agent(scripted_cfg(server, tmp_path), tmp_path)
    assert summary["summary"].startswith("<script>alert(1)</script>\n\n# Fake heading")  # kept verbatim as data
    report = (tmp_path / "report.md").read_text()
    # every metacharacter of the model's text is escaped (<, > as entities): no tag, emphasis, link or table cell
    for live in ("<script>", "<img", "<b>", "**bold**", "](http", "| a | b |"):
        assert not re.search(r"(?<!\\)" + re.escape(live), report), live
    assert not [line for line in report.splitlines() if line.startswith("# Fake")]
    assert "&lt;script&gt;alert\\(1\\)&lt;/script&gt; \\# Fake heading \\[click\\]" in report
    assert "&lt;img src=x onerror=alert\\(1\\)&gt; \\*\\*bold\\*\\*" in report


def test_a_paid_model_without_a_price_is_refused_before_the_first_call(tmp_path):
    with FakeLLMServer(Script([RUN_1])) as server:
        cfg = agent_cfg(*TINY, "explainer=openai_compatible", f"explainer.llm.base_url={server.url}/v1",
                        "explainer.llm.model=unpriced-model", "explainer.llm.paid=true",
                        f"call_cache={tmp_path / 'calls.sqlite'}")
        with pytest.raises(ConfigError, match=r"explainer.llm.model='unpriced-model' is a paid model with no price") \
                as err:
            run_agent(cfg, tmp_path)
        assert server.requests == [] and not (tmp_path / "run.json").exists()
    assert "+pricing.unpriced-model=" in str(err.value) and "explainer.llm.paid=false" in str(err.value)


def test_a_note_that_cannot_be_stored_or_whose_call_fails_leaves_the_experiment_valid(tmp_path):
    with FakeLLMServer(Script([RUN_1, REPEAT], notes=["\x1b[2J\x1b[31mall good"])) as server:
        server.faults = [None, None, None, "400"]  # step 2's note call is refused for good
        summary = run_agent(scripted_cfg(server, tmp_path, "budget.max_steps=2"), tmp_path)
    steps = _steps(tmp_path)
    assert (summary["experiments"], summary["invalid_actions"]) == (2, 0)
    assert steps[0]["note"] == "(note refused: it held a control character (U+001B))"
    assert steps[1]["action"]["corruption"]["kind"] == "repeat" and steps[1]["result"]["layers_run"] == 3
    assert steps[1]["note"].startswith("(no note: the model call failed: openai_compatible: HTTP 400")


@pytest.mark.heavy
def test_the_cost_of_answered_calls_survives_an_outage_mid_step(tmp_path):
    """Step 1's action is answered ($0.01), then its note call meets an outage: the run stops, logging
    what the step had cost. The re-run gets the action from the cache for free, and still counts it."""
    script = Script([RUN_1, FINISH])
    with FakeLLMServer(script) as server:
        cfg = scripted_cfg(server, tmp_path)
        server.faults = [None, "500"]  # the action answered, the note refused (5xx: transient)
        with pytest.raises(TransientLLMError):
            run_agent(cfg, tmp_path)
        [line] = _steps(tmp_path)
        assert line["interrupted"] == 1 and line["cost_usd"] == pytest.approx(0.01) and "HTTP 500" in line["error"]
        summary = run_agent(cfg, tmp_path)
    assert (summary["steps"], summary["experiments"], summary["interrupted_attempts"]) == (2, 1, 1)
    assert summary["ledger_this_session"]["usd"] == pytest.approx(0.02)  # this session paid the note and finish
    assert summary["cost_usd"] == pytest.approx(0.03)  # three answered calls in all
    assert "1 attempt(s) interrupted by an outage" in (tmp_path / "report.md").read_text()


@pytest.mark.heavy
def test_out_of_range_options_are_config_errors_naming_each_option(tmp_path):
    cfg = agent_cfg(*TINY, "explainer=openai_compatible", "explainer.llm.max_retries=-1", "explainer.llm.timeout=-1",
                    "measure.top_k=100000", "budget.max_steps=0")
    with pytest.raises(ConfigError) as err:
        run_agent(cfg, tmp_path)
    for problem in ("explainer.llm.max_retries=-1 must be an integer >= 0", "explainer.llm.timeout=-1 must be a "
                    "number > 0", "measure.top_k=100000 must be an integer in [1, 100]",
                    "budget.max_steps=0 must be a positive integer"):
        assert problem in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "harness.agent", "explainer=openai_compatible", "explainer.llm.timeout=-1",
                           f"hydra.run.dir={tmp_path / 'cli'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "explainer.llm.timeout=-1 must be a number > 0" in proc.stderr


def test_every_numeric_option_of_the_agent_and_corrupt_configs_has_a_rule():
    """The agent and `python -m harness.corrupt` check their options against the cell's rule table,
    so a new numeric option must get a rule there (subject and corpus options are checked where
    they are loaded; a corruption's by its schema)."""
    configs = [("agent", f"explainer={p.stem}") for p in sorted((CONF_DIR / "explainer").glob("*.yaml"))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, override in configs + [("corrupt", "corruption=none")]:
            tree = OmegaConf.to_container(compose(name, overrides=[override]), resolve=True)
            rules = config_rules(tree)  # the run-level table plus the selected components' fields
            for path, value in leaves(tree).items():
                if isinstance(value, (bool, int, float)) and path[0] not in ("subject", "corpus", "corruption"):
                    assert rule_for(path, rules) is not None, f"{name} {override}: no rule for {'.'.join(path)}"
