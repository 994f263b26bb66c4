"""OpenAI Chat Completions through the official `openai` SDK; with `base_url` it also serves
OpenAI-compatible servers (vLLM, llama.cpp server, Ollama)."""

from __future__ import annotations

from harness.errors import ConfigError
from harness.llm import ChatParams, ChatResult
from harness.llm.api import APIBackend


class OpenAIBackend(APIBackend):
    default_key_env = "OPENAI_API_KEY"

    def identity(self):
        return {**super().identity(), **({"top_logprobs": self.top_logprobs} if self.top_logprobs else {})}

    def __init__(self, top_logprobs: int = 0, **settings):
        import openai

        if not 0 <= int(top_logprobs) <= 20:
            raise ConfigError(f"top_logprobs must be between 0 and 20 (the Chat Completions limit); got {top_logprobs!r}")
        super().__init__(**settings)
        self.top_logprobs = int(top_logprobs)  # > 0: each generated token's top alternatives too
        self.client = openai.OpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout,
                                    max_retries=self.max_retries)

    def chat(self, messages: list[dict[str, str]], params: ChatParams) -> ChatResult:
        import openai

        self.limiter.wait()
        with self.sdk_errors(openai):
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=params.temperature,
                max_tokens=params.max_tokens, n=params.n, seed=params.seed,
                logprobs=params.logprobs or None,
                **({"top_logprobs": self.top_logprobs} if params.logprobs and self.top_logprobs else {}))
        usage = response.usage
        details = getattr(usage, "prompt_tokens_details", None) if usage else None
        logprobs = None
        if params.logprobs:
            logprobs = [[{"token": t.token, "logprob": t.logprob,
                          **({"top": {a.token: a.logprob for a in (t.top_logprobs or [])[:self.top_logprobs]}}
                             if self.top_logprobs else {})} for t in (c.logprobs.content or [])]
                        if c.logprobs else [] for c in response.choices]
        return ChatResult(
            texts=[c.message.content or "" for c in response.choices],
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            cached_input_tokens=(getattr(details, "cached_tokens", 0) or 0) if details else 0,
            logprobs=logprobs)
