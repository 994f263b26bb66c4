"""all_at_once over a served model (`llm.backend: openai_compatible`, harness/llm/completions.py)
against a loopback completions server whose "model" is known exactly: the echo form in both
servers' conventions (OpenAI's and llama-cpp-python's `echo_shift`), vLLM's prompt_logprobs, the
top-k rule and failed slots, the two-token "10" through a continuation request, the call cache,
and untrusted answers refused as typed errors."""

import math
import re

import numpy as np
import pytest

from harness.errors import ConfigError, LLMError, TransientLLMError
from harness.records import ActivationRecord
from harness.simulate import AllAtOnceSimulator, make_simulator
from tests.fake_llm_server import FakeLLMServer

RECORDS = [ActivationRecord(tokens=["I", " drank", " coffee"], activations=[0, 0, 9]),
           ActivationRecord(tokens=["Tea", " zzz"], activations=[1, 0])]
LN = math.log


def tokenize(text):
    return [(m.group(0), m.start()) for m in re.finditer(r"\t|\n|\d|[^\t\n\d]+", text)]


def drawn_from(tokens, i):
    """The fake model's top logprobs of position i (the distribution token i was drawn from)."""
    if i >= 2 and tokens[i - 1] == "\t":
        word = tokens[i - 2]
        if "coffee" in word:
            return {"1": LN(0.5), "7": LN(0.2), "unknown": LN(0.3)}
        if "zzz" in word:
            return {"unknown": LN(0.9), "x": LN(0.1)}  # no value token in the top-k: a failed slot
        return {"0": LN(0.6), "unknown": LN(0.4)}
    if tokens and tokens[-1] == "1" and i == len(tokens) and tokens[-2] == "\t":  # after "…tab 1"
        return {"0": LN(0.75), "\n": LN(0.2), "3": LN(0.05)}
    return {"a": LN(0.5), "b": LN(0.5)}


def complete(shift=0, form="echo"):
    def answer(body):
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        outs = [one(body, p) for p in prompts]
        for i, out in enumerate(outs):
            out["choices"][0]["index"] = i
        return {**outs[0], "choices": [o["choices"][0] for o in outs]}

    def one(body, prompt):
        toks = tokenize(prompt)
        tokens = [t for t, _ in toks]
        gen = drawn_from(tokens, len(tokens))
        gen_token = max(gen, key=gen.get)
        choice = {"index": 0, "text": gen_token, "finish_reason": "length"}
        if form == "prompt_logprobs" and (body.get("prompt_logprobs")):
            vocab = {t: n for n, t in enumerate(dict.fromkeys(tokens + ["0", "1", "7", "unknown", "x", "a", "b"]))}
            entries = [None]
            for i in range(1, len(tokens)):
                top = drawn_from(tokens, i)
                top.setdefault(tokens[i], -5.0)
                entries.append({str(vocab[t]): {"logprob": lp, "rank": 1, "decoded_token": t} for t, lp in top.items()})
            choice.update(prompt_logprobs=entries, prompt_token_ids=[vocab[t] for t in tokens], logprobs=None)
        elif body.get("echo"):
            tops = [None] + [drawn_from(tokens, i) for i in range(1, len(tokens))] + [gen]
            if shift:  # llama-cpp-python: entry i is the distribution after token i
                tops = tops[1:] + [gen]
            choice["logprobs"] = {"tokens": tokens + [gen_token], "text_offset": [o for _, o in toks] + [len(prompt)],
                                  "token_logprobs": [None] * (len(tokens) + 1), "top_logprobs": tops}
        else:
            choice["logprobs"] = {"tokens": [gen_token], "text_offset": [len(prompt)], "token_logprobs": [gen[gen_token]],
                                  "top_logprobs": [gen]}
        return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": {"prompt_tokens": len(tokens), "completion_tokens": 1,
                                               "total_tokens": len(tokens) + 1}}
    return answer


def served(server, tmp_path, pack=1, **llm):
    return make_simulator({"kind": "all_at_once", "call_cache": str(tmp_path / "calls.sqlite"),
                           "windows_per_request": pack,
                           "llm": {"backend": "openai_compatible", "model": "m", "base_url": server.url + "/v1",
                                   "api_key_required": False, "timeout": 5, "max_retries": 0, "paid": False,
                                   "top_logprobs": 5, **llm}})


@pytest.mark.parametrize("form, shift", [("echo", 0), ("echo", 1), ("prompt_logprobs", 0)])
def test_served_readout_top_k_rule_and_failed_slots(tmp_path, form, shift):
    with FakeLLMServer() as server:
        server.complete = complete(shift, form)
        sim = served(server, tmp_path, form=form, **({"echo_shift": shift} if form == "echo" else {}))  # echo's own
        assert isinstance(sim, AllAtOnceSimulator)
        masses = sim.masses("hot drinks", RECORDS)
        m = masses[0]
        assert m.shape == (3, 11)
        assert np.allclose(m[0], np.eye(11)[0] * 0.6) and np.allclose(m[1], np.eye(11)[0] * 0.6)
        expected = np.zeros(11)
        expected[[1, 7, 10]] = [0.5 * 0.2, 0.2, 0.5 * 0.75]  # "1" then newline; "7"; "1" then "0"
        assert np.allclose(m[2], expected)
        assert masses[1] is None  # " zzz" has no value token in its top-k: the window failed, not zeros
        assert (sim.served.slots, sim.served.failed_slots) == (5, 1)
        requests = len(server.requests)
        assert requests == 2 + 1  # one per window, one continuation for the slot with "1" in its top-k
        cont = [r for r in server.requests if not r.get("echo") and not r.get("prompt_logprobs")]
        assert len(cont) == 1 and cont[0]["prompt"].endswith(" coffee\t1") and cont[0]["max_tokens"] == 1
        if form == "prompt_logprobs":
            assert server.requests[0]["prompt_logprobs"] == 5
        else:
            assert server.requests[0]["echo"] is True and server.requests[0]["logprobs"] == 5
        sims = sim.simulate("hot drinks", RECORDS)  # answered from the call cache
        assert len(server.requests) == requests
        assert sims[1] is None and sims[0][2] == pytest.approx((0.1 * 1 + 0.2 * 7 + 0.375 * 10) / 0.675)


@pytest.mark.parametrize("form", ["echo", "prompt_logprobs"])
def test_windows_packed_per_request_read_the_same(tmp_path, form):
    records = RECORDS + [ActivationRecord(tokens=[" coffee", " x"], activations=[5, 0])]
    with FakeLLMServer() as server:
        server.complete = complete(0, form)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        one = served(server, tmp_path / "a", form=form).masses("hot drinks", records)
        alone = len(server.requests)
        packed = served(server, tmp_path / "b", pack=2, form=form).masses("hot drinks", records)
        assert len(server.requests) - alone == 2 + 1  # 3 windows in 2 requests; 2 continuations in 1
        assert alone == 3 + 2
        sizes = [len(p) if isinstance(p := r["prompt"], list) else 1 for r in server.requests[alone:]]
        # The two window requests run concurrently (either may arrive first); the continuations follow.
        assert sorted(sizes[:2]) == [1, 2] and sizes[2] == 2
    for a, b in zip(one, packed):
        assert (a is None and b is None) or np.allclose(a, b)


def test_same_prompt_text_as_in_process(tmp_path, tiny_llama):
    """The served prompt is the in-process prompt's text: the same segments, decoded ids equal."""
    with FakeLLMServer() as server:
        server.complete = complete()
        sim = served(server, tmp_path)
        sim.masses("hot drinks", RECORDS[:1])
    local = AllAtOnceSimulator(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer)
    local._load()
    ids = local.prefix_ids("hot drinks") + local.window_ids(RECORDS[0])[0]
    assert server.requests[0]["prompt"] == tiny_llama.tokenizer.decode(ids)


@pytest.mark.parametrize("bad", ["positive", "too_many", "offsets", "missing"])
def test_untrusted_answers_are_typed_errors(tmp_path, bad, caplog):
    good = complete()

    def answer(body):
        out = good(body)
        lp = out["choices"][0]["logprobs"]
        if bad == "positive":
            lp["top_logprobs"][3] = {"0": 0.5}
        elif bad == "too_many":
            lp["top_logprobs"][3] = {str(i): -1.0 for i in range(50)}
        elif bad == "offsets":
            lp["text_offset"][3] = 0
        else:
            out["choices"][0]["logprobs"] = None
        return out

    with FakeLLMServer() as server:
        server.complete = answer
        sim = served(server, tmp_path)
        with caplog.at_level("WARNING"):
            assert sim.masses("x", RECORDS[:1]) == [None]  # refused as an LLMError: the window fails
        assert sim.served.failed_slots == 3 and "LLMError" not in caplog.text and "request" in caplog.text
        with pytest.raises(LLMError):  # the backend's own verdict
            sim.served.llm.chat([{"role": "user", "content": "a\tb"}], max_tokens=1, logprobs=True,
                                extra={"echo": True, "retry": 1})


def test_served_configuration_errors():
    with pytest.raises(ConfigError, match="form"):
        make_simulator({"kind": "all_at_once", "llm": {"backend": "openai_compatible", "model": "m", "form": "nope",
                                                      "api_key_required": False}})
    with pytest.raises(ConfigError, match="hf_local"):
        make_simulator({"kind": "one_at_a_time", "llm": {"backend": "openai_compatible", "model": "m"}})
    with pytest.raises(ConfigError, match="ten"):
        make_simulator({"kind": "all_at_once", "ten": "3", "llm": {"backend": "openai_compatible", "model": "m",
                                                                  "api_key_required": False}})


# --- chat_logprobs: values from the top logprobs of generated tokens --------------------------

def chat_tokens(body, text):
    """The fake chat model's generated tokens: each line's text, a tab, its value digits, a newline."""
    out = []
    for line in text.split("\n"):
        word, _, value = line.partition("\t")
        out += [{"token": word, "logprob": -0.1, "bytes": None, "top_logprobs": []},
                {"token": "\t", "logprob": -0.1, "bytes": None, "top_logprobs": []}]
        if value == "10":
            out += [{"token": "1", "logprob": LN(0.5), "bytes": None,
                     "top_logprobs": [{"token": t, "logprob": LN(p), "bytes": None} for t, p in
                                      [("1", 0.5), ("7", 0.2), ("x", 0.3)]]},
                    {"token": "0", "logprob": LN(0.75), "bytes": None,
                     "top_logprobs": [{"token": t, "logprob": LN(p), "bytes": None} for t, p in
                                      [("0", 0.75), ("\n", 0.2)]]}]
        else:
            out.append({"token": value, "logprob": LN(0.6), "bytes": None,
                        "top_logprobs": [{"token": t, "logprob": LN(p), "bytes": None} for t, p in
                                         [("0", 0.6), ("2", 0.1)]]})
        out.append({"token": "\n", "logprob": -0.1, "bytes": None, "top_logprobs": []})
    return out[:-1]


def test_chat_logprobs_reads_values_at_their_positions(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-0123456789abcdefghijklmnopqrstuv")
    answers = {"I\n drank\n coffee": "I\t0\n drank\t0\n coffee\t10", "Tea\n zzz": "Tea\t0\n zzz!\t0"}
    with FakeLLMServer() as server:
        server.reply = lambda body: answers[body["messages"][-1]["content"].split("else:\n")[1]]
        server.chat_logprobs = chat_tokens
        sim = make_simulator({"kind": "chat_logprobs", "ten": "split", "call_cache": str(tmp_path / "c.sqlite"),
                              "llm": {"backend": "openai", "model": "m", "base_url": server.url + "/v1",
                                      "timeout": 5, "max_retries": 0, "top_logprobs": 5}})
        sims = sim.simulate("hot drinks", RECORDS)
        assert server.requests[0]["top_logprobs"] == 5 and server.requests[0]["logprobs"] is True
    # " coffee": "1" (0.5) then "0" (0.75) or a newline (0.2); "7" 0.2; the other lines: "0" 0.6, "2" 0.1
    assert sims[0] == pytest.approx([0.2 / 0.7, 0.2 / 0.7, (0.1 * 1 + 0.2 * 7 + 0.375 * 10) / 0.675])
    assert sims[1] is None  # " zzz!" is not the line " zzz": a failed slot, never zeros
    assert (sim.slots, sim.failed_slots) == (5, 1)
    with pytest.raises(ConfigError, match="top_logprobs"):
        make_simulator({"kind": "chat_logprobs", "llm": {"backend": "openai", "model": "m"}})


def test_a_refused_request_fails_its_window_and_an_outage_stops(tmp_path):
    with FakeLLMServer() as server:
        server.complete = complete()
        server.faults[:] = ["400"]  # the first window's request is refused for good
        sim = served(server, tmp_path, concurrency=1)
        masses = sim.masses("hot drinks", RECORDS[:1] + [ActivationRecord(tokens=[" coffee"], activations=[3])])
        assert masses[0] is None and masses[1] is not None and sim.served.failed_slots == 3
        server.faults[:] = ["500"]
        with pytest.raises(TransientLLMError):
            served(server, tmp_path).masses("an outage", RECORDS[:1])
