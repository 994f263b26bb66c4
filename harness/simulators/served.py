"""all_at_once over a served model: the same prompt as text, sent to a completions endpoint
(harness/llm/completions.py), its value slots read from the prompt's echoed top-k logprobs."""

from __future__ import annotations

import logging

import numpy as np

from harness.errors import ConfigError, HarnessError, TransientLLMError
from harness.llm import LLM
from harness.llm.cache import CallCache
from harness.llm.completions import CompletionsBackend
from harness.simulators.readout import check_ten, top_k_masses

log = logging.getLogger(__name__)


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
        params = {k: v for k, v in llm.items() if k not in ("backend", "subject", "path", "device", "dtype")}
        if int(windows_per_request) < 1:
            raise ConfigError(f"windows_per_request must be at least 1; got {windows_per_request!r}")
        self.ten, self.pack = check_ten(ten), int(windows_per_request)
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
                top, after_one = top or {}, None
                if self.ten == "split" and "1" in top:
                    if after[(w, j)] is None:  # the continuation request was refused: the slot fails
                        continue
                    after_one = (after[(w, j)][0]["top"] if after[(w, j)] else None) or {}
                m[j] = top_k_masses(top, self.ten, after_one)
            failed = int((m.sum(1) <= 0).sum())
            self.slots += len(row)
            self.failed_slots += failed
            out.append(None if failed else m)
        if self.failed_slots:
            log.warning("served all_at_once: %d of %d slots failed so far (no value token in the top-k)",
                        self.failed_slots, self.slots)
        return out
