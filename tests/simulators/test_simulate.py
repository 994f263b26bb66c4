"""Simulators: the expected-value readout, SmolLM2's two-token "10", prefix key/value reuse, the
tree-masked single pass against one prompt per token, and the JSON simulator's strict parsing and
retry against a loopback server with the real openai/anthropic SDKs."""

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.errors import ConfigError, TransientLLMError
from harness.paths import REPO_ROOT
from harness.records import ActivationRecord
from harness.simulate import (AllAtOnceSimulator, JsonSimulator, OneAtATimeSimulator, ValueTokens, expected_values,
                              make_simulator)
from tests.fake_llm_server import FakeLLMServer

FAKE_KEY = "sk-fake-0123456789abcdefghijklmnopqrstuv"
RECORDS = [ActivationRecord(tokens=["I", " drank", " coffee", " on", " Monday", "."], activations=[0, 0, 5, 0, 1, 0]),
           ActivationRecord(tokens=["The", " cat", " sat"], activations=[0, 0, 0]),
           ActivationRecord(tokens=["Tea", ",", " coffee", " or", " milk", "?", "\n", "Tea", "\t", "!"],
                            activations=[3, 0, 5, 0, 2, 0, 0, 3, 0, 0])]


# --- the readout -------------------------------------------------------------------------------

def test_expected_value_of_hand_made_distributions():
    one_hot = np.eye(11)
    assert np.allclose(expected_values(one_hot), np.arange(11))
    assert expected_values(np.ones(11)) == pytest.approx(5.0)
    # unnormalised masses are renormalised over the 11 values
    masses = np.zeros(11)
    masses[[0, 10]] = [0.03, 0.01]  # 3:1 for 0 vs 10
    assert expected_values(masses) == pytest.approx(2.5)
    assert expected_values(np.array([[0.2, 0.2] + [0] * 9, [0] * 10 + [7.0]])).tolist() == pytest.approx([0.5, 10.0])


def _logprobs(vocab: int, probs: dict[int, float], n_values: int = 11) -> np.ndarray:
    """Log-probabilities with `probs` given and the rest of the mass on tokens that write no value
    (ids ≥ n_values)."""
    p = np.zeros(vocab)
    for t, v in probs.items():
        p[t] = v
    rest = [t for t in range(n_values, vocab) if t not in probs]
    p[rest] = (1 - sum(probs.values())) / len(rest)
    with np.errstate(divide="ignore"):
        return np.log(p)[None]


def test_two_token_values_read_exactly_that_value():
    # tokens 0..9 write "0".."9"; "10" is "1" (token 1) then "0" (token 0), as in SmolLM2's tokenizer
    vt = ValueTokens(first=tuple(range(10)) + (1,), second=(None,) * 10 + (0,), tab=20, newline=21)
    assert vt.continuations == (1,)
    first = _logprobs(30, {0: 0.5, 1: 0.2, 7: 0.1}, n_values=10)  # 0.2 on "1": the values 1, 10 and "1x"
    after_one = _logprobs(30, {0: 0.75, 21: 0.2, 3: 0.05}, n_values=10)  # after "1": "0", newline, "3" ("13")
    m = vt.masses(first, {1: after_one})[0]
    assert m[10] == pytest.approx(0.2 * 0.75)  # "1" then "0"
    assert m[1] == pytest.approx(0.2 * 0.2)  # "1" then the newline that ends the value
    assert m[1] + m[10] == pytest.approx(0.2 * 0.95)  # "13" and the rest write no value: no mass
    assert m[0] == pytest.approx(0.5) and m[7] == pytest.approx(0.1)
    assert expected_values(m) == pytest.approx((0.04 * 1 + 0.1 * 7 + 0.15 * 10) / (0.5 + 0.04 + 0.1 + 0.15))
    # one-token values (GPT-4-like tokenizers): the plain probabilities, as in Bills et al.
    single = ValueTokens(first=tuple(range(11)), second=(None,) * 11, tab=20, newline=21)
    assert single.continuations == ()
    assert np.allclose(single.masses(_logprobs(30, {10: 0.4, 3: 0.1}), {})[0][[3, 10]], [0.1, 0.4])


def test_value_tokens_of_the_smollm2_tokenizer(tiny_llama):
    tok = tiny_llama.tokenizer  # SmolLM2's tokenizer
    vt = ValueTokens.of(tok)
    one, zero = tok.encode("1", add_special_tokens=False)[0], tok.encode("0", add_special_tokens=False)[0]
    assert vt.first[10] == one and vt.second[10] == zero and vt.continuations == (one,)
    assert all(s is None for s in vt.second[:10])


# --- the single pass (random-init tiny model: fast) ---------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_all_at_once_equals_one_prompt_per_token_and_prefix_reuse(tiny_llama):
    kw = dict(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer)
    kw["max_context"] = 4096  # the tiny model's nominal 128 positions (RoPE: longer prompts compute fine)
    reused = AllAtOnceSimulator(batch_size=2, **kw)  # 3 windows: a batch of 2 (padded) and one of 1
    masses = reused.masses("hot drinks", RECORDS)
    assert reused.forward_passes == len(RECORDS) and reused.forward_calls == 2 + 2  # few-shot block, explanation, two batches
    plain = AllAtOnceSimulator(batch_size=3, reuse_prefix=False, **kw).masses("hot drinks", RECORDS)
    one = OneAtATimeSimulator(batch_size=8, model=tiny_llama.model, tokenizer=tiny_llama.tokenizer)
    reference = one.masses("hot drinks", RECORDS)
    assert one.forward_passes == sum(len(r.tokens) for r in RECORDS)
    for a, b, c, r in zip(masses, plain, reference, RECORDS):
        assert a.shape == (len(r.tokens), 11)
        assert np.allclose(a, b, atol=1e-5) and np.allclose(a, c, atol=1e-5)
    sims = reused.simulate("hot drinks", RECORDS)
    assert [len(s) for s in sims] == [len(r.tokens) for r in RECORDS]
    assert all(0 <= v <= 10 for s in sims for v in s)


@pytest.mark.usefixtures("one_thread")
def test_literal_option_fires_on_named_tokens_and_keeps_the_model_elsewhere(tiny_llama):
    kw = dict(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer, max_context=4096)
    plain = AllAtOnceSimulator(**kw).simulate('the word "coffee"', RECORDS)
    literal = AllAtOnceSimulator(literal=True, **kw).simulate('the word "coffee"', RECORDS)
    for p, q, r in zip(plain, literal, RECORDS):
        for a, b, tok in zip(p, q, r.tokens):
            assert b == (10.0 if tok == " coffee" else a)


def _repeats_like_a_cell(sim, fresh) -> None:
    """A neuron's windows, then the floor's case (another neuron's windows with that explanation,
    one window shared), a call that repeats a window, and another explanation. Every prediction
    equals a fresh simulator's, and only windows not yet run with their explanation are run."""
    calls = [("hot drinks", RECORDS[:2], 2), ("hot drinks", [RECORDS[1], RECORDS[2], RECORDS[2]], 1),
             ('the word "coffee"', RECORDS[:1], 1), ("hot drinks", RECORDS, 0)]
    for explanation, records, new in calls:
        before = sim.forward_passes
        got = sim.simulate(explanation, records)
        assert sim.forward_passes - before == new
        for a, b in zip(got, fresh().simulate(explanation, records)):
            assert np.allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_a_window_already_simulated_with_the_explanation_is_not_run_again(tiny_llama):
    kw = dict(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer, max_context=4096, batch_size=2)
    _repeats_like_a_cell(AllAtOnceSimulator(**kw), lambda: AllAtOnceSimulator(**kw))
    literal = AllAtOnceSimulator(literal=True, **kw)  # the model's part is remembered, the literal rule applied anew
    _repeats_like_a_cell(literal, lambda: AllAtOnceSimulator(literal=True, **kw))
    assert literal.simulate('the word "coffee"', RECORDS[:1])[0][2] == 10.0


@pytest.mark.usefixtures("one_thread")
def test_simulations_kept_on_disk_resume_an_interrupted_run_bit_for_bit(tiny_llama, tmp_path):
    kw = dict(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer, max_context=4096, batch_size=2,
              call_cache=str(tmp_path / "sims.sqlite"))
    first = AllAtOnceSimulator(**kw)
    done = first.simulate("hot drinks", RECORDS[:2])  # then the process is killed
    resumed = AllAtOnceSimulator(**kw)
    again = resumed.simulate("hot drinks", RECORDS)
    assert resumed.forward_passes == 1  # only the window the first run never reached
    assert again[:2] == done  # exactly: the stored float64 values, not a re-run
    # another explanation, another prompt (another readout) or another dtype is another simulation
    assert len(AllAtOnceSimulator(**kw).simulate("cats", RECORDS[:1])) == 1
    for other in (AllAtOnceSimulator(**{**kw, "reuse_prefix": False}),
                  OneAtATimeSimulator(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer,
                                      call_cache=kw["call_cache"])):
        other.simulate("hot drinks", RECORDS[:1])
        assert other.forward_passes > 0
    # the literal rule is applied on top of the stored model values, never stored itself
    literal = AllAtOnceSimulator(literal=True, **kw)
    assert literal.simulate('hot drinks "coffee"', RECORDS[:1])[0][2] == 10.0
    assert AllAtOnceSimulator(**kw).simulate('hot drinks "coffee"', RECORDS[:1])[0][2] < 10.0


def test_window_lines_escape_newlines_and_tabs(tiny_llama):
    sim = AllAtOnceSimulator(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer)
    sim._load()
    ids, tabs = sim.window_ids(RECORDS[2])
    text = tiny_llama.tokenizer.decode(ids)
    assert text.count("\tunknown\n") == len(RECORDS[2].tokens) and "\\n\tunknown" in text and "\\t\tunknown" in text
    assert all(ids[t] == sim._values.tab for t in tabs)


def test_configs_build_simulators_without_loading_a_model():
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base=None):
        for name, cls in [("all_at_once", AllAtOnceSimulator), ("one_at_a_time", OneAtATimeSimulator),
                          ("json", JsonSimulator), ("all_at_once_literal", AllAtOnceSimulator)]:
            cfg = compose("config", overrides=[f"simulator={name}"])
            sim = make_simulator(cfg.simulator)
            assert isinstance(sim, cls)
            assert (getattr(sim, "literal", None) is not None) == (name == "all_at_once_literal")
    with pytest.raises(ConfigError, match="hf_local"):
        make_simulator({"kind": "all_at_once", "llm": {"backend": "openai", "model": "gpt-4o-mini"}})


# --- real SmolLM2 --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_ten_as_two_tokens_matches_brute_force_on_smollm2(smollm2):
    """Each position's 11 masses against separate plain forward passes: P(v) for the values 2..9
    and 0 from the prompt ending at the tab; P(10) as the probability of the tokens "1","0" and
    P(1) as that of "1", newline, both scored on the prompt + "10"."""
    tok, model = smollm2.tokenizer, smollm2.model
    record = ActivationRecord(tokens=["We", " drank", " tea"], activations=[0, 0, 10])
    explanation = "hot drinks such as tea and coffee"
    sim = AllAtOnceSimulator(model=model, tokenizer=tok)
    masses = sim.masses(explanation, [record])[0]
    prefix = sim.prefix_ids(explanation)
    ids, tabs = sim.window_ids(record)
    assert tok.decode(ids) == "We\tunknown\n drank\tunknown\n tea\tunknown\n<end>"
    digit = [tok.encode(str(v), add_special_tokens=False) for v in range(11)]
    newline = tok.encode("\n", add_special_tokens=False)
    assert digit[10] == digit[1] + digit[0] and len(newline) == 1
    for i, t in enumerate(tabs):
        context = prefix + ids[: t + 1]
        with torch.no_grad():
            lp = model(torch.tensor([context + digit[10]])).logits[0].float().log_softmax(-1)
        at_tab, after_one = lp[len(context) - 1], lp[len(context)]
        brute = np.array([float(at_tab[digit[v][0]].exp()) for v in range(10)] + [0.0])
        brute[10] = float((at_tab[digit[1][0]] + after_one[digit[0][0]]).exp())  # P("1", "0")
        brute[1] = float((at_tab[digit[1][0]] + after_one[newline[0]]).exp())  # P("1", newline)
        # float32 logits from a batched, tree-masked pass against plain passes: relative 1e-3
        assert np.allclose(masses[i], brute, atol=1e-6, rtol=1e-3), (i, masses[i], brute)
        assert masses[i][10] > 0 and masses[i][1] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_prefix_reuse_and_one_at_a_time_agree_on_smollm2(smollm2):
    kw = dict(model=smollm2.model, tokenizer=smollm2.tokenizer)
    records = RECORDS[:2]
    explanation = "coffee and other hot drinks"
    reused = AllAtOnceSimulator(**kw).simulate(explanation, records)
    plain = AllAtOnceSimulator(reuse_prefix=False, **kw).simulate(explanation, records)
    one = OneAtATimeSimulator(**kw).simulate(explanation, records[:1])
    for a, b in zip(reused, plain):
        assert np.allclose(a, b, atol=1e-4)
    assert np.allclose(one[0], reused[0], atol=1e-3)
    assert np.argsort(one[0]).tolist() == np.argsort(reused[0]).tolist()
    assert int(np.argmax(reused[0])) == 2  # " coffee" is predicted highest


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_remembered_windows_equal_fresh_ones_on_smollm2(smollm2):
    kw = dict(model=smollm2.model, tokenizer=smollm2.tokenizer, batch_size=2)
    _repeats_like_a_cell(AllAtOnceSimulator(literal=True, **kw), lambda: AllAtOnceSimulator(literal=True, **kw))


# --- json -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, n, expected", [
    ("[[0, 0], [1, 7], [2, 10]]", 3, [0.0, 7.0, 10.0]),
    ("[[2, 1.5], [0, 0], [1, 3]]", 3, [0.0, 3.0, 1.5]),  # any order
    ("```json\n[[0, 4], [1, 0]]\n```", 2, [4.0, 0.0]),
    ("[]", 0, []),
    ("[[0, 0], [1, 11]]", 2, None),  # out of range
    ("[[0, -1], [1, 0]]", 2, None),
    ("[[0, 0], [2, 3]]", 2, None),  # index out of range
    ("[[0, 0], [0, 3]]", 2, None),  # duplicate index
    ("[[0, 0]]", 2, None),  # wrong length
    ("[[0, 0], [1, 0], [2, 0]]", 2, None),
    ("[[0, 0], [1, 0]", 2, None),  # malformed
    ("Sure! [[0, 0], [1, 0]]", 2, None),
    ('[[0, "5"], [1, 0]]', 2, None),
    ("[[0, true], [1, 0]]", 2, None),
    ("[[0.0, 1], [1, 0]]", 2, None),
    ("[[0, 1, 2], [1, 0]]", 2, None),
    ('{"0": 1, "1": 0}', 2, None),
])
def test_json_parse_is_strict(text, n, expected):
    assert JsonSimulator.parse(text, n) == expected


def _tokens_in(request: dict) -> int:
    user = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
    return int(user.split("Reply with a JSON list of ")[1].split()[0])


@pytest.fixture
def fake_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)


@pytest.mark.usefixtures("fake_keys")
@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_json_simulator_against_a_loopback_server(backend, tmp_path):
    records = [ActivationRecord(tokens=["a", " b", " c"], activations=[0, 1, 0]),
               ActivationRecord(tokens=["d", " e"], activations=[1, 0])]
    with FakeLLMServer() as server:
        server.reply = lambda req: json.dumps([[i, 2 * i] for i in range(_tokens_in(req))])
        url = server.url + ("/v1" if backend == "openai" else "")
        sim = make_simulator({"kind": "json", "llm": {"backend": backend, "model": "m", "base_url": url, "timeout": 5,
                                                      "max_retries": 0},
                              "call_cache": str(tmp_path / "calls.sqlite")})
        assert sim.simulate("the letter b", records) == [[0.0, 2.0, 4.0], [0.0, 2.0]]
        assert len(server.requests) == 2
        sent = server.requests[0]
        assert "the letter b" in json.dumps(sent) and sent.get("temperature", 0.0) == 0.0


@pytest.mark.usefixtures("fake_keys")
def test_json_simulator_retries_once_then_fails_the_window(tmp_path):
    records = [ActivationRecord(tokens=["a", " b", " c"], activations=[0, 1, 0])]
    cfg = {"kind": "json", "llm": {"backend": "openai", "model": "m", "timeout": 5, "max_retries": 0},
           "call_cache": str(tmp_path / "calls.sqlite")}
    answers = {"bad": "[[0, 0], [1, 12], [2, 0]]", "short": "[[0, 0]]", "good": "[[0, 0], [1, 9], [2, 0]]",
               "malformed": "[[0, 0], [1,"}
    with FakeLLMServer() as server:
        cfg["llm"]["base_url"] = server.url + "/v1"
        script: list[str] = []
        server.reply = lambda req: answers[script.pop(0)]
        for first in ("bad", "short", "malformed"):  # out of range / wrong length / malformed, then a good answer
            script[:] = [first, "good"]
            sim = make_simulator(cfg)
            before = len(server.requests)
            assert sim.simulate(f"retry after {first}", records) == [[0.0, 9.0, 0.0]]
            assert len(server.requests) == before + 2 and sim.failures == 0
        script[:] = ["bad", "malformed"]  # twice wrong: None for that window, never zeros
        sim = make_simulator(cfg)
        assert sim.simulate("never right", records + [ActivationRecord(tokens=[], activations=[])]) == [None, []]
        assert sim.failures == 1 and not script
        # the request itself is refused for good (HTTP 400): None, without a second ask
        server.faults[:] = ["400"]
        before = len(server.requests)
        assert make_simulator(cfg).simulate("refused", records) == [None]
        assert len(server.requests) == before + 1
        # an outage (HTTP 500 after the SDK's retries) is not a failed window: it is raised
        server.faults[:] = ["500"]
        with pytest.raises(TransientLLMError):
            make_simulator(cfg).simulate("server down", records)
        # answers are cached: the good retry is replayed without calls
        before = len(server.requests)
        assert make_simulator(cfg).simulate("retry after bad", records) == [[0.0, 9.0, 0.0]]
        assert len(server.requests) == before
