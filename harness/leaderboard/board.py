"""The board: which entries are ranked, and the Markdown and HTML pages that show them.

`render` trusts no file a submitter can edit: it reads every entry file (a bad one is listed as
rejected, never stops the board), re-verifies every entry whose simulator runs here, accepts a
recorded verification only for API simulators and only when it is signed with the maintainers' key,
and ranks verified entries only. See TRUST_MODEL.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from harness import __version__
from harness.errors import HarnessError
from harness.formatting import fmt
from harness.leaderboard.entry import fingerprint
from harness.leaderboard.schema import entry_from_bytes, known_set, read_entry_bytes
from harness.leaderboard.verify import Verification, resolve_components, trusted_record, uses_api, verify
from harness.paths import REPO_ROOT

log = logging.getLogger(__name__)
TEMPLATE = REPO_ROOT / "leaderboard" / "templates" / "index.html"

TRUST_MODEL = """\
## How entries are trusted

- An entry is data: a size-limited JSON file with no NaN, no huge numbers and no deep nesting,
  validated against a versioned schema, stored as `<name>.json` with that very name inside. A file
  that fails any check is listed under *Rejected* and the rest of the board renders.
- Verification re-scores the entry's explanations with a simulator and scorers rebuilt **by name
  from this repository's `conf/`**; an entry may set only the parameters `conf/leaderboard.yaml`
  allows (`entry_allowed`). Endpoints, key variables, file paths and caches come from the
  verifier's own configuration and environment: an entry that sets one is rejected, naming the
  field, so verifying never sends a credential or writes a file where an entry says.
- Simulators that do not read the explanation (the oracle) are controls, shown as the ceiling
  column, never entries. The same explanations under the same simulator and scorers are one
  submission: a second file with them is rejected as a duplicate.
- **Only verified entries are ranked.** `render` re-verifies every entry whose simulator runs
  locally, every time, and trusts no record it did not reproduce: token_match entries are re-scored
  on every neuron (seconds), local LLM simulators on a seeded random subset of neurons drawn from the
  entry file's sha256 keyed with the maintainers' secret (`$NEURONBENCH_VERIFY_KEY`).
- Entries whose simulator is behind an API are ranked only with a record in `verification.json`
  written by `python -m harness.leaderboard verify` in the maintainers' CI: it names the entry
  file's sha256, the harness version and a digest of the simulator and scorer configuration, and is
  signed (HMAC-SHA256) with the maintainers' key. A record that is hand-written, edited, stale or
  checked without the key counts for nothing: the entry is listed as *pending*.
- Ranking is on a common basis: the mean over every neuron of the set, a neuron whose metric is
  undefined counting at the metric's no-information value, so leaving neurons undefined cannot
  raise a score. The mean over defined neurons and the coverage are shown beside it.
"""


@dataclass
class Assessed:
    path: Path
    entry: dict[str, Any] | None
    status: str  # verified | failed | pending | rejected
    reason: str = ""
    sha256: str = ""  # of the file's bytes
    simulator_check: str = "n/a"  # the stored `python -m harness.check_simulator` result of its simulator


def _reason(result: Verification) -> str:
    return "; ".join(result.problems[:3]) + (f" (and {len(result.problems) - 3} more)" if len(result.problems) > 3
                                            else "") or result.note


def assess(cfg: dict[str, Any]) -> list[Assessed]:
    """Every file under the entries directory with its status, trusting nothing recorded for a
    local simulator (it is re-verified here)."""
    entries_dir = cfg["entries_dir"]
    out: list[Assessed] = []
    for path in sorted(entries_dir.glob("*.json")) if entries_dir.is_dir() else []:
        try:
            raw = read_entry_bytes(path, cfg)
            entry = entry_from_bytes(path, raw, cfg)
            resolve_components(entry, cfg)
            out.append(Assessed(path, entry, "unchecked", sha256=hashlib.sha256(raw).hexdigest()))
        except HarnessError as exc:
            out.append(Assessed(path, None, "rejected", str(exc)))
            log.warning("rejected %s: %s", path.name, exc)
    # One submission is listed once: the earliest by its date (then name) keeps the place.
    first: dict[str, Assessed] = {}
    for a in sorted((a for a in out if a.entry), key=lambda a: (a.entry["date"], a.path.name)):
        key = fingerprint(a.entry)
        if key in first:
            a.status, a.reason = "rejected", f"a duplicate of {first[key].path.stem} (same set, simulator, scorers " \
                                             "and explanations)"
        else:
            first[key] = a
    for a in tqdm([a for a in out if a.status == "unchecked"], desc="verifying entries", unit="entry"):
        simulator, _ = resolve_components(a.entry, cfg)
        a.simulator_check = simulator_check_label(simulator)
        if uses_api(simulator):
            result = trusted_record(a.path, a.entry, cfg) or Verification(
                a.entry["name"], "pending", note="its simulator is behind an API: ranked once the maintainers' CI "
                                                 "records a signed verification")
        else:
            result = verify(a.entry, cfg, entry_sha256=a.sha256)
        a.status, a.reason = result.status, _reason(result)
    return out


# --- Rows ---------------------------------------------------------------------------------------

def _explainer_label(entry) -> str:
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
                "explainer": _explainer_label(e), "prompt": (e["prompt"] or {}).get("variant") or "—",
                "simulator": e["simulator"]["kind"], "simulator_check": a.simulator_check,
                "metric": block["metric"], "mean": block["mean"],
                "ci95": block["ci95"], "mean_defined": block["mean_defined"], "coverage": block["coverage"],
                "floor": _control(e, "floor", scorer), "ceiling": _control(e, "ceiling", scorer),
                "cost_per_neuron": _cost_per_neuron(e)})
    for (_, _, scorer), rows in groups.items():
        sign = 1.0 if get_scorer(scorer).metric(rows[0]["metric"]).higher_is_better else -1.0
        rows.sort(key=lambda r: (r["mean"] is None, -sign * (r["mean"] or 0.0), r["name"]))
    return groups


# --- Markdown ---------------------------------------------------------------------------------

def _md(text: Any) -> str:
    """Plain text safe inside a Markdown table cell (no HTML, no pipes, no line breaks)."""
    s = html.escape("" if text is None else str(text), quote=False)
    return re.sub(r"[\r\n]+", " ", s).replace("|", "\\|").replace("`", "'")[:200]


def render_markdown(assessed: list[Assessed]) -> str:
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
        lines += [f"## {_md(set_name)} (`{set_hash[:12]}`) — {_md(scorer)}: {_md(rows[0]['metric'])}", "",
                  "| # | entry | explainer | prompt | simulator | simulator check | score | 95% CI | defined | coverage | "
                  "floor | ceiling | USD / neuron | submitter | date |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rank, r in enumerate(rows, 1):
            lo, hi = r["ci95"]
            lines.append(f"| {rank} | {_md(r['name'])} | {_md(r['explainer'])} | {_md(r['prompt'])} | "
                         f"{_md(r['simulator'])} | {_md(r['simulator_check'])} | {fmt(r['mean'])} | [{fmt(lo)}, {fmt(hi)}] | "
                         f"{fmt(r['mean_defined'])} | {fmt(r['coverage'], '.2f')} | {fmt(r['floor'])} | "
                         f"{fmt(r['ceiling'])} | {r['cost_per_neuron']:.2e} | {_md(r['submitter'])} | {r['date']} |")
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


def _set_view(entry, cfg) -> tuple[dict[str, Any], list[list[int]]]:
    """The set's neurons as the page shows them (a few windows each), and which test windows."""
    dd = cfg["drilldown"]
    try:
        neuron_set = known_set(entry, cfg["sets_dir"])
    except HarnessError:
        return {"name": entry["neuron_set"]["name"], "neurons": [], "missing": True}, []
    neurons, picks = [], []
    for n in neuron_set.neurons:
        tops = sorted([r for r in n.explain if r.kind == "top"], key=lambda r: -r.max_activation)[:dd["explain_windows"]]
        test_idx = sorted([i for i, r in enumerate(n.test) if r.kind == "top"],
                          key=lambda i: -n.test[i].max_activation)[:dd["test_top"]]
        test_idx += [i for i, r in enumerate(n.test) if r.kind == "random"][:dd["test_random"]]
        picks.append(test_idx)
        neurons.append({"layer": n.layer, "neuron": n.neuron, "max": _round(n.max_activation),
                        "explain": [{"t": r.tokens, "a": [_round(a, 2) for a in r.activations]} for r in tops],
                        "test": [{"k": n.test[i].kind, "t": n.test[i].tokens,
                                  "a": [_round(a, 2) for a in n.test[i].activations]} for i in test_idx]})
    return {"name": neuron_set.name, "neurons": neurons}, picks


def page_data(assessed: list[Assessed], cfg) -> dict[str, Any]:
    """Everything index.html shows, as one JSON object: the verified entries in full, the others
    by name, status and reason."""
    ranked = [a.entry for a in assessed if a.status == "verified"]
    sets: dict[str, Any] = {}
    shown_test: dict[str, list[list[int]]] = {}
    for e in ranked:
        h = e["neuron_set"]["hash"]
        if h not in sets:
            sets[h], shown_test[h] = _set_view(e, cfg)
    out_entries = []
    for e in ranked:
        h = e["neuron_set"]["hash"]
        by_key = {(n["layer"], n["neuron"]): n for n in e["neurons"]}
        ns = []
        for k, sn in enumerate(sets[h]["neurons"]):
            n = by_key.get((sn["layer"], sn["neuron"]), {})
            sims = n.get("test_simulation") or []
            ns.append({"e": n.get("explanation"), "f": n.get("failure"),
                       "s": {k2: _round(v) for k2, v in (n.get("scores") or {}).items()},
                       "fl": {k2: _round(v) for k2, v in (n.get("floor") or {}).items()},
                       "ce": {k2: _round(v) for k2, v in (n.get("ceiling") or {}).items()},
                       "sim": [[_round(v, 1) for v in sims[i]] if i < len(sims) and sims[i] is not None else None
                               for i in shown_test[h][k]]})
        out_entries.append({
            "name": e["name"], "submitter": e["submitter"], "date": e["date"][:10], "set": h,
            "explainer": _explainer_label(e), "prompt": (e["prompt"] or {}).get("variant") or "—",
            "simulator": e["simulator"]["kind"], "verified": "verified",
            "cost_per_neuron": _cost_per_neuron(e), "cost_usd": e["cost"]["usd"],
            "tokens": e["cost"]["input_tokens"] + e["cost"]["output_tokens"],
            "summary": {s: {"metric": b["metric"], "mean": b["mean"], "ci95": b["ci95"],
                            "mean_defined": b["mean_defined"], "coverage": b["coverage"],
                            "floor": _control(e, "floor", s), "ceiling": _control(e, "ceiling", s)}
                        for s, b in e["summary"]["scores"].items()},
            "neurons": ns})
    unranked = [{"name": a.path.name, "status": a.status, "reason": a.reason[:300]}
                for a in assessed if a.status != "verified"]
    # No render timestamp: the page is a pure function of the entries, so a stale board shows in a diff.
    return {"harness_version": __version__, "sets": sets, "entries": out_entries, "unranked": unranked}


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element (no '</script>', no HTML comment openers)."""
    return (json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            .replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_html(assessed: list[Assessed], cfg) -> str:
    return TEMPLATE.read_text().replace("/*__DATA__*/null", _script_json(page_data(assessed, cfg)))


def render(cfg: dict[str, Any], out_dir: Path | None = None) -> tuple[Path, Path]:
    """Assess every entry file and write README.md and index.html."""
    out_dir = Path(out_dir) if out_dir else cfg["entries_dir"].parent
    assessed = assess(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "README.md", out_dir / "index.html"
    md.write_text(render_markdown(assessed) + "\n")
    page.write_text(render_html(assessed, cfg))
    return md, page
