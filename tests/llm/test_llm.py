"""LLM backends with the real openai/anthropic SDKs against a loopback server; cache, ledger,
retries, failures and secrets; the hf_local backend on the real SmolLM2."""

import json
import subprocess
import sys
import time

import pytest

from harness.components import RunContext
from harness.errors import ConfigError, ExplanationError, LLMError
from harness.explain import PROMPTS, LLMExplainer, make_explainer
from harness.formatting import normalized
from harness.llm import LLM, ChatResult, make_backend
from harness.llm.cache import CallCache, Ledger
from harness.paths import REPO_ROOT
from harness.records import ActivationRecord, NeuronRecord
from tests.fake_llm_server import FakeLLMServer

FAKE_KEY = "sk-fake-0123456789abcdefghijklmnopqrstuv"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


@pytest.fixture
def server():
    with FakeLLMServer() as s:
        yield s


@pytest.fixture
def cache(tmp_path):
    return CallCache(tmp_path / "calls.sqlite")


def openai_llm(server, cache, ledger=None, **kw):
    cfg = {"backend": "openai", "model": "gpt-4o-mini", "base_url": server.url + "/v1", "timeout": 5,
           "max_retries": 2, **kw}
    return LLM(make_backend(cfg), ledger=ledger or Ledger(), cache=cache)


def anthropic_llm(server, cache, ledger=None, **kw):
    cfg = {"backend": "anthropic", "model": "claude-3-5-haiku-latest", "base_url": server.url, "timeout": 5,
           "max_retries": 2, **kw}
    return LLM(make_backend(cfg), ledger=ledger or Ledger(), cache=cache)


@pytest.fixture(autouse=True)
def fake_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)


def test_openai_chat_text_usage_logprobs_and_cost(server, cache):
    ledger = Ledger(prices={"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075}})
    result = openai_llm(server, cache, ledger).chat(MESSAGES, temperature=0.5, max_tokens=20, n=2, logprobs=True)
    assert result.texts == [server.reply({})] * 2
    assert (result.input_tokens, result.output_tokens, result.cached_input_tokens) == (100, 20, 40)
    assert result.logprobs[0][0] == {"token": "the", "logprob": -0.25}
    sent = server.requests[0]
    assert sent["messages"] == MESSAGES and sent["n"] == 2 and sent["max_tokens"] == 20
    assert server.headers[0]["authorization"] == f"Bearer {FAKE_KEY}"
    # 60 uncached input tokens, 40 cached, 20 output tokens at the configured prices
    assert result.cost_usd == pytest.approx((60 * 0.15 + 40 * 0.075 + 20 * 0.60) / 1e6)
    assert ledger.summary()["usd"] == pytest.approx(result.cost_usd)


def test_anthropic_messages_format(server, cache):
    ledger = Ledger(prices={"claude-3-5-haiku-latest": {"input": 0.8, "output": 4.0}})
    result = anthropic_llm(server, cache, ledger).chat(MESSAGES, max_tokens=30, n=2)
    assert result.texts == [server.reply({})] * 2
    assert len(server.requests) == 2  # the Messages API has no n: one call per sample
    sent = server.requests[0]
    assert sent["system"] == "be brief" and sent["messages"] == [{"role": "user", "content": "hello"}]
    assert FAKE_KEY in (server.headers[0].get("x-api-key", "") + server.headers[0].get("authorization", ""))
    assert (result.input_tokens, result.output_tokens) == (240, 24)
    assert ledger.usd == pytest.approx((240 * 0.8 + 24 * 4.0) / 1e6)


def test_second_identical_call_is_a_cache_hit_across_instances(server, cache):
    first = openai_llm(server, cache).chat(MESSAGES, temperature=0.0)
    ledger = Ledger()
    again = openai_llm(server, cache, ledger).chat(MESSAGES, temperature=0.0)
    assert len(server.requests) == 1
    assert again.from_cache and again.texts == first.texts and again.cost_usd == 0
    assert ledger.cache_hits == 1 and ledger.calls == 0
    openai_llm(server, cache).chat(MESSAGES, temperature=0.7)  # other parameters: another key
    assert len(server.requests) == 2


def test_429_with_retry_after_is_honoured(server, cache):
    server.faults = ["429"]
    t0 = time.monotonic()
    result = openai_llm(server, cache).chat(MESSAGES)
    assert time.monotonic() - t0 >= 0.9  # waited the server's retry-after: 1
    assert result.texts and len(server.requests) == 2


@pytest.mark.parametrize("fault", ["500", "truncated"])
def test_transient_faults_are_retried(server, cache, fault):
    server.faults = [fault]
    result = openai_llm(server, cache).chat(MESSAGES)
    assert result.texts == [server.reply({})]
    assert len(server.requests) == 2


def test_persistent_failure_is_a_typed_error_and_not_cached(server, cache):
    server.faults = ["500"] * 3
    llm = openai_llm(server, cache)
    with pytest.raises(LLMError, match="HTTP 500"):
        llm.chat(MESSAGES)
    assert len(server.requests) == 3  # 1 + max_retries
    assert llm.chat(MESSAGES).texts  # nothing bad was cached: the next call asks again


def test_malformed_json_is_a_typed_error(server, cache):
    server.faults = ["malformed"]
    with pytest.raises(LLMError, match="openai: request failed"):
        openai_llm(server, cache).chat(MESSAGES)
    server.faults = ["malformed"]
    with pytest.raises(LLMError, match="anthropic: request failed"):
        anthropic_llm(server, cache).chat(MESSAGES)


def test_server_that_never_answers_times_out_clearly(server, cache):
    server.faults = ["hang"] * 2
    llm = openai_llm(server, cache, timeout=0.5, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(LLMError, match=r"did not answer within 0.5 s"):
        llm.chat(MESSAGES)
    assert time.monotonic() - t0 < 3


class EchoBackend:
    """Answers each conversation with its last message, a few at a time; "refused" fails for good
    and "bug" raises what no backend should."""
    name, model, paid, concurrency = "echo", "echo-1", False, 3

    def identity(self):
        return {}

    def chat(self, messages, params):
        text = messages[-1]["content"]
        if text == "refused":
            raise LLMError("refused")
        if text == "bug":
            raise TypeError("a bug in a backend")
        return ChatResult(texts=[text])


def test_concurrent_requests_keep_order_failures_and_raise_bugs(cache):
    llm = LLM(EchoBackend(), cache=cache)
    texts = [str(i) for i in range(10)] + ["refused"]
    results = llm.chat_batch([[{"role": "user", "content": t}] for t in texts])
    assert [r.texts[0] for r in results[:10]] == texts[:10]
    assert isinstance(results[10], LLMError)
    with pytest.raises(TypeError, match="a bug"):
        llm.chat_batch([[{"role": "user", "content": t}] for t in ["a", "bug", "b"]])


def test_missing_key_names_the_variable(monkeypatch, server, cache):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        openai_llm(server, cache)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ConfigError, match="MY_KEY"):
        anthropic_llm(server, cache, api_key_env="MY_KEY")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ConfigError, match="anthropic.*hf_local.*openai"):
        make_backend({"backend": "nope", "model": "x"})


def _neuron():
    top = ActivationRecord(tokens=["The", " cat", " sat"], activations=[0.0, 4.0, 1.0], kind="top")
    rand = ActivationRecord(tokens=["A", " dog"], activations=[0.0, 0.1], kind="random")
    return NeuronRecord(layer=0, neuron=1, explain=[top, rand], calibration=[top, rand], test=[top, rand])


def test_explainer_retries_empty_output_once_then_fails(server, cache):
    server.faults = ["empty", "empty"]
    explainer = LLMExplainer(openai_llm(server, cache), PROMPTS["openai_tokens"](), {"temperature": 0.0}, None)
    [result] = explainer.explain_batch([_neuron()])
    assert isinstance(result, ExplanationError)
    assert len(server.requests) == 2
    server.faults = ["empty"]  # once malformed, then fine: the retry's answer is kept
    neuron = _neuron()
    neuron.layer = 5  # another prompt, so nothing is cached
    [ok] = LLMExplainer(openai_llm(server, cache), PROMPTS["top_tokens"](), {"temperature": 0.0}, None).explain_batch([neuron])
    assert ok.text == 'the token "the"'


def test_n_samples_keep_the_best_on_calibration(server, cache):
    answers = iter(['the main thing this neuron does is find "dog".', 'the main thing this neuron does is find "cat".'])
    server.reply = lambda request: next(answers)
    calls = []

    def judge(neuron, text):
        calls.append(text)
        return 1.0 if "cat" in text else 0.0

    explainer = LLMExplainer(anthropic_llm(server, cache), PROMPTS["openai_tokens"](), {"n": 2}, judge)
    result = explainer.explain(_neuron())
    assert result.text == '"cat"' and len(calls) == 2
    assert [s["calibration_score"] for s in result.details["samples"]] == [0.0, 1.0]


def test_hypothesis_loop_refines_the_best_on_calibration_and_keeps_it(server, cache):
    answers = iter(['1. the token is "dog"\n2. the token is "cat"\nnot a hypothesis', '1) "sat"\n2) "cat" after "The"'])
    server.reply = lambda request: next(answers)
    scores = {'the token is "dog"': 0.1, 'the token is "cat"': 0.5, '"sat"': float("nan"), '"cat" after "The"': 0.9}
    block = {"backend": "openai", "model": "gpt-4o-mini", "base_url": server.url + "/v1", "timeout": 5, "max_retries": 2}
    context = RunContext(ledger=Ledger(), cache=cache, judge=lambda neuron, text: scores[text])
    explainer = make_explainer({"kind": "hypothesis_loop", "llm": block, "k": 2, "rounds": 1}, context=context)
    result = explainer.explain(_neuron())
    assert result.text == '"cat" after "The"'  # the best on calibration; an unscorable one (NaN) is skipped
    assert [(t["round"], t["text"]) for t in result.details["hypotheses"]] == [
        (0, 'the token is "dog"'), (0, 'the token is "cat"'), (1, '"sat"'), (1, '"cat" after "The"')]
    refine = server.requests[1]["messages"][-1]["content"]
    assert 'The best hypothesis so far is "the token is "cat"" (score 0.50' in refine and "exactly 2 hypotheses" in refine
    assert len(server.requests) == 2 and context.ledger.summary()["calls"] == 2


def test_openai_tokens_prompt_uses_floor_scale_and_ending():
    records = [ActivationRecord(tokens=["a", "b", "c"], activations=[-1.0, 2.99, 10.0])]
    assert normalized(records) == [[0, 2, 10]]
    messages = PROMPTS["openai_tokens"]().messages(_neuron())
    last = messages[-1]["content"]
    assert " cat\t10" in last and " sat\t2" in last
    assert last.endswith("the main thing this neuron does is find ...")


def test_cot_parses_the_final_line():
    parse = PROMPTS["cot"]().parse
    assert parse("Tokens are animals.\nExplanation: animal nouns.") == "animal nouns"
    assert parse("no final line") is None


@pytest.mark.heavy
def test_sweep_cell_never_leaks_the_key_and_reruns_free(server, tmp_path):
    """A cell with the OpenAI backend: the key appears in no output file and a second identical
    run makes no model call."""
    env = {**__import__("os").environ, "OPENAI_API_KEY": FAKE_KEY}
    args = [sys.executable, "-m", "harness", "explainer=openai", f"explainer.llm.base_url={server.url}/v1",
            "neuron_set.limit=3", f"call_cache={tmp_path / 'calls.sqlite'}", f"hydra.run.dir={tmp_path / 'run'}",
            "prompt=top_tokens"]
    first = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    n_requests = len(server.requests)
    assert n_requests == 3
    second = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert len(server.requests) == n_requests
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cost"]["cache_hits"] == 3 and summary["cost"]["calls"] == 0
    for text in [first.stdout, first.stderr, second.stdout, second.stderr]:
        assert FAKE_KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def _cell(server, tmp_path, *extra):
    env = {**__import__("os").environ, "OPENAI_API_KEY": FAKE_KEY}
    args = [sys.executable, "-m", "harness", "explainer=openai", f"explainer.llm.base_url={server.url}/v1",
            "explainer.llm.max_retries=2", "explainer.llm.concurrency=1", "neuron_set.limit=3",
            f"call_cache={tmp_path / 'calls.sqlite'}", f"hydra.run.dir={tmp_path / 'run'}", *extra]
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)


@pytest.mark.heavy
def test_transient_failure_leaves_the_cell_incomplete_and_a_rerun_reuses_the_cache(server, tmp_path):
    server.faults = ["500"] * 3  # the first neuron's request fails for good; the others succeed
    proc = _cell(server, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "CellFailedError" in proc.stderr and "HTTP 500" in proc.stderr and "Re-run the same command" in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()  # an outage is not a result
    assert len(server.requests) == 3 + 2
    again = _cell(server, tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_failed"] == 0 and summary["cost"]["cache_hits"] == 2 and summary["cost"]["calls"] == 1
    assert len(server.requests) == 3 + 2 + 1


@pytest.mark.heavy
def test_permanent_failure_is_recorded_per_neuron(server, tmp_path):
    server.faults = ["400"]  # refused for good (not retried): that neuron fails, the cell completes
    proc = _cell(server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    table = pd.read_parquet(tmp_path / "run" / "neurons.parquet")
    assert table["failure"].notna().sum() == 1
    assert "HTTP 400" in table["failure"].dropna().iloc[0]
    assert table["explanation"].notna().sum() == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_failed"] == 1


@pytest.mark.heavy
def test_too_many_failed_neurons_fail_the_cell(server, tmp_path):
    server.faults = ["400", "400"]
    proc = _cell(server, tmp_path, "max_failed_fraction=0.5")
    assert proc.returncode == 2 and "max_failed_fraction=0.5" in proc.stderr and "2 of 3" in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
    assert (tmp_path / "run" / "neurons.parquet").is_file()  # kept to show why


@pytest.mark.heavy
def test_failures_are_classified(server, cache):
    from harness.errors import TransientLLMError

    server.faults = ["429"] * 3
    with pytest.raises(TransientLLMError, match="HTTP 429"):
        openai_llm(server, cache).chat(MESSAGES)
    server.faults = ["hang"] * 2
    with pytest.raises(TransientLLMError, match="did not answer"):
        openai_llm(server, cache, timeout=0.5, max_retries=1).chat(MESSAGES, temperature=0.1)
    server.faults = ["400"]
    with pytest.raises(LLMError, match="HTTP 400") as err:
        openai_llm(server, cache).chat(MESSAGES, temperature=0.2)
    assert not isinstance(err.value, TransientLLMError)


@pytest.mark.slow
def test_hf_local_smollm2_generates_with_exact_logprobs(tmp_path):
    llm = LLM(make_backend({"backend": "hf_local", "model": "smollm2_135m_instruct", "subject": "smollm2_135m",
                            "batch_size": 2}), cache=CallCache(tmp_path / "c.sqlite"))
    prompts = [[{"role": "user", "content": "What is the capital of France?"}],
               [{"role": "user", "content": "Name a color."}]]
    results = llm.chat_batch(prompts, temperature=0.0, max_tokens=12, logprobs=True)
    assert "Paris" in results[0].texts[0]
    assert results[1].texts[0]
    for r in results:
        assert r.output_tokens == len(r.logprobs[0]) > 0
        assert all(lp["logprob"] <= 0 for lp in r.logprobs[0])
    # Greedy decoding: each generated token was the most likely one, so its logprob is the max,
    # and a second call is served from the cache.
    again = llm.chat_batch(prompts, temperature=0.0, max_tokens=12, logprobs=True)
    assert [a.texts for a in again] == [r.texts for r in results] and all(a.from_cache for a in again)


@pytest.mark.slow
def test_hf_local_explainer_on_the_frozen_set(tmp_path):
    from harness.records import load_set

    neurons = load_set("smollm2-135m-brown-v1", limit=2).neurons
    explainer = make_explainer({"kind": "llm", "llm": {"backend": "hf_local", "model": "smollm2_135m_instruct",
                                                       "subject": "smollm2_135m"},
                                "sampling": {"temperature": 0.0, "max_tokens": 32}},
                               {"kind": "openai_tokens"}, RunContext(cache=CallCache(tmp_path / "c.sqlite")))
    results = explainer.explain_batch(neurons)
    assert all(not isinstance(r, Exception) and r.text for r in results), results


SECRET = "s3cr3t-in-the-url-0123456789"


def _with_credentials(url: str) -> str:
    return url.replace("http://", f"http://user:{SECRET}@")


def test_credentials_in_base_url_reach_neither_cache_nor_errors(server, cache):
    llm = openai_llm(server, cache, base_url=_with_credentials(server.url) + "/v1", timeout=0.5, max_retries=0)
    assert llm.chat(MESSAGES).texts
    server.faults = ["hang"]
    with pytest.raises(LLMError) as err:
        llm.chat(MESSAGES, temperature=0.3)
    assert SECRET not in str(err.value) and "127.0.0.1" in str(err.value)
    assert SECRET.encode() not in cache.path.read_bytes()
    import sqlite3

    with sqlite3.connect(cache.path) as db:
        assert all(SECRET not in request for (request,) in db.execute("SELECT request FROM calls"))


@pytest.mark.heavy
def test_sweep_never_writes_credentials_from_base_url(server, tmp_path):
    env = {**__import__("os").environ, "OPENAI_API_KEY": FAKE_KEY}
    args = [sys.executable, "-m", "harness", "-m", "explainer=openai",
            f"explainer.llm.base_url={_with_credentials(server.url)}/v1", "neuron_set.limit=2",
            f"call_cache={tmp_path / 'calls.sqlite'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", "prompt=top_tokens"]
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(server.requests) == 2
    assert SECRET not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"multirun.yaml", "config.yaml", "hydra.yaml", "overrides.yaml", "provenance.json",
            "summary.json"} <= {p.name for p in written}
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    summary = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert summary["config"]["explainer"]["llm"]["base_url"].startswith("http://***@127.0.0.1")
