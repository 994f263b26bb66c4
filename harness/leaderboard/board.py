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
                "simulator": e["simulator"]["kind"], "metric": block["metric"], "mean": block["mean"],
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
    "entries are paired by explainer (same explainer, prompt, simulator and scorer parameters), and the 95% CI of "
    "*trained − random* is an unpaired bootstrap over each set's neurons, each resampled on its own, every neuron "
    "counted (undefined at the metric's no-information value). **⚠** flags a scoring rule under which the explainer "
    "does not score better on trained weights than on random ones (the CI reaches 0): that number alone does not show "
    "that the explanations capture anything the model learned.")


def _pairing_key(entry) -> tuple:
    return (_explainer_label(entry), (entry["prompt"] or {}).get("variant") or "—", entry["simulator"]["kind"],
            json.dumps(entry["simulator"]["parameters"], sort_keys=True))


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
    by_set: dict[str, dict[tuple, dict[str, Any]]] = {}
    verified = sorted((a.entry for a in assessed if a.status == "verified"), key=lambda e: (e["date"], e["name"]))
    for e in verified:  # one entry per explainer and set: the earliest, as for duplicates
        by_set.setdefault(e["neuron_set"]["name"], {}).setdefault(_pairing_key(e), e)
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for trained_set, control_set in controls.items():
        for key, trained in by_set.get(trained_set, {}).items():
            control = by_set.get(control_set, {}).get(key)
            for scorer, block in trained["summary"]["scores"].items():
                metric = get_scorer(scorer).metric(block["metric"])
                row = {"explainer": key[0], "prompt": key[1], "simulator": key[2], "metric": block["metric"],
                       "trained_entry": trained["name"], "random_entry": None, "trained": block["mean"],
                       "random": None, "diff": None, "ci95": [None, None], "flagged": None}
                if (control is not None and scorer in control["summary"]["scores"]
                        and control["scorers"].get(scorer) == trained["scorers"].get(scorer)
                        and control["summary"]["scores"][scorer]["metric"] == block["metric"]):
                    sign = 1.0 if metric.higher_is_better else -1.0
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

def _md(text: Any) -> str:
    """Plain text safe inside a Markdown table cell (no HTML, no pipes, no line breaks)."""
    s = html.escape("" if text is None else str(text), quote=False)
    return re.sub(r"[\r\n]+", " ", s).replace("|", "\\|").replace("`", "'")[:200]


def render_markdown(assessed: list[Assessed], cfg: dict[str, Any] | None = None) -> str:
    lines = ["# NeuronBench leaderboard", "",
             "Generated by `python -m harness.leaderboard render` from `leaderboard/entries/` — do not edit by hand. "
             "Interactive version: [index.html](index.html) (open it from the file system).", "",
             "Score = mean over **every** neuron of the set of the scoring rule's headline metric, a neuron whose "
             "metric is undefined (a constant prediction, a failed explanation) counting at the metric's "
             "no-information value (correlation 0, AUROC 0.5, ablation score 0), with a seeded bootstrap 95% CI over "
             "neurons. *Defined*: the mean over the neurons where the metric is defined; *coverage*: their share. "
             "*Floor*: the same simulator and scorer on another neuron's explanation; *ceiling*: the true test "
             "activations quantised to the simulator's 0–10 scale. Only verified entries are ranked.", ""]
    groups = board_rows(assessed)
    if not groups:
        lines += ["No verified entries yet: see the README's \"Sweeps and the leaderboard\" section to submit one.", ""]
    for (set_name, set_hash, scorer), rows in sorted(groups.items()):
        lines += [f"## {_md(set_name)} (`{set_hash[:12]}`) — {_md(scorer)}: {_md(rows[0]['metric'])}", "",
                  "| # | entry | explainer | prompt | simulator | score | 95% CI | defined | coverage | floor | "
                  "ceiling | USD / neuron | submitter | date |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rank, r in enumerate(rows, 1):
            lo, hi = r["ci95"]
            lines.append(f"| {rank} | {_md(r['name'])} | {_md(r['explainer'])} | {_md(r['prompt'])} | "
                         f"{_md(r['simulator'])} | {fmt(r['mean'])} | [{fmt(lo)}, {fmt(hi)}] | "
                         f"{fmt(r['mean_defined'])} | {fmt(r['coverage'], '.2f')} | {fmt(r['floor'])} | "
                         f"{fmt(r['ceiling'])} | {r['cost_per_neuron']:.2e} | {_md(r['submitter'])} | {r['date']} |")
        lines.append("")
    comparisons = random_weight_rows(assessed, cfg or {})
    if comparisons:
        lines += ["## Trained vs random weights", "", RANDOM_WEIGHTS_NOTE, ""]
    for (trained_set, control_set, scorer), rows in sorted(comparisons.items()):
        lines += [f"### {_md(trained_set)} vs {_md(control_set)} — {_md(scorer)}: {_md(rows[0]['metric'])}", "",
                  "| explainer | prompt | simulator | trained | random weights | trained − random | 95% CI | flag |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lo, hi = r["ci95"]
            flag = "no entry on the random-weights set" if r["random_entry"] is None else (
                "⚠ not better than on random weights" if r["flagged"] else "")
            lines.append(f"| {_md(r['explainer'])} | {_md(r['prompt'])} | {_md(r['simulator'])} | {fmt(r['trained'])} | "
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
    random_weights = [{"trained_set": t, "random_set": c, "scorer": s, **r}
                      for (t, c, s), rows in sorted(random_weight_rows(assessed, cfg).items()) for r in rows]
    # No render timestamp: the page is a pure function of the entries, so a stale board shows in a diff.
    return {"harness_version": __version__, "sets": sets, "entries": out_entries, "unranked": unranked,
            "random_weights": random_weights}


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
    md.write_text(render_markdown(assessed, cfg) + "\n")
    page.write_text(render_html(assessed, cfg))
    return md, page
