"""Client-side rate limiting for API backends (retries and backoff are the official SDKs')."""

from __future__ import annotations

import threading
import time


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
