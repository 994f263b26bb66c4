"""OpenAI Chat Completions through the official `openai` SDK; with `base_url` it also serves
OpenAI-compatible servers (vLLM, llama.cpp server, Ollama). The SDK retries 408/409/429/5xx and
timeouts with exponential backoff and jitter, honouring `retry-after`; what still fails becomes
an LLMError."""

from __future__ import annotations

import os
from typing import Any

from harness.errors import ConfigError, LLMError
from harness.llm import ChatParams, ChatResult
from harness.llm.limits import RateLimiter


def api_key_from_env(var: str | None, required: bool, backend: str) -> str | None:
    key = os.environ.get(var) if var else None
    if required and not key:
        raise ConfigError(f"backend {backend} needs an API key: set the environment variable {var} "
                          "(keys are read from the environment only, never from configs).")
    return key


class OpenAIBackend:
    def __init__(self, name: str, model: str, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 api_key_required: bool = True, timeout: float = 60.0, max_retries: int = 4,
                 concurrency: int = 8, requests_per_minute: float | None = None, paid: bool = True):
        import openai

        self.name, self.model, self.base_url, self.paid, self.concurrency = name, model, base_url, paid, concurrency
        self.timeout = timeout
        key = api_key_from_env(api_key_env, api_key_required, name) or "not-needed"
        self.client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self.limiter = RateLimiter(requests_per_minute)

    def identity(self) -> dict[str, Any]:
        return {"base_url": self.base_url}

    def chat(self, messages: list[dict[str, str]], params: ChatParams) -> ChatResult:
        import openai

        self.limiter.wait()
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=params.temperature,
                max_tokens=params.max_tokens, n=params.n, seed=params.seed,
                logprobs=params.logprobs or None)
        except openai.APITimeoutError as exc:
            raise LLMError(f"{self.name} ({self.base_url or 'api.openai.com'}) did not answer within "
                           f"{self.timeout:g} s, also after retries") from exc
        except openai.NotFoundError as exc:
            raise LLMError(f"{self.name}: model {self.model!r} is unknown to the server: {exc}") from exc
        except openai.APIStatusError as exc:
            raise LLMError(f"{self.name}: HTTP {exc.status_code} after retries: {exc.message}") from exc
        except (openai.APIError, ValueError) as exc:  # connection errors, malformed or truncated JSON
            raise LLMError(f"{self.name}: request failed: {type(exc).__name__}: {exc}") from exc
        usage = response.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        logprobs = None
        if params.logprobs:
            logprobs = [[{"token": t.token, "logprob": t.logprob} for t in (c.logprobs.content or [])]
                        if c.logprobs else [] for c in response.choices]
        return ChatResult(
            texts=[c.message.content or "" for c in response.choices],
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            cached_input_tokens=(getattr(details, "cached_tokens", 0) or 0) if details else 0,
            logprobs=logprobs)
