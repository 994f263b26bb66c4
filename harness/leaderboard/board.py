"""The board: which entries are ranked, and the Markdown and HTML pages that show them.

`render` trusts no file a submitter can edit: it reads every entry file (a bad one is listed as
rejected, never stops the board), re-verifies every entry whose simulator runs here, accepts a
recorded verification only for API simulators and only when it is signed with the maintainers' key,
and ranks verified entries only. See TRUST_MODEL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from harness import __version__
from harness.atomic import WriteError, replace_together, write_atomic
from harness.errors import HarnessError
from harness.formatting import fmt
from harness.leaderboard.entry import fingerprint
from harness.leaderboard.schema import (EntryError, check_file_name, entry_from_bytes, known_set,
                                        read_entry_bytes)
from harness.leaderboard.verify import (Verification, code_digest, over_budget, recomputed_summary,
                                       resolve_components, revoked, trusted_record, uses_api, verify, verify_key)
from harness.paths import REPO_ROOT, cache_dir
from harness.text import canonical_json
from harness.text import for_markdown as _md  # every entry-derived string in README.md

log = logging.getLogger(__name__)
TEMPLATE = REPO_ROOT / "leaderboard" / "templates" / "index.html"
DATA_MARK = ".neuronbench-board"  # marks a data/ directory render wrote (and may replace)

TRUST_MODEL = """\
## How entries are trusted

The board shows only what it computed. Every figure in a row (score, CI, defined mean, coverage,
floor, ceiling, metric name) is recomputed here from the entry's per-neuron values, each of which
was re-scored or range-checked; the entry's own summary is compared with ours and refused on a
mismatch, never shown.

- **An entry is data**: a size-limited JSON file with no NaN, no huge numbers, no deep nesting and no
  key given twice, validated against a versioned schema and stored as `<name>.json` with that very
  name inside. Its text holds no lone surrogate or bidirectional control, and no control character
  outside explanations (which may quote a model's byte tokens); every string is escaped where it is
  shown. Dates are ISO 8601 between 2023-01-01 and tomorrow. A file that fails any check is listed
  under *Rejected* and the rest of the board renders; a render writes the whole board or nothing.
- **Scores are what its scorers produce**: summary blocks exactly for the scorers and controls it
  ran, headed by each scorer's headline metric; every metric one the scorer declares; **every
  per-neuron value of every metric inside the metric's declared range, on every neuron**
  (correlation in [−1, 1], AUROC, balanced accuracy and F1 in [0, 1], explained variance and the
  ablation score at most 1, KL at least 0).
- **Verification re-scores** the explanations with a simulator and scorers rebuilt **by name from
  this repository's `conf/`**; an entry may set only the parameters `conf/leaderboard.yaml` allows
  (`entry_allowed`), each type-checked by the cell's own rule table. Endpoints, key variables, file
  paths and caches come from the verifier's own configuration and environment, so verifying never
  sends a credential or writes a file where an entry says. Simulators that do not read the
  explanation (the oracle) are controls, never entries.
- **token_match entries are re-scored on every neuron** at every render. Other simulators are
  re-scored on `k` = 30 neurons drawn from the entry file's sha256 keyed with the maintainers'
  secret (`$NEURONBENCH_VERIFY_KEY`), which a submitter cannot know in advance; without the key such
  an entry stays *pending*, never accepted. Each re-scored value must match (locally 1e-6; behind an
  API 0.05) and so must their mean (API: 0.01), so a small shift on every neuron fails. **What the
  sampling guarantees**: if a fraction f of a set's n neurons carries forged (in-range) values, all
  of them escape the k re-scored neurons with probability C(n−fn, k)/C(n, k) ≤ (1−f)^k. For n = 300
  and k = 30: one forged neuron escapes 90% of the time, but by the range check it moves a
  correlation mean by at most 2/300 = 0.007; 5% of neurons escape 20% of the time, 10% escape 3.6%,
  20% escape 0.08%.
- **A verification budget** (`verify.budget_seconds`, estimated before re-scoring from
  `verify.seconds_per_neuron`): an entry whose re-scoring would take longer (an LLM simulator, the
  ablation scorer) is *pending* for the maintainers, not run in a pull request's CI.
- **Recorded verifications** (API simulators, entries over the budget) count only with a record in
  `verification.json` written by `python -m harness.leaderboard verify` in the maintainers' CI, bound
  to the entry file's sha256, the set's hash, a digest of the verifying code and configuration and a
  digest of the simulator and scorers, and signed (HMAC-SHA256 over canonical JSON) with the
  maintainers' key. A record that is hand-written, edited, made by other code or checked without
  the key counts for nothing. Files the maintainers withdraw are listed by sha256 in
  `conf/leaderboard.yaml` (`revoked`): such a file is rejected however it comes back.
- **One submission is listed once**: the same explanations under the same simulator and scorers.
  Among verified copies the earliest keeps the place; a copy that fails verification never pushes
  a verified one off. Trained-vs-random rows are per entry, paired with a control entry that states
  the same configuration (of several, the least favourable), so no entry can take another's row.
- **Pull requests** (`.github/workflows/leaderboard.yml`): `check-pr` runs on `pull_request_target`
  from the base branch's code and workflow, with a read-only token and no secrets; it reads the pull
  request's files from git as data and never executes them, and accepts only new entries (and the
  board as `render` gives it). A push to `main` re-verifies every entry and checks the committed
  board.
- Ranking is on a common basis: the mean over every neuron of the set, a neuron whose metric is
  undefined counting at the metric's no-information value, so leaving neurons undefined cannot
  raise a score. The mean over defined neurons and the coverage are shown beside it.
"""


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
        resolve_components(entry, cfg)
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
        simulator, scorers = resolve_components(a.entry, cfg)
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


# --- Rows ---------------------------------------------------------------------------------------

def explainer_label(entry) -> str:
    e = entry["explainer"]
    return f"{e['backend']}:{e['model']}" if e["kind"] == "llm" else e["kind"]


def _cost_per_neuron(entry) -> float:
    return entry["cost"]["usd"] / max(1, entry["neuron_set"]["n_neurons"])


def _control(entry, control: str, scorer: str) -> float | None:
    return ((entry["summary"].get(control) or {}).get(scorer) or {}).get("mean")


def simulator_check_label(simulator: dict[str, Any]) -> str:
    """"k/n first, margin m" of the simulator's stored check over all its items, or "n/a"."""
    from harness.check_simulator import stored_check

    check = stored_check(simulator)
    if check is None:
        return "n/a"
    s = check["summary"]["all"]
    return f"{s['first']}/{s['n']} first, margin {fmt(s['mean_margin'], '+.2f')}"


def board_rows(assessed: list[Assessed]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(set name, set hash, scorer) → the verified entries' rows, best first."""
    from harness.scoring import get_scorer

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for a in assessed:
        if a.status != "verified":
            continue
        e = a.entry
        for scorer, block in e["summary"]["scores"].items():
            key = (e["neuron_set"]["name"], e["neuron_set"]["hash"], scorer)
            groups.setdefault(key, []).append({
                "name": e["name"], "submitter": e["submitter"], "date": e["date"][:10],
                "explainer": explainer_label(e), "prompt": (e["prompt"] or {}).get("variant") or "—",
                "simulator": e["simulator"]["kind"], "simulator_check": a.simulator_check,
                "metric": block["metric"], "mean": block["mean"],
                "ci95": block["ci95"], "mean_defined": block["mean_defined"], "coverage": block["coverage"],
                "floor": _control(e, "floor", scorer), "ceiling": _control(e, "ceiling", scorer),
                "cost_per_neuron": _cost_per_neuron(e)})
    for (_, _, scorer), rows in groups.items():
        sign = 1.0 if get_scorer(scorer).metric(rows[0]["metric"]).higher_is_better else -1.0
        rows.sort(key=lambda r: (r["mean"] is None, -sign * (r["mean"] or 0.0), r["name"]))
    return groups


# --- Trained vs random weights (issue 17) -------------------------------------------------------

RANDOM_WEIGHTS_NOTE = (
    "Each explainer's score on a set beside its score on that set's **random-weights control**: a set "
    "built by the same rules on a copy of the subject whose weights are re-drawn from the model's "
    "initialisation (seeded; `conf/leaderboard.yaml` `random_weights_controls`). Explanations of a model that "
    "learned nothing should score worse (Heap et al. 2025 recommend such randomised baselines). The two sets hold "
    "different neurons of different models, so nothing pairs neuron by neuron (the same seeded draw may pick the "
    "same (layer, index), but a random-model neuron has nothing in common with the trained neuron at that index): "
    "each entry has its own row, paired with an entry on the control set that states the same explainer and the "
    "same prompt, simulator and scorer parameters (of several, the one it beats least: an explainer's label is the "
    "submitter's word, so an extra weak control cannot lift a flag), and the 95% CI of "
    "*trained − random* is an unpaired bootstrap over each set's neurons, each resampled on its own, every neuron "
    "counted (undefined at the metric's no-information value). **⚠** flags a scoring rule under which the explainer "
    "does not score better on trained weights than on random ones (the CI reaches 0): that number alone does not show "
    "that the explanations capture anything the model learned.")


def _pairing_key(entry) -> str:
    """What entries on the two sets must share to be compared: the explainer (kind, backend and
    model; its parameters name the set's own subject, so they differ by design), the prompt and the
    simulator, parameters and all."""
    return canonical_json({"explainer": explainer_label(entry), "prompt": entry["prompt"],
                           "simulator": entry["simulator"]})


def _neuron_values(entry, scorer: str, metric: str, no_information: float | None) -> list[float]:
    """Per neuron of the entry, `<scorer>.<metric>`; undefined at `no_information` (NaN without one)."""
    fill = math.nan if no_information is None else no_information
    out = []
    for n in entry["neurons"]:
        v = (n.get("scores") or {}).get(f"{scorer}.{metric}")
        out.append(fill if v is None else float(v))
    return out


def random_weight_rows(assessed: list[Assessed], cfg) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """(trained set name, control set name, scorer) → one row per explainer verified on the trained
    set: its headline score there and on the random-weights control set (None without a matching
    verified entry), the difference with an unpaired bootstrap CI, and `flagged` when the CI of
    trained − random (in the metric's better direction) reaches 0."""
    from harness.scoring import get_scorer
    from harness.scoring.stats import difference_ci

    controls = cfg.get("random_weights_controls") or {}
    by_set: dict[str, list[dict[str, Any]]] = {}
    for e in sorted((a.entry for a in assessed if a.status == "verified"), key=lambda e: e["name"]):
        by_set.setdefault(e["neuron_set"]["name"], []).append(e)
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for trained_set, control_set in controls.items():
        for trained in by_set.get(trained_set, []):  # a row per entry: no entry can take another's row
            key = _pairing_key(trained)
            for scorer, block in trained["summary"]["scores"].items():
                metric = get_scorer(scorer).metric(block["metric"])
                sign = 1.0 if metric.higher_is_better else -1.0
                row = {"explainer": explainer_label(trained), "prompt": (trained["prompt"] or {}).get("variant") or "—",
                       "simulator": trained["simulator"]["kind"], "metric": block["metric"],
                       "trained_entry": trained["name"], "random_entry": None, "trained": block["mean"],
                       "random": None, "diff": None, "ci95": [None, None], "flagged": None}
                matches = [c for c in by_set.get(control_set, []) if _pairing_key(c) == key
                           and scorer in c["summary"]["scores"] and c["scorers"].get(scorer) == trained["scorers"][scorer]]
                if matches:
                    # Explainer labels are the submitter's word: of several controls claiming the same
                    # configuration, the one the trained entry beats least is compared (an extra, weak
                    # control cannot lift a flag).
                    control = max(matches, key=lambda c: (sign * c["summary"]["scores"][scorer]["mean"], c["name"]))
                    d = difference_ci(_neuron_values(trained, scorer, block["metric"], metric.no_information),
                                      _neuron_values(control, scorer, block["metric"], metric.no_information),
                                      trained["stats"]["bootstrap_resamples"], trained["stats"]["seed"])
                    lo = None if d["ci95"][0] is None else min(sign * d["ci95"][0], sign * d["ci95"][1])
                    row.update(random_entry=control["name"], trained=d["mean_a"], random=d["mean_b"], diff=d["diff"],
                               ci95=d["ci95"], flagged=lo is None or lo <= 0)
                out.setdefault((trained_set, control_set, scorer), []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: (r["trained"] is None, -(r["trained"] or 0.0), r["trained_entry"]))
    return out


# --- Markdown ---------------------------------------------------------------------------------

def render_markdown(assessed: list[Assessed], cfg: dict[str, Any] | None = None) -> str:
    lines = ["# NeuronBench leaderboard", "",
             "Generated by `python -m harness.leaderboard render` from `leaderboard/entries/` — do not edit by hand. "
             "Interactive version: [index.html](index.html) (open it from the file system).", "",
             "Score = mean over **every** neuron of the set of the scoring rule's headline metric, a neuron whose "
             "metric is undefined (a constant prediction, a failed explanation) counting at the metric's "
             "no-information value (correlation 0, AUROC 0.5, ablation score 0), with a seeded bootstrap 95% CI over "
             "neurons. *Defined*: the mean over the neurons where the metric is defined; *coverage*: their share. "
             "*Floor*: the same simulator and scorer on another neuron's explanation; *ceiling*: the true test "
             "activations quantised to the simulator's 0–10 scale. *Simulator check*: how often the entry's simulator "
             "ranks a true explanation first among close distractors, and its mean margin (`python -m "
             "harness.check_simulator`). Only verified entries are ranked.", ""]
    groups = board_rows(assessed)
    if not groups:
        lines += ["No verified entries yet: see the README's \"Sweeps and the leaderboard\" section to submit one.", ""]
    for (set_name, set_hash, scorer), rows in sorted(groups.items()):
        lines += [f"## {_md(set_name)} (`{_md(set_hash[:12])}`) — {_md(scorer)}: {_md(rows[0]['metric'])}", "",
                  "| # | entry | explainer | prompt | simulator | simulator check | score | 95% CI | defined | coverage | "
                  "floor | ceiling | USD / neuron | submitter | date |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rank, r in enumerate(rows, 1):
            lo, hi = r["ci95"]
            lines.append(f"| {rank} | {_md(r['name'])} | {_md(r['explainer'])} | {_md(r['prompt'])} | "
                         f"{_md(r['simulator'])} | {_md(r['simulator_check'])} | {fmt(r['mean'])} | [{fmt(lo)}, {fmt(hi)}] | "
                         f"{fmt(r['mean_defined'])} | {fmt(r['coverage'], '.2f')} | {fmt(r['floor'])} | "
                         f"{fmt(r['ceiling'])} | {r['cost_per_neuron']:.2e} | {_md(r['submitter'])} | {_md(r['date'])} |")
        lines.append("")
    comparisons = random_weight_rows(assessed, cfg or {})
    if comparisons:
        lines += ["## Trained vs random weights", "", RANDOM_WEIGHTS_NOTE, ""]
    for (trained_set, control_set, scorer), rows in sorted(comparisons.items()):
        lines += [f"### {_md(trained_set)} vs {_md(control_set)} — {_md(scorer)}: {_md(rows[0]['metric'])}", "",
                  "| trained entry | random-weights entry | explainer | prompt | simulator | trained | random weights | "
                  "trained − random | 95% CI | flag |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lo, hi = r["ci95"]
            flag = "no entry on the random-weights set" if r["random_entry"] is None else (
                "⚠ not better than on random weights" if r["flagged"] else "")
            lines.append(f"| {_md(r['trained_entry'])} | {_md(r['random_entry'] or '—')} | {_md(r['explainer'])} | "
                         f"{_md(r['prompt'])} | {_md(r['simulator'])} | {fmt(r['trained'])} | "
                         f"{fmt(r['random'])} | {fmt(r['diff'])} | [{fmt(lo)}, {fmt(hi)}] | {flag} |")
        lines.append("")
    titles = {"failed": "Failed verification", "pending": "Pending verification", "rejected": "Rejected entry files"}
    unranked = [a for a in assessed if a.status != "verified"]
    if unranked:
        lines += ["## Not ranked", ""]
        for status, title in titles.items():
            shown = [a for a in unranked if a.status == status]
            if shown:
                lines += [f"### {title}", ""] + [f"- {_md(a.path.name)}: {_md(a.reason)}" for a in shown] + [""]
    lines.append(TRUST_MODEL)
    return "\n".join(lines)


# --- HTML -------------------------------------------------------------------------------------

def _round(x, d=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    v = round(float(x), d)
    return int(v) if v == int(v) else v


class SetViews:
    """Each frozen set's neurons as the viewer shows them (a few windows each), loaded once."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg, self.views = cfg, {}

    def get(self, set_hash: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        if set_hash not in self.views:
            try:
                self.views[set_hash] = self._build(known_set(entry, self.cfg["sets_dir"]))
            except HarnessError:
                self.views[set_hash] = None
        return self.views[set_hash]

    def _build(self, neuron_set) -> dict[str, Any]:
        dd = self.cfg["drilldown"]
        neurons = []
        for n in neuron_set.neurons:
            tops = sorted([r for r in n.explain if r.kind == "top"], key=lambda r: -r.max_activation)
            test_idx = sorted([i for i, r in enumerate(n.test) if r.kind == "top"],
                              key=lambda i: -n.test[i].max_activation)[:dd["test_top"]]
            test_idx += [i for i, r in enumerate(n.test) if r.kind == "random"][:dd["test_random"]]
            neurons.append({"layer": n.layer, "neuron": n.neuron, "max": _round(n.max_activation), "shown": test_idx,
                            "explain": [{"t": r.tokens, "a": [_round(a, 2) for a in r.activations]}
                                        for r in tops[:dd["explain_windows"]]],
                            "test": [{"k": n.test[i].kind, "t": n.test[i].tokens,
                                      "a": [_round(a, 2) for a in n.test[i].activations]} for i in test_idx]})
        return {"name": neuron_set.name, "neurons": neurons}

    def slim(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry as the board uses it: each neuron's test simulation kept only on the windows the
        page shows (`shown_simulation`), and the summary recomputed from its per-neuron values (the
        submitter's own summary is compared by verification, never shown)."""
        view = self.get(entry["neuron_set"]["hash"], entry)
        shown = {(n["layer"], n["neuron"]): n["shown"] for n in view["neurons"]} if view else {}
        listed = [(n["layer"], n["neuron"]) for n in entry["neurons"]]
        order = list(shown) if set(shown) == set(listed) else listed
        neurons = []
        for n in entry["neurons"]:
            sims = n.get("test_simulation") or []
            picks = shown.get((n["layer"], n["neuron"]), [])
            neurons.append({**{k: v for k, v in n.items() if k != "test_simulation"},
                            "shown_simulation": [[_round(v, 1) for v in sims[i]] if i < len(sims) and sims[i] is not None
                                                 else None for i in picks]})
        return {**entry, "neurons": neurons, "summary": recomputed_summary(entry, order)}


def _distribution(entry: dict[str, Any], scorer: str) -> dict[str, Any]:
    """What the plots need without the per-neuron payload: quantiles of the per-neuron headline
    scores (undefined at the metric's no-information value) and the mean per layer with a
    normal-approximation 95% CI (mean ± 1.96·sd/√n)."""
    block = entry["summary"]["scores"][scorer]
    values = np.array(_neuron_values(entry, scorer, block["metric"], block.get("no_information")))
    layers_of = np.array([n["layer"] for n in entry["neurons"]])
    defined = np.isfinite(values)  # NaN only where a metric has no no-information value
    values, layers_of = values[defined], layers_of[defined]
    if not len(values):
        return {"box": None, "layers": []}
    box = [_round(q) for q in np.quantile(values, [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1])]
    layers = []
    for layer in sorted(set(layers_of.tolist())):
        vs = values[layers_of == layer]
        half = 1.96 * vs.std(ddof=1) / math.sqrt(len(vs)) if len(vs) > 1 else 0.0
        layers.append([layer, _round(vs.mean()), _round(vs.mean() - half), _round(vs.mean() + half), len(vs)])
    return {"box": box, "layers": layers}


def _neuron_scores(n: dict[str, Any], keys: list[str], field: str = "scores") -> dict[str, Any]:
    """The neuron's headline metrics (`keys`): the page shows those; `export` has every metric."""
    values = n.get(field) or {}
    return {k: _round(values.get(k)) for k in keys}


def page_data(assessed: list[Assessed], cfg, connections: dict[str, pd.DataFrame] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What index.html embeds (the board: summaries, the sets' neuron lists, plot summaries) and the
    payload files it loads on demand, by path under data/: one per entry (its neurons' explanations
    and scores) and one per neuron (its windows and every entry's explanation, scores and simulation)."""
    ranked = [a.entry for a in assessed if a.status == "verified"]
    views = SetViews(cfg)
    sets: dict[str, Any] = {}
    payloads: dict[str, Any] = {}
    per_neuron: dict[tuple[str, int, int], dict[str, Any]] = {}
    out_entries = []
    for e in ranked:
        h = e["neuron_set"]["hash"]
        view = views.get(h, e)
        if h not in sets:
            sets[h] = {"name": e["neuron_set"]["name"], "key": h[:12],
                       "neurons": [[n["layer"], n["neuron"]] for n in view["neurons"]] if view else []}
            conn = (connections or {}).get(e["neuron_set"]["name"])
            for n in view["neurons"] if view else []:
                per_neuron[(h, n["layer"], n["neuron"])] = {
                    "layer": n["layer"], "neuron": n["neuron"], "max": n["max"], "explain": n["explain"],
                    "test": n["test"], "connections": _connection_tokens(conn, n["layer"], n["neuron"]),
                    "entries": {}}
        by_key = {(n["layer"], n["neuron"]): n for n in e["neurons"]}
        keys = [f"{scorer}.{b['metric']}" for scorer, b in e["summary"]["scores"].items()]
        entry_neurons = []
        for layer, neuron in sets[h]["neurons"]:
            n = by_key.get((layer, neuron), {})
            entry_neurons.append({"e": n.get("explanation"), "f": n.get("failure"), "s": _neuron_scores(n, keys)})
            per_neuron[(h, layer, neuron)]["entries"][e["name"]] = {
                **entry_neurons[-1], "fl": _neuron_scores(n, keys, "floor"), "ce": _neuron_scores(n, keys, "ceiling"),
                "sim": n.get("shown_simulation") or []}
        payloads[f"entries/{e['name']}.js"] = ("entry", e["name"], {"neurons": entry_neurons})
        out_entries.append({
            "name": e["name"], "submitter": e["submitter"], "date": e["date"][:10], "set": h,
            "explainer": explainer_label(e), "prompt": (e["prompt"] or {}).get("variant") or "—",
            "simulator": e["simulator"]["kind"], "verified": "verified",
            "cost_per_neuron": _cost_per_neuron(e), "cost_usd": e["cost"]["usd"],
            "tokens": e["cost"]["input_tokens"] + e["cost"]["output_tokens"],
            "summary": {s: {"metric": b["metric"], "mean": b["mean"], "ci95": b["ci95"],
                            "mean_defined": b["mean_defined"], "coverage": b["coverage"],
                            "floor": _control(e, "floor", s), "ceiling": _control(e, "ceiling", s),
                            **_distribution(e, s)}
                        for s, b in e["summary"]["scores"].items()}})
    for (h, layer, neuron), data in per_neuron.items():
        payloads[f"neurons/{h[:12]}/{layer}-{neuron}.js"] = ("neuron", f"{h[:12]}/{layer}/{neuron}", data)
    unranked = [{"name": a.path.name, "status": a.status, "reason": a.reason[:300]}
                for a in assessed if a.status != "verified"]
    random_weights = [{"trained_set": t, "random_set": c, "scorer": s, **r}
                      for (t, c, s), rows in sorted(random_weight_rows(assessed, cfg).items()) for r in rows]
    # No render timestamp: the page is a pure function of the entries, so a stale board shows in a diff.
    return {"harness_version": __version__, "sets": sets, "entries": out_entries, "unranked": unranked,
            "random_weights": random_weights}, payloads


def _connection_tokens(table: pd.DataFrame | None, layer: int, neuron: int) -> dict[str, list[str]] | None:
    """The neuron's top input and output tokens by connection weight, from the set's table written by
    `python -m harness.connections all=true` (leaderboard/connections/<set>.parquet), if there is one."""
    if table is None:
        return None
    row = table[(table["layer"] == layer) & (table["neuron"] == neuron)]
    if row.empty:
        return None
    r = row.iloc[0]
    return {kind: [str(t) for t in r[f"{kind}_tokens"]][:10] for kind in ("input", "output")
            if f"{kind}_tokens" in row.columns}


def load_connections(board_dir: Path) -> dict[str, pd.DataFrame]:
    """Connection-weight tables of the frozen sets, by set name (a maintainers' file, never an entry's)."""
    folder = board_dir / "connections"
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))} if folder.is_dir() else {}


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element (no '</script>', no HTML comment openers)."""
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            .replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_html(index: dict[str, Any]) -> str:
    return TEMPLATE.read_text().replace("/*__DATA__*/null", _script_json(index))


def _payload_js(kind: str, key: str, data: Any) -> str:
    return f"NB_LOAD({json.dumps(kind)},{json.dumps(key)},{_script_json(data)});\n"


def _check_data_dir(target: Path) -> None:
    """Refuse to replace a data/ directory that render did not write."""
    if os.path.lexists(target) and not (target / DATA_MARK).is_file():
        raise WriteError(f"{target} exists and was not written by render: move it away first")


def render(cfg: dict[str, Any], out_dir: Path | None = None,
           assessed: list[Assessed] | None = None) -> tuple[Path, Path]:
    """Write README.md, index.html and the page's data/ from the entries as `assess` finds them
    (done here unless given): all three are built first and then replaced together, so a failure
    leaves the previous board as it was."""
    board_dir = cfg["entries_dir"].parent
    out_dir = Path(out_dir) if out_dir else board_dir
    md, page, data = out_dir / "README.md", out_dir / "index.html", out_dir / "data"
    _check_data_dir(data)
    assessed = assess(cfg) if assessed is None else assessed
    index, payloads = page_data(assessed, cfg, load_connections(board_dir))
    files = {rel: _payload_js(kind, key, value) for rel, (kind, key, value) in payloads.items()}
    files[DATA_MARK] = "written by python -m harness.leaderboard render: replaced at every render\n"
    replace_together({md: render_markdown(assessed, cfg) + "\n", page: render_html(index), data: files})
    return md, page
