"""A persistent call cache and a token/cost ledger.

The cache is SQLite in WAL mode keyed by a sha256 of (backend, model, endpoint, every request
parameter, messages): a re-run or a resumed sweep pays for nothing twice, and several processes of
a sweep can write to it at once. API keys are never part of a request, so never reach the cache.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.paths import cache_dir


def request_key(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class CallCache:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else cache_dir("llm") / "calls.sqlite"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, request TEXT, response TEXT)")

    def _connect(self) -> sqlite3.Connection:
        # One short-lived connection per operation: safe across threads and processes.
        return sqlite3.connect(self.path, timeout=60)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO calls VALUES (?, ?, ?)",
                       (key, json.dumps(request, sort_keys=True), json.dumps(response)))


@dataclass
class Ledger:
    """Tokens and dollars of one cell; prices per million tokens from `conf/pricing/`."""

    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    calls: int = 0
    cache_hits: int = 0
    unpriced_models: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()

    def record(self, model: str, paid: bool, input_tokens: int, output_tokens: int, cached_input_tokens: int,
               from_cache: bool) -> float:
        """Add one call; returns its cost in dollars (0 for a cache hit or an unpaid backend)."""
        with self._lock:
            if from_cache:
                self.cache_hits += 1
                return 0.0
            self.calls += 1
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.cached_input_tokens += cached_input_tokens
            if not paid:
                return 0.0
            price = self.prices.get(model)
            if price is None:
                if model not in self.unpriced_models:
                    self.unpriced_models.append(model)
                return 0.0
            cached_price = price.get("cached_input", price["input"])
            cost = ((input_tokens - cached_input_tokens) * price["input"] + cached_input_tokens * cached_price
                    + output_tokens * price["output"]) / 1e6
            self.usd += cost
            return cost

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "prices"}
