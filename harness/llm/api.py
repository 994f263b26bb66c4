"""What the OpenAI and Anthropic backends share: settings, the key from the environment,
client-side rate limiting and the mapping of SDK errors to LLMError. Retries with exponential
backoff and jitter on 408/409/429/5xx and timeouts, honouring `retry-after`, are the official
SDKs' own (`max_retries`); what still fails becomes an LLMError, a TransientLLMError where it
may pass (an outage is not a property of a neuron)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Iterator

from harness.errors import ConfigError, LLMError, TransientLLMError
from harness.redact import redact


class RateLimiter:
    """Spaces request starts at least 60/requests_per_minute seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


class APIBackend:
    default_key_env: str = ""

    def __init__(self, name: str, model: str, base_url: str | None = None, api_key_env: str | None = None,
                 api_key_required: bool = True, timeout: float = 60.0, max_retries: int = 4,
                 concurrency: int = 8, requests_per_minute: float | None = None, paid: bool = True):
        self.name, self.model, self.base_url, self.paid, self.concurrency = name, model, base_url, paid, concurrency
        self.timeout, self.max_retries = timeout, max_retries
        self.limiter = RateLimiter(requests_per_minute)
        var = api_key_env or self.default_key_env
        key = os.environ.get(var) if var else None
        if api_key_required and not key:
            raise ConfigError(f"backend {name} needs an API key: set the environment variable {var} "
                              "(keys are read from the environment only, never from configs).")
        self.api_key = key or "not-needed"  # local servers accept any key

    def identity(self) -> dict[str, Any]:
        return {"base_url": redact(self.base_url)}

    @contextlib.contextmanager
    def sdk_errors(self, sdk) -> Iterator[None]:
        """Map the `openai` / `anthropic` SDK's exceptions (same names in both) to LLMError: a
        TransientLLMError for what the SDK itself retries (no connection, timeouts, 408/409/429/5xx),
        a plain LLMError for what a retry would not change (other 4xx, an unparseable body)."""
        try:
            yield
        except sdk.APITimeoutError as exc:
            raise TransientLLMError(redact(f"{self.name} ({self.base_url or 'default endpoint'}) did not answer "
                                           f"within {self.timeout:g} s, also after {self.max_retries} retries")) from exc
        except sdk.APIConnectionError as exc:  # also a body cut short
            raise TransientLLMError(redact(f"{self.name}: no answer from {self.base_url or 'default endpoint'} "
                                           f"after {self.max_retries} retries: {exc}")) from exc
        except sdk.NotFoundError as exc:
            raise LLMError(redact(f"{self.name}: model {self.model!r} is unknown to the server: {exc}")) from exc
        except sdk.APIStatusError as exc:
            error = TransientLLMError if exc.status_code in (408, 409, 429) or exc.status_code >= 500 else LLMError
            raise error(redact(f"{self.name}: HTTP {exc.status_code} after {self.max_retries} retries: "
                               f"{exc.message}")) from exc
        except (sdk.APIError, ValueError) as exc:  # malformed JSON
            raise LLMError(redact(f"{self.name}: request failed: {type(exc).__name__}: {exc}")) from exc
