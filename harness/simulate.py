"""Simulators: predict a neuron's activation on each token of held-out records from an
explanation. A registry from config name to a class with `simulate(explanation, records)`,
returning one list of predictions (on the 0–10 scale) per record, or None for a record the
simulator failed on (scorers leave such windows out and never treat them as zeros)."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import DynamicCache

from harness.errors import ConfigError, HarnessError, TransientLLMError
from harness.formatting import FEW_SHOT_NEURONS, escaped, normalized
from harness.records import ActivationRecord
from harness.components import RunContext, build

log = logging.getLogger(__name__)

class Simulator(Protocol):
    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float] | None]: ...


_STOPWORDS = {"the", "and", "for", "with", "that", "this", "token", "tokens", "word", "words", "like",
              "fires", "on", "of", "in", "a", "an", "to", "or", "is", "are", "mentions", "nothing", "particular"}


@dataclass
class TokenMatchSimulator:
    """No LLM: predict `high` on tokens the explanation names, else 0. Named tokens are the
    quoted strings in the explanation if it has any, otherwise its non-stopword words."""

    high: float = 10.0
    stopwords: set[str] = field(default_factory=lambda: set(_STOPWORDS))

    def named_tokens(self, explanation: str) -> set[str]:
        quoted = re.findall(r'"([^"]+)"', explanation)
        words = quoted or [w for w in re.findall(r"[\w']+", explanation) if w.lower() not in self.stopwords]
        return {w.strip().lower() for w in words if w.strip()}

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float]]:
        named = self.named_tokens(explanation)
        return [[self.high if t.strip().lower() in named else 0.0 for t in r.tokens] for r in records]


@dataclass
class OracleQuantizedSimulator:
    """The ceiling control: ignores the explanation and returns the true activations quantised to
    the 0–10 scale simulators use (Bills et al.'s floor(10·relu(a)/max), max over the records
    given). What it loses is what the scale alone costs under each scoring rule."""

    reads_explanation = False  # a control: never a leaderboard entry

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float]]:
        return [[float(v) for v in row] for row in normalized(records)]


# --- LLM simulators ----------------------------------------------------------------------------
#
# `all_at_once` and `one_at_a_time` read the simulator model's next-token distribution over the
# activation values "0".."10" and predict the expected value Σ v·p(v) (Bills et al. 2023). The
# prompt is our own: a short instruction, few-shot neurons whose activations are revealed as
# `token<TAB>value` lines, then the explanation and the held-out window as `token<TAB>unknown`
# lines. The value of token i would be written right after its tab, so the distribution is read
# from the logits at the tab's position.
#
# Values that are more than one token. Where every value "0".."10" is one token (GPT-4's
# tokenizer), p(v) is that token's probability, as in Bills et al. Where a value is two tokens
# (SmolLM2 writes "10" as "1","0"), each value's mass is the probability of writing exactly that
# value and then ending it: p(10) = P("1" | …tab) · P("0" | …tab "1"), and the one-token value that
# is its first token is read as p(1) = P("1" | …tab) · P(newline | …tab "1"). "1" followed by any
# other token ("11".."19", "1.", …) writes no value and gets no mass (with SmolLM2 on frozen-set
# windows: a median 27% of P("1"), 10% of the value tokens' mass; the README gives the measurement). Other one-token values are read as P(v), as in Bills et al.: no value starts with them,
# so their continuation cannot make another value. The masses are then renormalised over the 11
# values. The second factor needs the model's prediction after an extra "1" at every tab.
# all_at_once gets it in the same forward pass: after the window it appends one "1" token per line
# whose attention mask admits only the prompt up to that line's tab (a 4D "tree" mask) and whose
# position id is the tab's position + 1, so its logits are exactly those of the prompt
# "…tok_i<TAB>1".

VALUES = tuple(range(11))
_INSTRUCTION = (
    "Each neuron of a language model reads a text one token at a time and takes an activation at every "
    "token, written on a scale from 0 (silent) to 10 (its strongest response). For each neuron below there "
    "is a description of what it responds to, then a text written one token per line as token<TAB>activation. "
    "Most tokens have activation 0. Where the activation is written as unknown, it follows from the "
    "description.")
# The few-shot neurons (values revealed) are harness.formatting.FEW_SHOT_NEURONS.


def expected_values(masses: np.ndarray) -> np.ndarray:
    """(..., 11) unnormalised probabilities of the values 0..10 → their expected value, after
    renormalising over the 11 values."""
    masses = np.asarray(masses, dtype=np.float64)
    return (masses * np.arange(11)).sum(-1) / masses.sum(-1)


@dataclass(frozen=True)
class ValueTokens:
    """How the values 0..10 are written in tokens: `first[v]` is the first token of value v, and
    `second[v]` its second token (None for one-token values). `continuations` are the distinct first
    tokens of two-token values (SmolLM2: just "1"), each needing one extra readout per position."""

    first: tuple[int, ...]
    second: tuple[int | None, ...]
    tab: int
    newline: int

    @property
    def continuations(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(f for f, s in zip(self.first, self.second) if s is not None))

    @classmethod
    def of(cls, tokenizer) -> "ValueTokens":
        enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        tab, newline = enc("\t"), enc("\n")
        if len(tab) != 1 or len(newline) != 1:
            raise ConfigError("simulator tokenizer must write tab and newline as single tokens")
        first, second = [], []
        for v in VALUES:
            ids = enc(f"\t{v}\n")
            if ids[0] != tab[0] or ids[-1] != newline[0] or not 1 <= len(ids) - 2 <= 2:
                raise ConfigError(f"simulator tokenizer writes the value {v} as {ids}; only one- or two-token "
                                  "values between a tab and a newline are supported")
            first.append(ids[1])
            second.append(ids[2] if len(ids) == 4 else None)
        return cls(tuple(first), tuple(second), tab[0], newline[0])

    def masses(self, first_logprobs: np.ndarray, cont_logprobs: dict[int, np.ndarray]) -> np.ndarray:
        """(n, vocab) log-probabilities at the tab positions, and for each continuation token c its
        (n, vocab) log-probabilities after "tab c" → (n, 11) value masses, each the probability of
        writing exactly that value (see the module note)."""
        out = np.exp(first_logprobs[:, list(self.first)])
        for v, (f, s) in enumerate(zip(self.first, self.second)):
            if s is not None:  # a two-token value: its first token, then its second
                out[:, v] *= np.exp(cont_logprobs[f][:, s])
            elif f in cont_logprobs:  # a prefix of a two-token value: the value ends after it
                out[:, v] *= np.exp(cont_logprobs[f][:, self.newline])
        return out


def _logprobs(model, hidden: torch.Tensor) -> np.ndarray:
    """Next-token log-probabilities from final hidden states (the model's own unembedding, with
    its final logit soft-capping where it has one)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.log_softmax(-1).cpu().numpy()


class _LogprobSimulator:
    """Shared by all_at_once and one_at_a_time: the prompt as token ids, assembled segment by
    segment so every value slot's position is known exactly."""

    served_ok = False  # whether the simulator also runs over a served model's completions endpoint

    def __init__(self, llm: dict | None = None, batch_size: int = 16, literal: bool = False, model=None,
                 tokenizer=None):
        llm = dict(llm or {"backend": "hf_local", "model": "smollm2_135m_instruct", "subject": "smollm2_135m"})
        if llm.get("backend") != "hf_local" and not (self.served_ok and llm.get("backend") == "openai_compatible"):
            raise ConfigError(f"simulator backend {llm.get('backend')!r}: {type(self).__name__} reads a local "
                              "model's logits (backend: hf_local)" + (" or a served model's prompt logprobs "
                              "(backend: openai_compatible)" if self.served_ok else "")
                              + "; for chat APIs use simulator=json")
        self.llm, self.batch_size = llm, batch_size
        # literal: on a token the explanation names (token_match's rule) predict at least 10
        self.literal = TokenMatchSimulator() if literal else None
        self._model, self._tokenizer = model, tokenizer
        self._enc_cache: dict[str, list[int]] = {}
        self.forward_passes = 0  # sequences run through the model (one row of a batch = one pass)
        self.forward_calls = 0  # batched model calls

    def _load(self):
        if self._model is None:
            from harness.llm.hf_local import load_local_model

            self._model, self._tokenizer = load_local_model(
                **{k: self.llm[k] for k in ("subject", "path", "device", "dtype") if self.llm.get(k) is not None})
            self._values = None
        if getattr(self, "_values", None) is None:
            self._values = ValueTokens.of(self._tokenizer)
        return self._model, self._tokenizer, self._values

    def _enc(self, text: str) -> list[int]:
        ids = self._enc_cache.get(text)
        if ids is None:
            ids = self._enc_cache[text] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids

    # The prompt as text segments; each "\t" and "\n" segment is one token (ValueTokens.of checks),
    # so the ids are the segments' encodings concatenated and every value slot's position is exact.
    @staticmethod
    def shots_segments() -> list[str]:
        """The instruction and few-shot neurons with revealed values: the same for every explanation."""
        segs = [_INSTRUCTION + "\n\n"]
        for k, (record, expl) in enumerate(FEW_SHOT_NEURONS):
            segs.append(f"Neuron {k + 1}\nDescription: {expl.strip()}\n<start>\n")
            for tok, value in zip(record.tokens, normalized([record])[0]):
                segs += [escaped(tok), "\t", str(value), "\n"]
            segs.append("<end>\n\n")
        return segs

    @staticmethod
    def explanation_segment(explanation: str) -> str:
        return f"Neuron {len(FEW_SHOT_NEURONS) + 1}\nDescription: {explanation.strip()}\n<start>\n"

    @staticmethod
    def window_segments(record: ActivationRecord) -> tuple[list[str], list[int]]:
        """The held-out window as `token<TAB>unknown` lines, and the index of each tab segment."""
        segs, tabs = [], []
        for tok in record.tokens:
            tabs.append(len(segs) + 1)
            segs += [escaped(tok), "\t", "unknown", "\n"]
        return segs + ["<end>"], tabs

    def shots_ids(self) -> list[int]:
        return [i for seg in self.shots_segments() for i in self._enc(seg)]

    def prefix_ids(self, explanation: str) -> list[int]:
        """Instruction, few-shot neurons with revealed values, then the explanation: shared by every
        window of a neuron."""
        return self.shots_ids() + self._enc(self.explanation_segment(explanation))

    def window_ids(self, record: ActivationRecord) -> tuple[list[int], list[int]]:
        """The held-out window's ids and the index of each tab."""
        segs, tab_segs = self.window_segments(record)
        tab_segs = set(tab_segs)
        ids, tabs = [], []
        for j, seg in enumerate(segs):
            if j in tab_segs:
                tabs.append(len(ids))
            ids += self._enc(seg)
        return ids, tabs

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float] | None]:
        sims = [None if m is None else expected_values(m) for m in self.masses(explanation, records)]
        if self.literal is not None:
            named = self.literal.simulate(explanation, records)
            sims = [None if s is None else np.maximum(s, n) for s, n in zip(sims, named)]
        return [None if s is None else s.tolist() for s in sims]


class AllAtOnceSimulator(_LogprobSimulator):
    """Bills et al.'s all-at-once simulation: one forward pass per window, windows batched, the
    key/value cache of the shared prefix (instruction + few-shot + explanation) computed once per
    explanation and expanded across each batch (`reuse_prefix`)."""

    served_ok = True

    def __init__(self, llm: dict | None = None, batch_size: int = 16, reuse_prefix: bool = True,
                 max_context: int | None = None, literal: bool = False, ten: str = "split",
                 call_cache: str | None = None, windows_per_request: int = 1, model=None, tokenizer=None,
                 ledger=None):
        super().__init__(llm, batch_size, literal, model, tokenizer)
        # over a served model (llm.backend: openai_compatible): the same prompt as text, read from the
        # server's prompt logprobs (harness/llm/completions.py), its calls counted in `ledger`
        self.served = (ServedReadout(self.llm, ten, call_cache, windows_per_request, ledger)
                       if self.llm["backend"] != "hf_local" else None)
        self.reuse_prefix = reuse_prefix
        self._shots_kv = None  # (ids, per-layer keys/values) of the instruction + few-shot block
        self.max_context = max_context  # longest prompt; None: the model's max_position_embeddings

    @torch.no_grad()
    def masses(self, explanation: str, records: list[ActivationRecord]) -> list[np.ndarray | None]:
        """Per window, the (n_tokens, 11) unnormalised value masses (None where it failed)."""
        if self.served is not None:
            prefix = "".join(self.shots_segments()) + self.explanation_segment(explanation)
            return self.served.masses(prefix, [self.window_segments(r) for r in records])
        model, _, vt = self._load()
        prefix = self.prefix_ids(explanation)
        limit = self.max_context or getattr(model.config, "max_position_embeddings", None) or 10**9
        out: list[np.ndarray | None] = [None] * len(records)
        todo = []
        for i, r in enumerate(records):
            ids, tabs = self.window_ids(r)
            if not r.tokens:
                out[i] = np.zeros((0, 11))
            elif len(prefix) + len(ids) + 1 > limit:
                log.warning("window of %d tokens does not fit the simulator's context (%d); left out", len(r.tokens), limit)
            else:
                todo.append((i, ids, tabs))
        prefix_kv = self._prefix_cache(model, prefix) if self.reuse_prefix and todo else None
        for lo in range(0, len(todo), self.batch_size):
            chunk = todo[lo:lo + self.batch_size]
            for (i, _, _), m in zip(chunk, self._forward(model, vt, prefix, chunk, prefix_kv)):
                out[i] = m
        return out

    def _prefix_cache(self, model, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prefix's keys and values (batch 1). The instruction + few-shot part is computed once
        per simulator and extended by each explanation's own tokens."""
        shots = self.shots_ids()
        if self._shots_kv is None or self._shots_kv[0] != shots:
            cache = DynamicCache(config=model.config)
            model.get_decoder()(input_ids=torch.tensor([shots], device=model.device), past_key_values=cache,
                                use_cache=True)
            self.forward_calls += 1
            self._shots_kv = (shots, [(layer.keys, layer.values) for layer in cache.layers])
        assert prefix[:len(shots)] == shots
        cache = DynamicCache(ddp_cache_data=self._shots_kv[1], config=model.config)
        model.get_decoder()(input_ids=torch.tensor([prefix[len(shots):]], device=model.device), past_key_values=cache,
                            use_cache=True)
        self.forward_calls += 1
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _forward(self, model, vt: ValueTokens, prefix: list[int], chunk, prefix_kv) -> list[np.ndarray]:
        conts = vt.continuations
        P = len(prefix)
        rows, positions, parents = [], [], []  # per window: suffix ids, position ids, attention parent
        for _, ids, tabs in chunk:
            n = len(ids)
            seq = list(ids) + [c for c in conts for _ in tabs]
            pos = list(range(P, P + n)) + [P + t + 1 for _ in conts for t in tabs]
            # a token at suffix index j attends to the prefix, to suffix tokens up to `parent[j]`, and to itself
            parent = list(range(n)) + [t for _ in conts for t in tabs]
            rows.append(seq), positions.append(pos), parents.append(parent)
        Q = max(map(len, rows))
        B, dev = len(rows), model.device
        input_ids = torch.full((B, Q), vt.newline, dtype=torch.long)
        position_ids = torch.zeros((B, Q), dtype=torch.long)
        allowed = torch.zeros((B, Q, Q), dtype=torch.bool)
        for b, (seq, pos, parent) in enumerate(zip(rows, positions, parents)):
            L = len(seq)
            input_ids[b, :L] = torch.tensor(seq)
            position_ids[b, :L] = torch.tensor(pos)
            position_ids[b, L:] = torch.arange(P + L, P + Q)
            par = torch.tensor(parent)
            # window tokens: causal; continuation tokens: the window up to their tab, and themselves
            allowed[b, :L] = torch.arange(Q)[None, :] <= par[:, None]
            extra = torch.arange(len(chunk[b][1]), L)
            allowed[b, extra, extra] = True
            allowed[b, L:] = torch.tril(torch.ones(Q - L, Q, dtype=torch.bool), diagonal=L)  # padding: causal
        dtype = model.dtype
        full = torch.cat([torch.ones((B, Q, P), dtype=torch.bool), allowed], dim=2)
        if prefix_kv is not None:
            cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                                 for k, v in prefix_kv], config=model.config)
            query_ids, query_pos, mask, offset = input_ids, position_ids, full, 0
        else:
            cache = None
            pre = torch.tensor(prefix).expand(B, -1)
            query_ids = torch.cat([pre, input_ids], 1)
            query_pos = torch.cat([torch.arange(P).expand(B, -1), position_ids], 1)
            top = torch.tril(torch.ones((P, P + Q), dtype=torch.bool)).expand(B, -1, -1)
            mask, offset = torch.cat([top, full], 1), P
        additive = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)[:, None]
        # the decoder only: the unembedding is applied at the readout positions alone
        hidden = model.get_decoder()(input_ids=query_ids.to(dev), position_ids=query_pos.to(dev),
                                     attention_mask=additive.to(dev), past_key_values=cache,
                                     use_cache=cache is not None).last_hidden_state
        self.forward_calls += 1
        self.forward_passes += B
        out = []
        for b, (_, ids, tabs) in enumerate(chunk):
            n, k = len(ids), len(tabs)
            at = np.asarray(tabs) + offset
            reads = [at] + [offset + n + j * k + np.arange(k) for j in range(len(conts))]
            lp = _logprobs(model, hidden[b, torch.as_tensor(np.concatenate(reads), device=dev)])
            out.append(vt.masses(lp[:k], {c: lp[(j + 1) * k:(j + 2) * k] for j, c in enumerate(conts)}))
        return out


class ServedReadout:
    """all_at_once's readout over a served model's completions endpoint (`llm.backend:
    openai_compatible`; the request form is the llm block's `form`, see harness/llm/completions.py).
    Each window's prompt is the in-process prompt as text (the same segments); its per-token top-k
    logprobs are echoed and a value slot is read from the distribution of the token after its tab.
    `windows_per_request` prompts share one request (the API's prompt list: vLLM, OpenAI's legacy
    API; llama-cpp-python's server takes one prompt per request), since servers skip prefix caching
    for prompt-logprob requests; requests run `llm.concurrency` at a time.

    Top-k rule: a value token outside the server's top-k gets no mass. A slot with no value token in
    its top-k (or whose tab the server tokenized differently, or whose request the server refused
    for good, e.g. longer than its context; an outage stops the cell) is a *failed slot*: its window is
    recorded as failed (None), never read as 0; `slots` and `failed_slots` count them. Two-token
    values (`ten: split`, e.g. SmolLM2 and Llama 3 write "10" as "1","0"): where "1" is in a slot's
    top-k, one more request (the prompt up to that tab, then "1", one generated token) gives
    P("0" | …tab "1") and P(newline | …tab "1") from its top-k, so p(10) and p(1) are read exactly as
    in-process (a continuation outside the top-k gets no mass). `ten: token`: "10" is one token."""

    def __init__(self, llm: dict, ten: str = "split", call_cache: str | None = None, windows_per_request: int = 1,
                 ledger=None):
        from harness.llm import LLM
        from harness.llm.cache import CallCache
        from harness.llm.completions import CompletionsBackend

        if ten not in ("split", "token"):
            raise ConfigError(f"ten must be split (\"10\" is \"1\",\"0\") or token (one token); got {ten!r}")
        params = {k: v for k, v in llm.items() if k not in ("backend", "subject", "path", "device", "dtype")}
        if int(windows_per_request) < 1:
            raise ConfigError(f"windows_per_request must be at least 1; got {windows_per_request!r}")
        self.ten, self.pack = ten, int(windows_per_request)
        self.llm = LLM(CompletionsBackend(name=llm["backend"], **params), ledger=ledger,
                       cache=CallCache(call_cache) if call_cache else None)
        self.slots = self.failed_slots = 0

    def _ask(self, prompts: list[str], echo: bool) -> list[list[dict]]:
        packs = [[{"role": "user", "content": p} for p in prompts[lo:lo + self.pack]]
                 for lo in range(0, len(prompts), self.pack)]
        results = self.llm.chat_batch(packs, temperature=0.0, max_tokens=1, logprobs=True, extra={"echo": echo})
        out: list[list[dict] | None] = []
        for pack, r in zip(packs, results):
            if isinstance(r, TransientLLMError):
                raise r  # an outage: the cell stops incomplete (harness/cell.py)
            if isinstance(r, HarnessError):  # refused for good (e.g. longer than the server's context)
                log.warning("served all_at_once: a request of %d prompt(s) failed: %s", len(pack), r)
                out += [None] * len(pack)
            else:
                out += r.logprobs
        return out

    def masses(self, prefix: str, windows: list[tuple[list[str], list[int]]]) -> list[np.ndarray | None]:
        texts, slot_offsets = [], []
        for segs, tabs in windows:
            starts = np.cumsum([len(prefix)] + [len(seg) for seg in segs])
            texts.append(prefix + "".join(segs))
            slot_offsets.append([int(starts[t]) for t in tabs])
        answers = self._ask(texts, echo=True)
        firsts: list[list[dict[str, float] | None]] = []
        ask_after_one: list[tuple[int, int]] = []  # (window, slot) needing P(· | …tab "1")
        for w, (positions, offsets) in enumerate(zip(answers, slot_offsets)):
            positions = positions or []  # a refused request: every slot of its window fails
            at = {p["offset"]: i for i, p in enumerate(positions) if p["token"] == "\t"}
            row = []
            for j, o in enumerate(offsets):
                i = at.get(o)
                top = positions[i + 1]["top"] if i is not None and i + 1 < len(positions) else None
                row.append(top)
                if top is not None and self.ten == "split" and "1" in top:
                    ask_after_one.append((w, j))
            firsts.append(row)
        after = dict(zip(ask_after_one, self._ask([texts[w][:slot_offsets[w][j] + 1] + "1"
                                                   for w, j in ask_after_one], echo=False)))
        out: list[np.ndarray | None] = []
        for w, row in enumerate(firsts):
            m = np.zeros((len(row), 11))
            for j, top in enumerate(row):
                top = top or {}
                p = {v: math.exp(top[str(v)]) for v in range(11) if str(v) in top}
                m[j, list(p)] = list(p.values())
                if self.ten == "split":
                    m[j, 10] = 0.0
                    if "1" in top:
                        if after[(w, j)] is None:  # the continuation request was refused: the slot fails
                            m[j] = 0.0
                            continue
                        cont = (after[(w, j)][0]["top"] if after[(w, j)] else None) or {}
                        m[j, 10] = p[1] * math.exp(cont["0"]) if "0" in cont else 0.0
                        m[j, 1] = p[1] * math.exp(cont["\n"]) if "\n" in cont else 0.0
            failed = int((m.sum(1) <= 0).sum())
            self.slots += len(row)
            self.failed_slots += failed
            out.append(None if failed else m)
        if self.failed_slots:
            log.warning("served all_at_once: %d of %d slots failed so far (no value token in the top-k)",
                        self.failed_slots, self.slots)
        return out


class OneAtATimeSimulator(_LogprobSimulator):
    """For comparison only: one prompt per token, `prefix + window lines before it + token<TAB>`,
    followed by each continuation token ("1" for SmolLM2); the value distribution is read at the
    tab and the second token of two-token values at the continuation. Same readout as all_at_once,
    ~window-length times the forward passes."""

    @torch.no_grad()
    def masses(self, explanation: str, records: list[ActivationRecord]) -> list[np.ndarray | None]:
        model, _, vt = self._load()
        prefix = self.prefix_ids(explanation)
        conts = vt.continuations
        out = []
        for r in records:
            ids, tabs = self.window_ids(r)
            prompts = [prefix + ids[: t + 1] for t in tabs]
            firsts, cont = [], {c: [] for c in conts}
            for c in conts or (None,):
                rows = [p + ([c] if c is not None else []) for p in prompts]
                for lo in range(0, len(rows), self.batch_size):
                    batch = rows[lo:lo + self.batch_size]
                    width = max(map(len, batch))
                    pad = [[vt.newline] * (width - len(x)) + x for x in batch]  # left-padded
                    att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch])
                    pos = (att.cumsum(1) - 1).clamp(min=0)
                    logits = model(input_ids=torch.tensor(pad, device=model.device), position_ids=pos.to(model.device),
                                   attention_mask=att.to(model.device), logits_to_keep=2).logits.float().log_softmax(-1)
                    self.forward_calls += 1
                    self.forward_passes += len(batch)
                    lp = logits.cpu().numpy()
                    if c is None:
                        firsts.append(lp[:, -1])
                    else:
                        cont[c].append(lp[:, -1])
                        if c == conts[0]:
                            firsts.append(lp[:, -2])
            if not tabs:
                out.append(np.zeros((0, 11)))
                continue
            out.append(vt.masses(np.concatenate(firsts), {c: np.concatenate(v) for c, v in cont.items()}))
        return out


class JsonSimulator:
    """Logprob-free, for chat APIs (Anthropic, most chat models): the model is shown the
    explanation and the window's tokens numbered from 0 and answers with a JSON list of
    [token_index, activation] pairs, one per token, activations 0–10. The answer is parsed
    strictly (valid JSON; every index exactly once; numbers in 0..10); a window whose answer is not
    is asked again once (a new cache key via `extra={"retry": 1}`), then recorded as failed (None)."""

    SYSTEM = ("You predict how strongly a neuron of a language model responds to each token of a text, on a "
              "scale from 0 (silent) to 10 (its strongest response), given a description of the neuron. Most "
              "tokens get 0. Answer with JSON only.")

    def __init__(self, llm: dict | None = None, sampling: dict | None = None, call_cache: str | None = None,
                 ledger=None):
        from harness.llm import LLM, make_backend
        from harness.llm.cache import CallCache

        llm = dict(llm or {"backend": "hf_local", "model": "smollm2_135m_instruct", "subject": "smollm2_135m"})
        self.sampling = {"temperature": 0.0, "max_tokens": 1024, "n": 1, "seed": 0, **(sampling or {})}
        self.llm = LLM(make_backend(llm), ledger=ledger, cache=CallCache(call_cache) if call_cache else None)
        self.failures = 0  # windows given up on (after the retry)

    def messages(self, explanation: str, record: ActivationRecord) -> list[dict[str, str]]:
        lines = "\n".join(f"{i}\t{json.dumps(t)}" for i, t in enumerate(record.tokens))
        n = len(record.tokens)
        return [{"role": "system", "content": self.SYSTEM},
                {"role": "user", "content": f"Neuron description: {explanation.strip()}\n\nTokens (index, then the "
                                            f"token as a JSON string):\n{lines}\n\nReply with a JSON list of {n} "
                                            f"pairs [token_index, activation], one for each index 0 to {n - 1}, "
                                            "activation a number from 0 to 10, e.g. [[0, 0], [1, 7], ...]."}]

    @staticmethod
    def parse(text: str, n_tokens: int) -> list[float] | None:
        """The activations in token order, or None unless `text` is exactly a valid answer (a
        Markdown code fence around the JSON is allowed)."""
        body = text.strip()
        fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.DOTALL)
        if fence:
            body = fence.group(1)
        try:
            pairs = json.loads(body)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not isinstance(pairs, list) or len(pairs) != n_tokens:
            return None
        out: list[float | None] = [None] * n_tokens
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2):
                return None
            index, value = pair
            if (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n_tokens
                    or out[index] is not None):
                return None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 10:
                return None
            out[index] = float(value)
        return out  # every index seen exactly once, so no None is left

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float] | None]:
        out: list[list[float] | None] = [[] if not r.tokens else None for r in records]
        pending = [i for i, r in enumerate(records) if r.tokens]
        for attempt in range(2):
            if not pending:
                break
            extra = {"retry": attempt} if attempt else {}
            results = self.llm.chat_batch([self.messages(explanation, records[i]) for i in pending],
                                          **self.sampling, extra=extra)
            still = []
            for i, result in zip(pending, results):
                if isinstance(result, TransientLLMError):
                    raise result  # an outage: the cell stops incomplete (harness/cell.py)
                if isinstance(result, HarnessError):
                    log.warning("json simulator: window %d failed: %s", i, result)
                    continue  # the request failed for good (after the SDK's retries): no second ask
                parsed = self.parse(result.texts[0], len(records[i].tokens))
                if parsed is None:
                    still.append(i)
                else:
                    out[i] = parsed
            pending = still
        for i in pending:
            log.warning("json simulator: window %d answered malformed or mismatched JSON twice", i)
        self.failures += sum(o is None for o in out)
        return out


class ChatLogprobsSimulator:
    """For chat APIs that return top logprobs only for generated tokens: the model re-writes each
    line of the window as `token<TAB>activation` and the value distribution of line i is read from
    the top logprobs (`llm.top_logprobs`, e.g. 20) of the generated token right after that line's
    tab. A value token outside the top-k gets no mass. A line the model does not reproduce exactly
    (other token text, missing, out of order), or whose top-k holds no value token, is a *failed
    slot*; a window with one is recorded as failed (None), counted in `slots` / `failed_slots`.
    Two-token values (`ten: split`): where the model wrote "1" after the tab, the next token's top
    logprobs give P("0" | …"1") and P(newline | …"1"), read as in all_at_once; where it wrote another
    value, that continuation was never computed, so p(10) is 0 and p(1) = P("1") (the one
    approximation of this reading; `ten: token` for tokenizers that write "10" as one token)."""

    SYSTEM = ("You predict how strongly a neuron of a language model responds to each token of a text, on a scale "
              "from 0 (silent) to 10 (its strongest response), given a description of the neuron. Most tokens get 0.")

    def __init__(self, llm: dict | None = None, sampling: dict | None = None, call_cache: str | None = None,
                 ten: str = "split", ledger=None):
        from harness.llm import LLM, make_backend
        from harness.llm.cache import CallCache

        if ten not in ("split", "token"):
            raise ConfigError(f"ten must be split or token; got {ten!r}")
        llm = dict(llm or {})
        if llm.get("backend") not in ("openai", "openai_compatible") or not llm.get("top_logprobs"):
            raise ConfigError("chat_logprobs needs a Chat Completions backend (openai, openai_compatible) with "
                              "llm.top_logprobs > 0")
        self.ten = ten
        self.sampling = {"temperature": 0.0, "max_tokens": 2048, "n": 1, "seed": 0, **(sampling or {})}
        self.llm = LLM(make_backend(llm), ledger=ledger, cache=CallCache(call_cache) if call_cache else None)
        self.slots = self.failed_slots = 0

    def messages(self, explanation: str, record: ActivationRecord) -> list[dict[str, str]]:
        lines = "\n".join(escaped(t) for t in record.tokens)
        return [{"role": "system", "content": self.SYSTEM},
                {"role": "user", "content": f"Neuron description: {explanation.strip()}\n\nRe-write each of the "
                                            f"{len(record.tokens)} lines below, in order, as the line, a tab and the "
                                            f"neuron's activation on it (a whole number from 0 to 10), and nothing "
                                            f"else:\n{lines}"}]

    @staticmethod
    def _top(entry: dict) -> dict[str, float]:
        top = entry.get("top") or {}
        return {t: lp for t, lp in top.items()
                if isinstance(lp, (int, float)) and not isinstance(lp, bool) and math.isfinite(lp) and lp <= 1e-4}

    def read(self, record: ActivationRecord, tokens: list[dict]) -> np.ndarray:
        """(n_tokens, 11) value masses from the generated tokens; a failed slot's row is all zeros."""
        starts = np.cumsum([0] + [len(t["token"]) for t in tokens])
        at = {int(o): i for i, o in enumerate(starts[:-1])}
        text = "".join(t["token"] for t in tokens)
        m = np.zeros((len(record.tokens), 11))
        offset = 0
        for j, tok in enumerate(record.tokens):
            head = escaped(tok) + "\t"
            if not text.startswith(head, offset) or offset + len(head) not in at:
                break  # the line is not reproduced (or its value does not start a token): this slot and the rest fail
            i = at[offset + len(head)]
            top = self._top(tokens[i])
            p = {v: math.exp(top[str(v)]) for v in range(11) if str(v) in top}
            m[j, list(p)] = list(p.values())
            if self.ten == "split":
                m[j, 10] = 0.0
                if tokens[i]["token"] == "1" and i + 1 < len(tokens) and 1 in p:
                    cont = self._top(tokens[i + 1])
                    m[j, 10] = p[1] * math.exp(cont["0"]) if "0" in cont else 0.0
                    m[j, 1] = p[1] * math.exp(cont["\n"]) if "\n" in cont else 0.0
            end = text.find("\n", offset + len(head))
            offset = len(text) if end < 0 else end + 1
        return m

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float] | None]:
        results = self.llm.chat_batch([self.messages(explanation, r) for r in records], **self.sampling,
                                      logprobs=True)
        out: list[list[float] | None] = []
        for r, result in zip(records, results):
            if isinstance(result, TransientLLMError):
                raise result
            if isinstance(result, HarnessError):
                log.warning("chat_logprobs simulator: a window failed: %s", result)
                out.append(None)
                continue
            m = self.read(r, (result.logprobs or [[]])[0])
            failed = int((m.sum(1) <= 0).sum())
            self.slots += len(r.tokens)
            self.failed_slots += failed
            out.append(None if failed else expected_values(m).tolist() if len(r.tokens) else [])
        return out


def make_simulator(cfg: Any, ledger=None) -> Simulator:
    """The simulator `cfg` names (its `kind` and parameters, checked and defaulted by its params class
    in harness/components.py), handed the run's `ledger` where it makes model calls, so a cell's cost
    counts what simulating cost as well as explaining."""
    params = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    return build("simulator", params.pop("kind", None), params, RunContext(ledger=ledger))
