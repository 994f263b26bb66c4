"""Per-token logprobs from an OpenAI-compatible *completions* endpoint, for the all_at_once
simulator over a served model (vLLM, llama.cpp's server, legacy completions APIs).

A request is one or more plain-text prompts (one "user" message each, sent as the API's prompt
list so that several windows share a request; `ChatParams.extra["echo"]` says whether the prompts'
own logprobs are wanted) and the answer's `ChatResult.logprobs[i]`, for prompt i, is a list of
`{"token", "offset", "top"}` per position: the token's text, its character offset in the prompt
(echo) or in the generated text, and the top-k next-token log-probabilities *of that position*
(the distribution the token was drawn from; None where the server gives none). Two forms, chosen
by configuration (`form`, a `completion_form` component of harness/components.py, whose params class
holds the form's own keys):

- `echo`: `echo: true, logprobs: k` on /v1/completions (OpenAI's legacy API, llama.cpp's server):
  `choices[0].logprobs` with `tokens`, `text_offset`, `top_logprobs`. Servers disagree on which
  distribution `top_logprobs[i]` is: OpenAI's convention is the one token i was drawn from
  (`echo_shift: 0`); llama-cpp-python's server gives the one *after* token i (`echo_shift: 1`).
- `prompt_logprobs`: vLLM's extra body `prompt_logprobs: k`: `choices[0].prompt_logprobs[i]` maps
  token ids to `{logprob, rank, decoded_token}` for position i (None for the first); the prompt's
  own tokens come back as `prompt_token_ids` (`return_token_ids` in the extra body).

Server answers are untrusted: sizes are bounded (`max_positions`, k + 1 entries per position),
every logprob must be a finite number ≤ 0 (a tiny positive rounding is clipped), offsets must
increase; anything else is an LLMError. Calls go through the call cache and ledger (`harness.llm.LLM`).
"""

from __future__ import annotations

import math
from typing import Any

from harness.components import COMPLETION_FORMS
from harness.errors import ConfigError, LLMError
from harness.llm import ChatParams, ChatResult
from harness.llm.api import APIBackend


class CompletionsBackend(APIBackend):
    default_key_env = "OPENAI_API_KEY"

    def __init__(self, form: str = "echo", top_logprobs: int = 20, echo_shift: int | None = None,
                 max_positions: int = 32768, **settings):
        import openai

        # echo_shift is the echo form's own key: refused with the other form
        form_params = COMPLETION_FORMS.component(form).parse(
            {} if echo_shift is None else {"echo_shift": echo_shift}, "llm")
        if not 1 <= int(top_logprobs) <= 100:
            raise ConfigError(f"top_logprobs must be between 1 and 100; got {top_logprobs!r}")
        super().__init__(**settings)
        self.form, self.k, self.max_positions = form, int(top_logprobs), max_positions
        self.shift = form_params.get("echo_shift", 0)
        self.client = openai.OpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout,
                                    max_retries=self.max_retries)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "form": self.form, "top_logprobs": self.k, "echo_shift": self.shift}

    def chat(self, messages: list[dict[str, str]], params: ChatParams) -> ChatResult:
        import openai

        prompts = [m["content"] for m in messages]  # several prompts: one request, one choice each
        echo = bool(params.extra.get("echo"))
        kwargs: dict[str, Any] = {"model": self.model, "prompt": prompts[0] if len(prompts) == 1 else prompts,
                                  "max_tokens": params.max_tokens, "temperature": params.temperature,
                                  "seed": params.seed}
        if echo and self.form == "prompt_logprobs":
            kwargs["logprobs"] = self.k
            kwargs["extra_body"] = {"prompt_logprobs": self.k, "return_token_ids": True}
        else:
            kwargs.update(echo=echo, logprobs=self.k)
        self.limiter.wait()
        with self.sdk_errors(openai):
            response = self.client.completions.create(**kwargs)
        choices = sorted(response.choices or [], key=lambda c: c.index)
        if [c.index for c in choices] != list(range(len(prompts))):
            raise LLMError(f"{self.name}: {len(prompts)} prompts were answered with choices "
                           f"{[c.index for c in choices][:10]}")
        positions = [self._vllm_positions(c, len(p)) if echo and self.form == "prompt_logprobs"
                     else self._echo_positions(c.logprobs, echo) for c, p in zip(choices, prompts)]
        usage = response.usage
        return ChatResult(texts=[c.text or "" for c in choices], input_tokens=usage.prompt_tokens if usage else 0,
                          output_tokens=usage.completion_tokens if usage else 0, logprobs=positions)

    def _logprob(self, x: Any) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x > 1e-4:
            raise LLMError(f"{self.name}: the server answered a logprob {str(x)[:40]!r}, not a finite number ≤ 0")
        return min(float(x), 0.0)

    def _top(self, entry: Any) -> dict[str, float] | None:
        if entry is None:
            return None
        if not isinstance(entry, dict) or len(entry) > self.k + 1:
            raise LLMError(f"{self.name}: a top_logprobs entry is not a mapping of at most {self.k + 1} tokens")
        if not all(isinstance(t, str) and len(t) <= 256 for t in entry):
            raise LLMError(f"{self.name}: a top_logprobs token is not a short string")
        return {t: self._logprob(v) for t, v in entry.items()}

    def _echo_positions(self, lp: Any, echo: bool) -> list[dict[str, Any]]:
        if lp is None:
            raise LLMError(f"{self.name}: the server returned no logprobs (llama.cpp's server needs logits_all)")
        tokens, offsets, tops = lp.tokens or [], lp.text_offset or [], lp.top_logprobs or []
        if not (len(tokens) == len(offsets) == len(tops)) or len(tokens) > self.max_positions:
            raise LLMError(f"{self.name}: logprobs of {len(tokens)} tokens, {len(offsets)} offsets and "
                           f"{len(tops)} top_logprobs (at most {self.max_positions} positions)")
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) or \
                any(b < a for a, b in zip(offsets, offsets[1:])):
            raise LLMError(f"{self.name}: text offsets are not increasing integers")
        tops = [self._top(t) for t in tops]
        if echo and self.shift:  # entry i is the distribution after token i: move it to token i + 1
            tops = [None] + tops[:-1]
        return [{"token": str(t), "offset": o, "top": top} for t, o, top in zip(tokens, offsets, tops)]

    def _vllm_positions(self, choice: Any, prompt_chars: int) -> list[dict[str, Any]]:
        extra = choice.model_extra or {}
        entries, ids = extra.get("prompt_logprobs"), extra.get("prompt_token_ids")
        if not isinstance(entries, list) or not isinstance(ids, list) or len(entries) != len(ids) \
                or len(ids) > self.max_positions:
            raise LLMError(f"{self.name}: no prompt_logprobs and prompt_token_ids of equal length in the answer "
                           "(a vLLM server with prompt_logprobs support is needed for form: prompt_logprobs)")
        positions = []
        for i, (entry, tid) in enumerate(zip(entries, ids)):
            if entry is not None and (not isinstance(entry, dict) or len(entry) > self.k + 1):
                raise LLMError(f"{self.name}: prompt_logprobs[{i}] is not a mapping of at most {self.k + 1} tokens")
            top, token = None, None
            if entry is not None:
                top = {}
                for key, v in entry.items():
                    if not isinstance(v, dict) or not isinstance(v.get("decoded_token"), str):
                        raise LLMError(f"{self.name}: prompt_logprobs[{i}] has a malformed entry")
                    top[v["decoded_token"]] = self._logprob(v.get("logprob"))
                    if str(key) == str(tid):
                        token = v["decoded_token"]
            if i and token is None:
                raise LLMError(f"{self.name}: prompt_logprobs[{i}] lacks the prompt's own token {tid}")
            positions.append({"token": token or "", "offset": 0, "top": top})
        # the first token has no entry (so no text): it is whatever the others leave of the prompt
        offset = prompt_chars - sum(len(p["token"]) for p in positions[1:])
        for p in positions[1:]:
            p["offset"] = offset
            offset += len(p["token"])
        return positions
