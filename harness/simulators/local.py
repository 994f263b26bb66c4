"""The logprob simulators over an in-process model (`llm.backend: hf_local`): `all_at_once` and
`one_at_a_time` read the model's value distribution at each tab (harness.simulators.readout).
all_at_once over a served model hands its prompt to `ServedReadout` instead.

The continuation readout in one pass. all_at_once reads the prediction after an extra "1" at
every tab in the same forward pass as the window: after the window it appends one "1" token per
line whose attention mask admits only the prompt up to that line's tab (a 4D "tree" mask) and
whose position id is the tab's position + 1, so its logits are exactly those of the prompt
"…tok_i<TAB>1"."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import torch
from transformers import DynamicCache

from harness.errors import ConfigError
from harness.llm.cache import CallCache
from harness.llm.hf_local import load_local_model
from harness.records import ActivationRecord
from harness.simulators.readout import (ValueTokens, expected_values, explanation_segment, shots_segments,
                                        window_segments)
from harness.simulators.lexical import TokenMatchSimulator
from harness.simulators.served import ServedReadout

log = logging.getLogger(__name__)


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
                 tokenizer=None, call_cache: str | None = None):
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
        self._memo: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}  # (explanation, tokens) -> expected values
        # hf_local: each window's expected values also kept on disk, so an interrupted cell resumes where
        # it stopped (over a served model, ServedReadout caches its calls instead)
        self._store = CallCache(call_cache) if call_cache and llm.get("backend") == "hf_local" else None
        self.forward_passes = 0  # sequences run through the model (one row of a batch = one pass)
        self.forward_calls = 0  # batched model calls

    def _load(self):
        if self._model is None:
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

    # The prompt as ids: the segments' encodings concatenated (harness.simulators.readout).
    def shots_ids(self) -> list[int]:
        return [i for seg in shots_segments() for i in self._enc(seg)]

    def prefix_ids(self, explanation: str) -> list[int]:
        """Instruction, few-shot neurons with revealed values, then the explanation: shared by every
        window of a neuron."""
        return self.shots_ids() + self._enc(explanation_segment(explanation))

    def window_ids(self, record: ActivationRecord) -> tuple[list[int], list[int]]:
        """The held-out window's ids and the index of each tab."""
        segs, tab_segs = window_segments(record)
        tab_segs = set(tab_segs)
        ids, tabs = [], []
        for j, seg in enumerate(segs):
            if j in tab_segs:
                tabs.append(len(ids))
            ids += self._enc(seg)
        return ids, tabs

    def simulate(self, explanation: str, records: list[ActivationRecord]) -> list[list[float] | None]:
        """Expected values per window. A window already simulated with the same explanation is not run
        again (the floor borrows other neurons' explanations and neurons share random windows; a judge
        simulates calibration before the cell does): its prompt is the same, and the batch a window
        runs in changes no bit of its result (measured: batch sizes 2, 4 and 16 on SmolLM2)."""
        keys = [(explanation, tuple(r.tokens)) for r in records]
        todo = {k: r for k, r in zip(keys, records) if k not in self._memo}
        if self._store is not None and todo:
            todo = self._recall(explanation, todo)
        for k, m in zip(todo, self.masses(explanation, list(todo.values())) if todo else []):
            if m is not None:  # a failed window is tried again next time
                self._memo[k] = expected_values(m)
                if self._store is not None:
                    self._store.put(self._store_key(self.prefix_ids(explanation), todo[k]),
                                    {"explanation": explanation, "tokens": list(k[1])},
                                    {"expected": self._memo[k].tolist()})
        sims = [self._memo.get(k) for k in keys]
        if self.literal is not None:
            named = self.literal.simulate(explanation, records)
            sims = [None if s is None else np.maximum(s, n) for s, n in zip(sims, named)]
        return [None if s is None else s.tolist() for s in sims]


    def _store_key(self, prefix: list[int], record: ActivationRecord) -> str:
        """What fixes a window's expected values: the readout, the model and how it runs, torch, and
        the prompt's ids (so a change to the prompt's text or the tokenizer never hits a stale entry)."""
        spec = {"readout": type(self).__name__, "reuse_prefix": getattr(self, "reuse_prefix", None),
                "llm": {k: self.llm.get(k) for k in ("subject", "path", "model", "device", "dtype")},
                "torch": torch.__version__, "prompt": prefix + self.window_ids(record)[0]}
        return "simulation:" + hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def _recall(self, explanation: str, todo: dict) -> dict:
        """Move the windows of `todo` found on disk into the memo; returns those still to simulate.
        json round-trips a float64 exactly, so a recalled window equals a fresh run's bit for bit."""
        self._load()
        prefix = self.prefix_ids(explanation)
        left = {}
        for k, r in todo.items():
            hit = self._store.get(self._store_key(prefix, r))
            if hit is None:
                left[k] = r
            else:
                self._memo[k] = np.asarray(hit["expected"], dtype=np.float64)
        return left


class AllAtOnceSimulator(_LogprobSimulator):
    """Bills et al.'s all-at-once simulation: one forward pass per window, windows batched, the
    key/value cache of the shared prefix (instruction + few-shot + explanation) computed once per
    explanation and expanded across each batch (`reuse_prefix`)."""

    served_ok = True

    def __init__(self, llm: dict | None = None, batch_size: int = 16, reuse_prefix: bool = True,
                 max_context: int | None = None, literal: bool = False, ten: str = "split",
                 call_cache: str | None = None, windows_per_request: int = 1, model=None, tokenizer=None,
                 ledger=None):
        super().__init__(llm, batch_size, literal, model, tokenizer, call_cache)
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
            prefix = "".join(shots_segments()) + explanation_segment(explanation)
            return self.served.masses(prefix, [window_segments(r) for r in records])
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
