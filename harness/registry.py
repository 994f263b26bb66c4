"""One small registry for every plug point: explainers, prompt variants, simulators, scorers and
LLM backends. A registry maps config names to objects, or to "module:object" strings that are
imported only when the name is looked up, so a registry never imports its plug-ins (no import
cycles, no heavy imports for an unused entry). It is also the allow-list of what a config, or a
leaderboard entry rebuilt from one, can name: nothing outside it is ever imported."""

from __future__ import annotations

import importlib
from typing import Any, Iterator

from harness.errors import ConfigError


class Registry:
    """`registry[name]` is the entry's object (resolved on first lookup); an unknown name is one
    ConfigError: "unknown <what> 'name'; known: [...]"."""

    def __init__(self, what: str, entries: dict[str, Any]):
        self.what = what
        self._entries = dict(entries)

    def __getitem__(self, name: Any) -> Any:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {sorted(self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def __contains__(self, name: Any) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {sorted(self._entries)})"
