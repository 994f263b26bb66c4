"""Simulators for chat APIs: `json` (no logprobs: the model answers with the activations as JSON)
and `chat_logprobs` (the value distribution read from the top logprobs of generated tokens)."""

from __future__ import annotations

import json
import logging
import math
import re

import numpy as np

from harness.errors import ConfigError, HarnessError, TransientLLMError
from harness.formatting import escaped
from harness.llm import LLM, make_backend
from harness.llm.cache import CallCache
from harness.records import ActivationRecord
from harness.simulators.readout import check_ten, expected_values, top_k_masses

log = logging.getLogger(__name__)


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
        self.ten = check_ten(ten)
        llm = dict(llm or {})
        if llm.get("backend") not in ("openai", "openai_compatible") or not llm.get("top_logprobs"):
            raise ConfigError("chat_logprobs needs a Chat Completions backend (openai, openai_compatible) with "
                              "llm.top_logprobs > 0")
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
            wrote_one = tokens[i]["token"] == "1" and i + 1 < len(tokens)  # its continuation was generated
            m[j] = top_k_masses(self._top(tokens[i]), self.ten, self._top(tokens[i + 1]) if wrote_one else None)
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
