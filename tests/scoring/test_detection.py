"""Detection and fuzzing (harness/scoring/detection.py): labels, prompts, strict parsing, P(yes) from
each logprob form, failed slots, metrics; with in-process fake judges, the real openai/anthropic
SDKs against the loopback server, and the real SmolLM2-135M-Instruct through hf_local."""

import math
import re

import numpy as np
import pytest

from harness.errors import ConfigError, LLMError, TransientLLMError
from harness.llm import LLM, ChatResult, make_backend
from harness.llm.cache import CallCache, Ledger
from harness.records import ActivationRecord, NeuronRecord
from harness.scoring.detection import METRICS, WindowJudge, metrics, p_yes, parse
from tests.fake_llm_server import FakeLLMServer


def _record(text: str, acts: list[float], kind: str) -> ActivationRecord:
    tokens = re.findall(r"\s*\S+", text)
    assert len(tokens) == len(acts)
    return ActivationRecord(tokens=tokens, activations=acts, kind=kind)


def tea_neuron(decoy: bool = False, neuron: int = 0) -> NeuronRecord:
    """Three active top windows (on "tea"/"coffee", above max50 = 5) and four inactive random ones;
    with `decoy`, one inactive window says "tea" (activation 2)."""
    test = [_record("We drank tea today", [0, 0, 9, 0], "top"),
            _record("hot coffee is nice", [0, 8, 0, 0], "top"),
            _record("tea and cake again", [7, 0, 0.5, 0], "top"),
            _record("The cat sat down", [0, 0.1, 0, 0], "random"),
            _record("A dog ran far", [0, 0.5, 0, 0], "random"),
            _record("Rain fell on roofs", [0, 0, 0, 0.3], "random"),
            _record("My tea went cold", [0, 2, 0, 0], "random") if decoy
            else _record("Birds sang all morning", [0, 0, 0, 0], "random")]
    return NeuronRecord(layer=1, neuron=neuron, test=test, calibration=test, max_activation=10.0)


EXPLANATION = "hot drinks: tea, coffee"


def _request(messages) -> tuple[set[str], list[str]]:
    """The explanation's words and the window texts of a judge prompt."""
    user = messages[-1]["content"]
    explanation = re.match(r"Explanation: (.*?)\n\n", user).group(1)
    single = re.search(r"^Text: (.*)$", user, re.MULTILINE)
    texts = [single.group(1)] if single else re.findall(r"^\d+: (.*)$", user.split("Texts:\n")[1].split("\n\n")[0],
                                                        re.MULTILINE)
    return set(re.findall(r"[a-z]+", explanation.lower())), texts


def keyword_says_yes(words: set[str], text: str) -> bool:
    """The fake judge's rule: a named word occurs in the text (in fuzzing: among the marked tokens)."""
    marked = re.findall(r"<<(.*?)>>", text)
    return bool(words & set(re.findall(r"[a-z]+", (" ".join(marked) if "<<" in text else text).lower())))


def _tokens(text: str, yes_mass: dict[int, float] | None = None) -> list[dict]:
    """`text` as logprob entries (each token a run of non-space after its spaces). With `yes_mass`
    {offset of an answer word: P(yes)}, those entries carry top alternatives yes/no/other."""
    out, at = [], 0
    for tok in re.findall(r"\s*\S+|\s+", text):
        word_at = at + len(tok) - len(tok.lstrip())
        entry = {"token": tok, "logprob": -0.05}
        if yes_mass is not None and word_at in yes_mass:
            py = yes_mass[word_at]
            entry["top"] = {"yes": math.log(0.9 * py), " Yes": math.log(0.05 * py), "No": math.log(0.95 * (1 - py)),
                            "maybe": math.log(0.05)}
        out.append(entry)
        at += len(tok)
    return out


class KeywordJudge:
    """A fake backend: answers "yes" exactly for windows naming a word of the explanation. Options:
    `malformed`: windows containing this word get "maybe"; `preamble`: packed answers start with a
    chatty line; `logprobs`: None (none), "sampled" (only the sampled token's) or "top" (a greedy
    "no" everywhere, with yes-mass 0.4 on matching windows and 0.1 elsewhere); `refuse` / `outage`:
    prompts with this word fail for good / with a TransientLLMError."""

    name, model, paid, concurrency = "keyword", "keyword-1", False, 2

    def __init__(self, malformed=None, preamble=False, logprobs=None, refuse=None, outage=None):
        self.malformed, self.preamble, self.logprobs = malformed, preamble, logprobs
        self.refuse, self.outage = refuse, outage
        self.requests: list[list[dict]] = []

    def identity(self):
        return {"malformed": self.malformed, "preamble": self.preamble, "logprobs": self.logprobs}

    def chat(self, messages, params):
        self.requests.append(messages)
        words, texts = _request(messages)
        joined = " ".join(texts)
        if self.outage and self.outage in joined:
            raise TransientLLMError("the judge's server did not answer")
        if self.refuse and self.refuse in joined:
            raise LLMError("refused")
        answers = ["maybe" if self.malformed and self.malformed in t
                   else "no" if self.logprobs == "top" or not keyword_says_yes(words, t) else "yes" for t in texts]
        if len(texts) == 1:
            text = answers[0]
        else:
            text = ("Here are my answers:\n" if self.preamble else "") + "\n".join(
                f"{n}: {a}" for n, a in enumerate(answers, 1))
        if not params.logprobs or self.logprobs is None:
            return ChatResult(texts=[text])
        offsets = [m.start(1) for m in re.finditer(r"(?:^|: )(yes|no|maybe)", text)]
        mass = {o: 0.4 if keyword_says_yes(words, t) else 0.1 for o, t in zip(offsets, texts)}
        return ChatResult(texts=[text], logprobs=[_tokens(text, mass if self.logprobs == "top" else None)])


def judge(backend, tmp_path, **kw) -> WindowJudge:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return WindowJudge(LLM(backend, cache=CallCache(tmp_path / "calls.sqlite")), **kw)


def test_a_keyword_judge_scores_clean_and_decoy_neurons_in_one_batch(tmp_path, monkeypatch):
    backend = KeywordJudge()
    j = judge(backend, tmp_path)
    batches = []
    real = j.llm.chat_batch
    monkeypatch.setattr(j.llm, "chat_batch", lambda convs, **p: batches.append(len(convs)) or real(convs, **p))
    clean, decoy = j.score([(tea_neuron(), EXPLANATION), (tea_neuron(decoy=True, neuron=1), EXPLANATION)])
    assert batches == [14]  # every window of both neurons in one chat_batch
    assert set(clean) == set(METRICS)
    assert clean == {"auroc": 1.0, "balacc": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "fpr": 0.0,
                     "failed_fraction": 0.0}
    # "My tea went cold" is inactive (2 < 5) but names tea: one false positive among four negatives
    assert decoy["precision"] == pytest.approx(3 / 4) and decoy["recall"] == 1.0
    assert decoy["fpr"] == pytest.approx(1 / 4) and decoy["balacc"] == pytest.approx(0.875)
    assert decoy["f1"] == pytest.approx(6 / 7) and decoy["auroc"] == pytest.approx(0.875)
    assert (j.slots, j.failed_slots, j.read_from["text"]) == (14, 0, 14)
    # an explanation naming nothing in the windows: every answer "no", AUROC at its no-information value
    [blind] = j.score([(tea_neuron(), "mentions of geology")])
    assert blind["auroc"] == 0.5 and blind["balacc"] == 0.5 and blind["recall"] == 0.0
    assert math.isnan(blind["precision"]) and blind["fpr"] == 0.0
    # the same questions again are served by the call cache
    n = len(backend.requests)
    assert j.score([(tea_neuron(), EXPLANATION)]) == [clean] and len(backend.requests) == n


def test_packed_prompts_number_every_window_once_and_parse(tmp_path):
    backend = KeywordJudge()
    single = judge(KeywordJudge(), tmp_path / "a").score([(tea_neuron(decoy=True), EXPLANATION)])
    packed = judge(backend, tmp_path / "b", windows_per_prompt=3).score([(tea_neuron(decoy=True), EXPLANATION)])
    assert packed == single
    shown = [_request(m)[1] for m in backend.requests]
    assert [len(s) for s in shown] == [3, 3, 1]
    assert sorted(t for s in shown for t in s) == sorted("".join(r.tokens) for r in tea_neuron(decoy=True).test)
    assert any(sum(keyword_says_yes({"tea", "coffee"}, t) for t in s) not in (0, len(s)) for s in shown)  # shuffled


def test_parse_is_strict():
    assert parse(" Yes.\n", 1) == [(True, 1)]
    assert parse("no", 1) == [(False, 0)]
    assert parse("Yes, the text mentions tea", 1) == [None]
    assert parse("\nNo\n\nThe text is about cats.", 1) == [(False, 1)]  # a comment after the answer is ignored
    assert parse("1: yes\n2: no\n\nBoth are clear.", 2) == [(True, 3), (False, 10)]
    assert parse("1: yes\nBoth are clear.", 2) == [None, None]  # ... not one in its place
    assert parse("1: yes\n2: No\n\n3: maybe", 3) == [(True, 3), (False, 10), None]
    assert parse("1: yes\n1: no\n2: no", 3) == [None, (False, 16), None]  # repeated 1, missing 3
    assert parse("Sure:\n1: yes\n2: no", 2) == [None, None]  # a line of another form: nothing is trusted
    assert parse("1: yes\n2: no\n4: no", 3) == [None, None, None]  # a number outside 1..3


def test_a_malformed_answer_is_a_counted_failed_slot_never_a_no(tmp_path):
    # "cake" is in an active window: read as "no" it would cost recall; as a failed slot it is left out
    j = judge(KeywordJudge(malformed="cake"), tmp_path / "a")
    [m] = j.score([(tea_neuron(), EXPLANATION)])
    assert (j.slots, j.failed_slots) == (7, 1)
    assert m["failed_fraction"] == pytest.approx(1 / 7) and m["recall"] == 1.0 and m["auroc"] == 1.0
    packed = judge(KeywordJudge(malformed="cake"), tmp_path / "b", windows_per_prompt=7)
    assert packed.score([(tea_neuron(), EXPLANATION)]) == [m] and packed.failed_slots == 1
    # a chatty first line fails every slot of its prompt; a request refused for good fails its slots
    chatty = judge(KeywordJudge(preamble=True), tmp_path / "c", windows_per_prompt=7)
    [none] = chatty.score([(tea_neuron(), EXPLANATION)])
    assert none["failed_fraction"] == 1.0 and math.isnan(none["auroc"]) and math.isnan(none["recall"])
    refused = judge(KeywordJudge(refuse="cake"), tmp_path / "d")
    assert refused.score([(tea_neuron(), EXPLANATION)]) == [m] and refused.failed_slots == 1


def test_an_outage_propagates(tmp_path):
    with pytest.raises(TransientLLMError, match="did not answer"):
        judge(KeywordJudge(outage="cake"), tmp_path).score([(tea_neuron(), EXPLANATION)])


@pytest.mark.parametrize("k", [1, 3])
def test_p_yes_is_read_from_top_logprobs(tmp_path, k):
    """The judge says "no" to every window, but its yes-mass is higher on the active ones: AUROC
    reads the logprobs (1.0) while the decision metrics read the answers (balanced accuracy 0.5)."""
    j = judge(KeywordJudge(logprobs="top"), tmp_path, windows_per_prompt=k)
    [(labels, p)] = j.judge([(tea_neuron(), EXPLANATION)])
    # yes-tokens "yes" and " Yes" against "No"; "maybe" is neither
    assert p[labels] == pytest.approx([0.4] * 3)
    assert p[~labels] == pytest.approx([0.1] * 4)
    assert j.read_from == {"top": 7}
    [m] = j.score([(tea_neuron(), EXPLANATION)])
    assert m["auroc"] == 1.0 and m["balacc"] == 0.5 and m["recall"] == 0.0 and math.isnan(m["precision"])


def test_p_yes_from_the_sampled_token_alone_and_from_the_text(tmp_path):
    j = judge(KeywordJudge(logprobs="sampled"), tmp_path, windows_per_prompt=2)
    [(labels, p)] = j.judge([(tea_neuron(), EXPLANATION)])
    assert p[labels] == pytest.approx([math.exp(-0.05)] * 3)
    assert p[~labels] == pytest.approx([1 - math.exp(-0.05)] * 4)
    assert j.read_from == {"sampled": 7}
    assert p_yes({"token": "No", "logprob": math.log(0.8)}, False) == (pytest.approx(0.2), "sampled")
    assert p_yes({"token": "Sure", "logprob": -0.1}, True) == (1.0, "text")  # the token is no yes/no
    assert p_yes(None, False) == (0.0, "text")
    # logprobs off: the answers themselves
    off = judge(KeywordJudge(logprobs="sampled"), tmp_path / "off", sampling={"logprobs": False})
    [(_, p)] = off.judge([(tea_neuron(), EXPLANATION)])
    assert set(p[labels]) == {1.0} and set(p[~labels]) == {0.0} and off.read_from == {"text": 7}


def test_fuzzing_marks_the_active_tokens_and_as_many_random_ones(tmp_path):
    def prompts(seed):
        backend = KeywordJudge()
        j = judge(backend, tmp_path / f"s{seed}-{len(list(tmp_path.iterdir()))}", fuzz=True, seed=seed)  # no cache hit
        scores = j.score([(tea_neuron(), EXPLANATION)])
        return scores, {_request(m)[1][0].replace("<<", "").replace(">>", ""): _request(m)[1][0]
                        for m in backend.requests}, backend.requests[0][0]["content"]

    scores, shown, system = prompts(0)
    assert "marked" in system
    assert shown["We drank tea today"] == "We drank <<tea>> today"
    assert shown["hot coffee is nice"] == "hot <<coffee>> is nice"
    assert shown["tea and cake again"] == "<<tea>> and cake again"  # cake (0.5) is below the threshold
    negatives = ["The cat sat down", "A dog ran far", "Rain fell on roofs", "Birds sang all morning"]
    assert all(shown[t].count("<<") == 1 for t in negatives)  # one mark, as each active window has
    assert scores == [{"auroc": 1.0, "balacc": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "fpr": 0.0,
                       "failed_fraction": 0.0}]
    assert prompts(0)[1] == shown  # deterministic
    assert [prompts(1)[1][t] for t in negatives] != [shown[t] for t in negatives]  # the seed draws them
    # marks as positions: the active tokens, one random token per negative
    j = WindowJudge(None, fuzz=True)
    marks = j.marks(tea_neuron(decoy=True), np.array([True] * 3 + [False] * 4))
    assert marks[:3] == [[2], [1], [0]] and all(len(m) == 1 for m in marks[3:])


def test_bad_options_are_config_errors():
    for bad in ({"windows_per_prompt": 0}, {"windows_per_prompt": 1.5}, {"fuzz": "yes"}, {"active": "top50"},
                {"sampling": {"n": 3}}):
        with pytest.raises(ConfigError):
            WindowJudge(None, **bad)


def test_metrics_are_nan_where_undefined():
    m = metrics(np.array([True, True]), np.array([0.9, 0.2]), np.array([True, False]), failed=2)
    assert math.isnan(m["auroc"]) and math.isnan(m["balacc"]) and math.isnan(m["fpr"])
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["failed_fraction"] == 0.5
    empty = metrics(np.array([], dtype=bool), np.array([]), np.array([], dtype=bool))
    assert all(math.isnan(v) for v in empty.values())


def test_the_openai_and_anthropic_sdks_answer_forms(tmp_path, monkeypatch):
    """Chat Completions with top_logprobs (the answer token's alternatives), without them (the
    sampled token's logprob), and Anthropic (no logprobs: the answer text)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-0123456789abcdefghijklmnopqrstuv")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-fake-0123456789abcdefghijklmnopqrstuv")

    def reply(body):
        words, texts = _request(body["messages"])
        return "Yes" if keyword_says_yes(words, texts[0]) else "No"

    def content(body, text):
        top = [{"token": "Yes", "logprob": math.log(0.7 if text == "Yes" else 0.2), "bytes": None},
               {"token": "No", "logprob": math.log(0.3 if text == "Yes" else 0.8), "bytes": None}]
        return [{"token": text, "logprob": top[0 if text == "Yes" else 1]["logprob"], "bytes": None,
                 "top_logprobs": top if body.get("top_logprobs") else []}]

    with FakeLLMServer(reply) as server:
        server.chat_logprobs = content
        out = {}
        for name, extra in (("top", {"top_logprobs": 5}), ("sampled", {}), ("anthropic", None)):
            cfg = {"backend": "anthropic" if extra is None else "openai_compatible", "model": "judge",
                   "base_url": server.url + ("" if extra is None else "/v1"), "timeout": 5, "max_retries": 0,
                   **(extra or {})}
            j = WindowJudge(LLM(make_backend(cfg), ledger=Ledger(), cache=CallCache(tmp_path / f"{name}.sqlite")))
            [(labels, p)] = j.judge([(tea_neuron(decoy=True), EXPLANATION)])
            out[name] = (labels, p, dict(j.read_from))
    labels = out["top"][0]
    assert out["top"][2] == {"top": 7} and out["sampled"][2] == {"sampled": 7} and out["anthropic"][2] == {"text": 7}
    said = np.array([True] * 3 + [False] * 3 + [True])  # the decoy window says tea
    assert out["top"][1] == pytest.approx(np.where(said, 0.7, 0.2))
    assert out["sampled"][1] == pytest.approx(np.where(said, 0.7, 1 - 0.8))
    assert list(out["anthropic"][1]) == list(said.astype(float))
    assert list(labels) == [True] * 3 + [False] * 4


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.usefixtures("one_thread")
def test_smollm2_judges_through_hf_local(tmp_path):
    """The whole path on the real offline SmolLM2-135M-Instruct (conf/explainer/hf_local.yaml's llm
    block): prompts batched through hf_local, answers parsed, P(yes) from its top logprobs. (About
    0.35 s of CPU per window, one window per prompt; its P(yes) stays near 0.5 on this neuron.)"""
    llm = LLM(make_backend({"backend": "hf_local", "model": "smollm2_135m_instruct", "subject": "smollm2_135m",
                            "path": None, "device": "cpu", "dtype": "float32", "batch_size": 8}),
              cache=CallCache(tmp_path / "calls.sqlite"))
    items = [(tea_neuron(decoy=True), EXPLANATION)]
    for kw in ({}, {"fuzz": True}, {"windows_per_prompt": 7}):
        j = WindowJudge(llm, **kw)
        [(labels, p)] = j.judge(items)
        answered = ~np.isnan(p)
        assert list(labels) == [True] * 3 + [False] * 4
        assert ((p[answered] >= 0) & (p[answered] <= 1)).all()
        # hf_local gives every answer token its top alternatives, so no slot falls back to the text
        assert answered.any() and dict(j.read_from) == {"top": int(answered.sum())}
        assert (j.slots, j.failed_slots) == (7, int((~answered).sum()))
        [m] = j.score(items)  # from the cache
        assert all(math.isnan(v) or 0 <= v <= 1 for v in m.values())
        assert m["failed_fraction"] == pytest.approx(1 - answered.mean())
