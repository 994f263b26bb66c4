"""Which entries are ranked: every entry file with its status (`assess`).

Trusts no file a submitter can edit: it reads every entry file (a bad one is listed as rejected,
never stops the board), re-verifies every entry whose simulator runs here, accepts a recorded
verification only for API simulators and only when it is signed with the maintainers' key, and
ranks verified entries only, each submission once. See `markdown.TRUST_MODEL`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness.atomic import write_atomic
from harness.errors import HarnessError
from harness.formatting import fmt
from harness.leaderboard.entry import fingerprint
from harness.leaderboard.schema import EntryError, check_file_name, entry_from_bytes, read_entry_bytes
from harness.leaderboard.verification_records import code_digest, revoked, trusted_record
from harness.leaderboard.verify import (Verification, over_budget, resolve_components, uses_api, verify,
                                       verify_key)
from harness.leaderboard.views import SetViews
from harness.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass
class Assessed:
    path: Path
    entry: dict[str, Any] | None  # slim: each neuron's test simulation only on the windows the page shows
    status: str  # verified | failed | pending | rejected
    reason: str = ""
    sha256: str = ""  # of the file's bytes
    simulator_check: str = "n/a"  # the stored `python -m harness.check_simulator` result of its simulator


def _reason(result: Verification) -> str:
    return "; ".join(result.problems[:3]) + (f" (and {len(result.problems) - 3} more)" if len(result.problems) > 3
                                            else "") or result.note


class VerdictCache:
    """Verdicts of local verification on this machine, keyed by the entry file's sha256 and
    everything else a verdict depends on (code, conf/, tolerances, every file of the frozen sets,
    the key). It lives in the verifier's own cache directory, never in the repository, so a
    submitter cannot write it; it spares re-verifying (and re-parsing) an unchanged entry at every
    render. A hit still runs the checks that depend on the file's place (its name)."""

    def __init__(self, cfg: dict[str, Any]):
        key = verify_key(cfg)
        sets_dir = Path(cfg["sets_dir"])
        sets = {f.relative_to(sets_dir).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(sets_dir.rglob("*")) if f.is_file()} if sets_dir.is_dir() else {}
        context = {"code": code_digest(), "tolerance": cfg["tolerance"], "verify": cfg["verify"],
                   "revoked": sorted(cfg.get("revoked") or ()), "drilldown": cfg["drilldown"], "sets": sets,
                   "sets_dir": str(sets_dir.resolve()), "key": hashlib.sha256(key).hexdigest() if key else None}
        self.context = hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()
        self.dir = cache_dir("verdicts")

    def _path(self, sha256: str) -> Path:
        return self.dir / f"{hashlib.sha256((self.context + sha256).encode()).hexdigest()}.json"

    def get(self, sha256: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(sha256).read_text())
        except (OSError, ValueError):
            return None

    def put(self, sha256: str, slim_entry: dict[str, Any], verdict: dict[str, str] | None) -> None:
        write_atomic(self._path(sha256), json.dumps({"entry": slim_entry, "verdict": verdict}, allow_nan=False))


def _read(path: Path, cfg: dict[str, Any], cache: VerdictCache, views: SetViews, use_cache: bool
          ) -> tuple[Assessed, dict[str, str] | None, bool]:
    """One entry file: (its Assessed, the cached verdict if any, whether it was parsed from the
    file). Refused files come back rejected; a cache hit passes the same name and revocation checks."""
    raw = read_entry_bytes(path, cfg)
    sha = hashlib.sha256(raw).hexdigest()
    if revoked(sha, cfg):
        raise EntryError(f"this file (sha256 {sha[:12]}…) was withdrawn by the maintainers (conf/leaderboard.yaml "
                         "revoked)")
    cached = cache.get(sha) if use_cache else None
    if cached:
        entry, verdict, parsed = cached["entry"], cached["verdict"], False
        check_file_name(path, entry)  # the cache is keyed by bytes, not by where they are stored
    else:
        entry = entry_from_bytes(path, raw, cfg)
        resolve_components(entry)
        entry, verdict, parsed = views.slim(entry), None, True
    return Assessed(path, entry, "unchecked", sha256=sha), verdict, parsed


def assess(cfg: dict[str, Any], use_cache: bool = True) -> list[Assessed]:
    """Every file under the entries directory with its status, trusting nothing recorded for a
    local simulator within the verification budget (it is re-verified here, or was on this machine:
    see VerdictCache). Of entries that are the same submission, the earliest verified one is
    ranked and the later verified ones are rejected as duplicates: a failing or pending copy never
    takes a verified entry's place."""
    entries_dir = cfg["entries_dir"]
    cache, views = VerdictCache(cfg), SetViews(cfg)
    out: list[Assessed] = []
    verdicts: dict[Path, dict[str, str] | None] = {}
    parsed: set[Path] = set()  # read from the file, not from the cache
    for path in tqdm(sorted(entries_dir.glob("*.json")) if entries_dir.is_dir() else [], desc="reading entries",
                     unit="entry", leave=False):
        try:
            a, verdicts[path], from_file = _read(path, cfg, cache, views, use_cache)
            out.append(a)
            if from_file:
                parsed.add(path)
        except HarnessError as exc:
            out.append(Assessed(path, None, "rejected", str(exc)))
            log.warning("rejected %s: %s", path.name, exc)
    for a in tqdm([a for a in out if a.status == "unchecked"], desc="verifying entries", unit="entry"):
        simulator, scorers = resolve_components(a.entry)
        a.simulator_check = simulator_check_label(simulator)
        # Not re-scored here: an API simulator (the verifier's key and spend), or a re-scoring over the budget.
        needs_record = "its simulator is behind an API" if uses_api(simulator) else over_budget(a.entry, simulator,
                                                                                                 scorers, cfg)
        if needs_record:
            result = trusted_record(a.path, a.entry, cfg) or Verification(
                a.entry["name"], "pending", note=f"{needs_record}: ranked once the maintainers' CI records a signed "
                                                 "verification")
            a.status, a.reason = result.status, _reason(result)
        elif verdicts.get(a.path):
            a.status, a.reason = verdicts[a.path]["status"], verdicts[a.path]["reason"]
        else:
            raw = read_entry_bytes(a.path, cfg)  # the full entry again: only its verification needs it
            if hashlib.sha256(raw).hexdigest() != a.sha256:
                a.status, a.reason = "rejected", "the file changed while the board was being rendered"
                continue
            result = verify(entry_from_bytes(a.path, raw, cfg), cfg, entry_sha256=a.sha256)
            a.status, a.reason = result.status, _reason(result)
        if use_cache and a.path in parsed:
            verdict = None if needs_record else {"status": a.status, "reason": a.reason}
            cache.put(a.sha256, a.entry, verdict)
    # One submission is listed once: the earliest verified one by its date (then name) keeps the place.
    first: dict[str, Assessed] = {}
    for a in sorted((a for a in out if a.status == "verified"), key=lambda a: (a.entry["date"], a.path.name)):
        key = fingerprint(a.entry)
        if key in first:
            a.status, a.reason = "rejected", f"a duplicate of {first[key].path.stem} (same set, simulator, scorers " \
                                             "and explanations)"
        else:
            first[key] = a
    return out


def simulator_check_label(simulator: dict[str, Any]) -> str:
    """"k/n first" of the simulator's stored check on the lexical and on the semantic puzzles (a
    true explanation that names its tokens, or one that describes a category without naming them),
    or over all its items for a check made before puzzles had kinds; "n/a" without a check."""
    from harness.check_simulator import stored_check

    check = stored_check(simulator)
    if check is None:
        return "n/a"
    kinds = check.get("by_kind") or {}
    if kinds:
        return ", ".join(f"{kind} {s['first']}/{s['n']} first (chance {s['chance_first'] * s['n']:.1f})"
                         for kind, s in kinds.items())
    s = check["summary"]["all"]
    return f"{s['first']}/{s['n']} first, margin {fmt(s['mean_margin'], '+.2f')}"

