"""The board as Markdown (`leaderboard/README.md`): the ranking per set and scorer, its uncertainty
(`ranks`), explainer size against score (`scaling`), trained vs random weights, scorer agreement (`harness.agreement`), the entries not
ranked, and how entries are trusted (`TRUST_MODEL`). Every entry-derived string is escaped for
Markdown."""

from __future__ import annotations

from typing import Any

from harness.agreement import MIN_ENTRIES, agreements, render_set
from harness.formatting import fmt
from harness.leaderboard.assess import Assessed
from harness.leaderboard.ranks import Ranking, cross_sets, rankings, redrawn_pairs, render_section
from harness.leaderboard.rows import board_rows, random_weight_rows
from harness.leaderboard.scaling import render_scaling, scaling_rows
from harness.text import for_markdown as _md  # every entry-derived string in README.md

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
  their component specs** (`harness/components.py`); an entry may set only the parameters their
  params classes mark as entry options, each type-checked by its rule. Endpoints, key variables, file
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


AGREEMENT_NOTE = (
    "Do two scoring rules rank the same explainers alike? Per set and pair of scorers, each by its headline "
    "metric: **Kendall τ** (τ-b) between the verified entries' rankings by score (the mean over every neuron, as "
    "ranked above), with a 95% CI from a seeded bootstrap over neurons (each resample of the set's neurons is shared "
    "by every entry and scorer), and the **per-neuron Spearman ρ** between the two scorers' values within each entry "
    "(undefined values at the metric's no-information value), as the median over entries with the min and max. "
    "τ = 1: the same order; −1: the reverse; near 0: unrelated orders. The CI resamples neurons, not explainers: it "
    "shows how firmly these entries' order is measured, not how other explainers would be ordered, and with few "
    f"entries τ moves in coarse steps. Sets where fewer than {MIN_ENTRIES} verified entries ran two scorers are "
    "left out. `python -m harness.agreement` prints the same tables.")


def render_markdown(assessed: list[Assessed], cfg: dict[str, Any] | None = None,
                    ranks: list[Ranking] | None = None) -> str:
    """README.md from the assessed entries; `ranks` (the verified entries' `rankings`) is computed
    here unless given."""
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
    verified = [a.entry for a in assessed if a.status == "verified"]
    ranks = rankings(verified) if ranks is None else ranks
    lines += render_section(ranks, cross_sets(ranks, redrawn_pairs(cfg)))
    lines += render_scaling(scaling_rows(assessed, cfg))
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
    with_tau = [sa for sa in agreements(verified) if sa.has_tau]
    if with_tau:
        lines += ["## Scorer agreement", "", AGREEMENT_NOTE, ""]
        for sa in with_tau:
            lines += render_set(sa, "###")
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
