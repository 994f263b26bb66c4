"""One small protocol over every LLM the harness talks to.

`LLM.chat(messages, **params)` returns a `ChatResult` (one text per sample, token usage and,
where the backend gives them, per-token logprobs); `LLM.chat_batch` does many requests at once
(batched generation locally, bounded concurrency against APIs). Every call goes through the
persistent cache and the cell's ledger. Backends (`conf/explainer/`, reusable in
`conf/simulator/`): `openai`, `anthropic`, `openai_compatible` and `hf_local`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.errors import LLMError
from harness.llm.cache import CallCache, Ledger, request_key
from harness.components import BACKENDS

log = logging.getLogger(__name__)


__all__ = ["BACKENDS", "LLM", "Backend", "ChatParams", "ChatResult", "make_backend"]

@dataclass
class ChatResult:
    texts: list[str]
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    # Per sample, per generated token: {"token": str, "logprob": float}.
    logprobs: list[list[dict[str, Any]]] | None = None
    from_cache: bool = False
    cost_usd: float = 0.0


@dataclass
class ChatParams:
    temperature: float = 1.0
    max_tokens: int = 256
    n: int = 1
    logprobs: bool = False
    seed: int = 0  # local sampling seed; APIs that take one get it too
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a retry marker: part of the cache key only


class Backend(Protocol):
    name: str
    model: str
    paid: bool
    concurrency: int

    def identity(self) -> dict[str, Any]:
        """What, besides the request, determines the answer (e.g. the endpoint); never secrets."""

    def chat(self, messages: list[dict[str, str]], params: ChatParams) -> ChatResult: ...


class LLM:
    """A backend behind the call cache and the ledger."""

    def __init__(self, backend: Backend, ledger: Ledger | None = None, cache: CallCache | None = None):
        self.backend = backend
        self.ledger = ledger or Ledger()
        self.cache = cache or CallCache()

    def _request(self, messages: list[dict[str, str]], params: ChatParams) -> dict[str, Any]:
        return {"backend": self.backend.name, "model": self.backend.model, **self.backend.identity(),
                "messages": messages, "params": asdict(params)}

    def _account(self, result: ChatResult) -> ChatResult:
        result.cost_usd = self.ledger.record(self.backend.model, self.backend.paid, result.input_tokens,
                                             result.output_tokens, result.cached_input_tokens, result.from_cache)
        return result

    def chat(self, messages: list[dict[str, str]], **params: Any) -> ChatResult:
        result = self.chat_batch([messages], **params)[0]
        if isinstance(result, LLMError):
            raise result
        return result

    def chat_batch(self, conversations: list[list[dict[str, str]]], **params: Any) -> list[ChatResult | LLMError]:
        """One result per conversation; a request that failed for good is its LLMError (not
        raised, so the other requests' results are kept; failures are not cached)."""
        p = ChatParams(**params)
        requests = [self._request(m, p) for m in conversations]
        keys = [request_key(r) for r in requests]
        results: list[ChatResult | LLMError | None] = []
        for key in keys:
            hit = self.cache.get(key)
            results.append(ChatResult(**{**hit, "from_cache": True}) if hit else None)
        todo = [i for i, r in enumerate(results) if r is None]

        def store(i: int, result: ChatResult | LLMError) -> None:
            # Cached the moment it arrives: a run killed mid-batch keeps every answer it paid for.
            if isinstance(result, ChatResult):
                self.cache.put(keys[i], requests[i], asdict(result))
            results[i] = result

        if todo:
            self._call_many(todo, [conversations[i] for i in todo], p, store)
        return [self._account(r) if isinstance(r, ChatResult) else r for r in results]

    def _call_many(self, ids: list[int], conversations: list[list[dict[str, str]]], params: ChatParams,
                   store) -> None:
        batch = getattr(self.backend, "chat_batch", None)
        if batch is not None:  # local models generate a whole batch in one pass
            for i, result in zip(ids, batch(conversations, params)):
                store(i, result)
            return

        # Daemon threads, not a ThreadPoolExecutor: the interpreter joins an executor's threads at exit,
        # so Ctrl-C would wait out every hung request's timeout. Here the main thread's KeyboardInterrupt
        # stops the run at once; a request in flight is dropped with the process (answers that
        # arrived are already cached) and, in a process that goes on, no queued request starts.
        pending = list(zip(ids, conversations))
        lock = threading.Lock()
        errors: list[BaseException] = []  # a bug in a backend, re-raised here

        def work() -> None:
            while True:
                with lock:
                    if errors or not pending:
                        return
                    job = pending.pop(0)
                try:
                    store(job[0], self.backend.chat(job[1], params))
                except LLMError as exc:
                    store(job[0], exc)
                except BaseException as exc:  # noqa: BLE001  (re-raised in the calling thread)
                    with lock:
                        errors.append(exc)
                    return

        workers = [threading.Thread(target=work, daemon=True, name=f"llm-{n}")
                   for n in range(min(len(ids), max(1, self.backend.concurrency)))]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except BaseException:  # KeyboardInterrupt: start no further request
            with lock:
                pending.clear()
            raise
        if errors:
            raise errors[0]


def make_backend(cfg: Any) -> Backend:
    """A backend from a `conf/explainer/` (or `conf/simulator/`) config's `llm` block."""
    params = dict(cfg)
    name = params.pop("backend", None)
    return BACKENDS[name](name=name, **params)
