"""Anthropic Messages API through the official `anthropic` SDK (retries, backoff with jitter and
`retry-after` are the SDK's). The API returns one sample per request, so n samples are n calls.
It gives no logprobs, and the current SDK takes no `temperature`: the model's default sampling
is used (the configured temperature still keys the cache)."""

from __future__ import annotations

from typing import Any

from harness.errors import LLMError
from harness.llm import ChatParams, ChatResult
from harness.llm.limits import RateLimiter
from harness.llm.openai_backend import api_key_from_env


class AnthropicBackend:
    def __init__(self, name: str, model: str, base_url: str | None = None, api_key_env: str = "ANTHROPIC_API_KEY",
                 api_key_required: bool = True, timeout: float = 60.0, max_retries: int = 4,
                 concurrency: int = 8, requests_per_minute: float | None = None, paid: bool = True):
        import anthropic

        self.name, self.model, self.base_url, self.paid, self.concurrency = name, model, base_url, paid, concurrency
        self.timeout = timeout
        key = api_key_from_env(api_key_env, api_key_required, name) or "not-needed"
        self.client = anthropic.Anthropic(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self.limiter = RateLimiter(requests_per_minute)

    def identity(self) -> dict[str, Any]:
        return {"base_url": self.base_url}

    def chat(self, messages: list[dict[str, str]], params: ChatParams) -> ChatResult:
        import anthropic

        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        result = ChatResult(texts=[])
        for _ in range(params.n):
            self.limiter.wait()
            try:
                response = self.client.messages.create(
                    model=self.model, max_tokens=params.max_tokens, messages=turns, **({"system": system} if system else {}))
            except anthropic.APITimeoutError as exc:
                raise LLMError(f"{self.name} did not answer within {self.timeout:g} s, also after retries") from exc
            except anthropic.NotFoundError as exc:
                raise LLMError(f"{self.name}: model {self.model!r} is unknown to the server: {exc}") from exc
            except anthropic.APIStatusError as exc:
                raise LLMError(f"{self.name}: HTTP {exc.status_code} after retries: {exc.message}") from exc
            except (anthropic.APIError, ValueError) as exc:
                raise LLMError(f"{self.name}: request failed: {type(exc).__name__}: {exc}") from exc
            result.texts.append("".join(b.text for b in response.content if b.type == "text"))
            # Anthropic counts cache reads apart from input_tokens; the ledger wants them included.
            cached = getattr(response.usage, "cache_read_input_tokens", 0) or 0
            result.input_tokens += response.usage.input_tokens + cached
            result.output_tokens += response.usage.output_tokens
            result.cached_input_tokens += cached
        return result
