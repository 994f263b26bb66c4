"""Anthropic Messages API through the official `anthropic` SDK. The API returns one sample per
request, so n samples are n calls. It gives no logprobs, and the current SDK takes no
`temperature`: the model's default sampling is used (the configured temperature still keys the
cache)."""

from __future__ import annotations

from harness.llm import ChatParams, ChatResult
from harness.llm.api import APIBackend


class AnthropicBackend(APIBackend):
    default_key_env = "ANTHROPIC_API_KEY"

    def __init__(self, **settings):
        import anthropic

        super().__init__(**settings)
        self.client = anthropic.Anthropic(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout,
                                          max_retries=self.max_retries)

    def chat(self, messages: list[dict[str, str]], params: ChatParams) -> ChatResult:
        import anthropic

        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        result = ChatResult(texts=[])
        for _ in range(params.n):
            self.limiter.wait()
            with self.sdk_errors(anthropic):
                response = self.client.messages.create(
                    model=self.model, max_tokens=params.max_tokens, messages=turns,
                    **({"system": system} if system else {}))
            result.texts.append("".join(b.text for b in response.content if b.type == "text"))
            # Anthropic counts cache reads apart from input_tokens; the ledger wants them included.
            cached = getattr(response.usage, "cache_read_input_tokens", 0) or 0
            result.input_tokens += response.usage.input_tokens + cached
            result.output_tokens += response.usage.output_tokens
            result.cached_input_tokens += cached
        return result
