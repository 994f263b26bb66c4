"""Verification records (`leaderboard/verification.json`): the outcome of verifying an entry the
board does not re-score at every render (an API simulator, or one over the verification budget),
bound to what was run (the entry file's sha256, the set's hash, the digest of the verifying code and
of the rebuilt components) and signed with the maintainers' key (HMAC-SHA256 over canonical JSON),
so neither a hand-edited record nor one made by other code counts."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import __version__
from harness.atomic import write_atomic
from harness.errors import HarnessError
from harness.leaderboard.schema import EntryError, known_set, parse_entry_text
from harness.leaderboard.verify import STATUSES, Verification, components_digest, resolve_components, verify_key
from harness.paths import REPO_ROOT, file_sha256
from harness.text import canonical_json

__all__ = ["code_digest", "load_records", "record_verification", "records_path", "revoked", "trusted_record"]


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the code and configuration that verify an entry (harness/, baselines/, conf/):
    a record names it, so a record made by other code counts for nothing."""
    h = hashlib.sha256(__version__.encode())
    for root in ("harness", "baselines", "conf"):
        for f in sorted((REPO_ROOT / root).rglob("*")):
            if f.suffix in (".py", ".yaml") and f.is_file():
                h.update(f.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def records_path(cfg: dict[str, Any]) -> Path:
    return cfg["entries_dir"].parent / "verification.json"


def load_records(cfg: dict[str, Any]) -> dict[str, Any]:
    """verification.json, read like an entry (size-bounded, no duplicate keys, bounded nesting);
    a malformed store is an EntryError naming it, never a traceback."""
    store = records_path(cfg)
    if not store.is_file():
        return {}
    try:
        raw = store.read_bytes()
        if len(raw) > cfg["max_entry_bytes"]:
            raise EntryError(f"it is {len(raw)} bytes, over max_entry_bytes")
        return parse_entry_text(raw.decode("utf-8"))
    except (EntryError, UnicodeDecodeError) as exc:
        raise EntryError(f"{store} cannot be read ({exc}): restore it from git (or delete it: records are "
                         "re-made by `python -m harness.leaderboard verify`)") from exc


def _signature(record: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in record.items() if k != "signature"}
    return hmac.new(key, canonical_json(body).encode(), hashlib.sha256).hexdigest()


def revoked(sha256: str, cfg: dict[str, Any]) -> bool:
    """Whether the maintainers withdrew this exact file (`revoked` in conf/leaderboard.yaml)."""
    return sha256 in set(cfg.get("revoked") or ())


def record_verification(path: Path, result: Verification, entry: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Record the outcome in verification.json under the entry's file name, bound to what was run
    (the entry file's sha256, the set's hash, the digest of the verifying code and of the rebuilt
    components), signed with the maintainers' key when set. Written atomically."""
    try:
        digest = components_digest(*resolve_components(entry))
    except EntryError:  # refused components: the record says so in its problems
        digest = None
    record = {**{k: v for k, v in asdict(result).items() if k != "problems"}, "problems": result.problems[:20],
              "entry_sha256": file_sha256(path), "set_hash": entry["neuron_set"]["hash"],
              "components_digest": digest, "harness_version": __version__, "harness_digest": code_digest(),
              "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()}
    key = verify_key(cfg)
    record["signature"] = _signature(record, key) if key else None
    records = load_records(cfg)
    records[Path(path).stem] = record
    write_atomic(records_path(cfg), json.dumps(dict(sorted(records.items())), indent=1) + "\n")


def trusted_record(path: Path, entry: dict[str, Any], cfg: dict[str, Any]) -> Verification | None:
    """The recorded verification of an entry the board does not re-score itself (an API simulator,
    or one over the verification budget), if it can be trusted: signed with the maintainers' key
    (which this process must hold to check it), for this file's exact bytes (not revoked), this
    set, this verifying code and these components. None otherwise: the entry is then pending."""
    key = verify_key(cfg)
    if key is None:
        return None
    try:
        record = load_records(cfg).get(Path(path).stem)
        sha = file_sha256(path)
        simulator, scorers = resolve_components(entry)
        ok = (isinstance(record, dict) and isinstance(record.get("signature"), str)
              and hmac.compare_digest(record["signature"], _signature(record, key))
              and record.get("entry_sha256") == sha and not revoked(sha, cfg)
              and record.get("set_hash") == entry["neuron_set"]["hash"]
              and record.get("harness_digest") == code_digest()
              and record.get("components_digest") == components_digest(simulator, scorers)
              and record.get("status") in STATUSES)
        if ok:
            known_set(entry, cfg["sets_dir"])  # the set the record was made on is the one here, intact
            return Verification(record["name"], record["status"], record["checked"], record["of"],
                                record["problems"], record["note"], record.get("subset_seed"))
    except (HarnessError, ValueError, AttributeError, TypeError, KeyError):
        pass
    return None
