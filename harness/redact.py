"""Credentials written into a URL (`scheme://user:key@host`, e.g. in `base_url`) are redacted by this
one helper wherever the harness writes or logs: saved configs (`summary.json`, `.hydra/`,
`multirun.yaml`), `provenance.json`, logs, error messages and the LLM call cache's key."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from harness.atomic import write_atomic

# scheme://userinfo@ (also as Hydra prints an override, `http\://user\:key@host`)
URL_CREDENTIALS = re.compile(r"\b([a-zA-Z][\w+.-]*\\?://)[^/@\s'\"]+@")


def redact(obj: Any) -> Any:
    """`obj` with `user:password@` in every URL replaced by `***@` (strings, and inside dicts and lists)."""
    if isinstance(obj, str):
        return URL_CREDENTIALS.sub(r"\1***@", obj)
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


class RedactingFilter(logging.Filter):
    """On every log handler (conf/config.yaml's `hydra.job_logging` and `hydra.hydra_logging`): each
    record written is redacted, third-party ones included (httpx logs every request's URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_file(path: Path) -> None:
    """Rewrite a text file that another tool wrote (Hydra's `multirun.yaml`) without credentials."""
    text = path.read_text()
    clean = redact(text)
    if clean != text:
        write_atomic(path, clean)  # parallel jobs of a sweep may do this at once
