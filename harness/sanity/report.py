"""The outputs of `python -m harness.metric_sanity`: the verdict and curve tables, report.md and the
plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.formatting import fmt
from harness.rundir import write_figure
from harness.sanity.perturb import DIRECTIONS

# Why each scorer's headline is its headline, beside the test it must pass (report.md says which pass).
HEADLINE_REASONS = {
    "correlation": "Bills et al.'s preferred score. Pearson correlation is unchanged by any increasing affine map of "
                   "the simulation, so the simulator's 0–10 scale cannot move it; the metrics of this scorer that do "
                   "compare scales (R² and absolute deviation without calibration) are the ones at risk of rewarding a "
                   "simulation for predicting less.",
    "threshold": "AUROC against \"above half the neuron's corpus maximum\" needs no fitted cut and is insensitive to the "
                 "simulator's scale; balanced accuracy and F1 depend on a cut fitted on calibration, and F1 has no "
                 "no-information value, so a neuron it leaves undefined cannot be counted on a common basis.",
    "ablation": "1 − KL(simulated)/KL(mean-ablated) asks whether the simulation stands in for the neuron in the model "
                "itself, on the real activation scale (linear calibration on the calibration split); the KLs alone "
                "are not comparable across neurons.",
    "embedding": "AUROC of the explanation's cosine similarity to each window against the window's active label needs no "
                 "cut; the similarity gap's size depends on the embedding model.",
    "detection": "AUROC of the judge's P(yes) against the window's active label needs no cut and is insensitive to the "
                 "judge's bias towards \"yes\", which moves precision, recall, F1 and the false-positive rate.",
    "fuzzing": "As detection: AUROC of P(yes) is insensitive to the judge's bias towards \"yes\".",
}

KIND_LABELS = {"planted": "planted neuron", "set": "set neurons", "set_ablation": "set neurons (ablation subset)",
               "planted_llm": "planted neuron (LLM-judge draws)", "set_llm": "set neurons (LLM-judge subset)"}


def verdict_table(results: dict[str, Any]) -> str:
    lines = ["| scorer | metric | missing labels: f=0 → max (kind) | extra labels: f=0 → max (kind) | monotone | "
             "drop CI > 0 | passes |", "|---|---|---|---|---|---|---|"]
    for key, m in results["metrics"].items():
        name = f"**{m['metric']}** (headline)" if m["headline"] else m["metric"]
        if not m["reads_perturbed"]:
            lines.append(f"| {m['scorer']} | {name} | — | — | — | — | n/a: does not read the {m['perturbs']} |")
            continue
        cells = []
        for d in DIRECTIONS:
            cells.append("<br>".join(f"{fmt(c[d]['means'][0])} → {fmt(c[d]['means'][-1])} ({KIND_LABELS[k]})"
                                     for k, c in m["kinds"].items()))
        mono = all(c[d]["monotone"] for c in m["kinds"].values() for d in DIRECTIONS)
        sig = all(c[d]["significant"] for c in m["kinds"].values() for d in DIRECTIONS)
        failing = [f"{d} on {KIND_LABELS[k]}" for k, c in m["kinds"].items() for d in DIRECTIONS if not c[d]["passes"]]
        verdict = "**yes**" if m["passes"] else "no: " + ", ".join(failing)
        lines.append(f"| {m['scorer']} | {name} | {cells[0]} | {cells[1]} | {'yes' if mono else 'no'} | "
                     f"{'yes' if sig else 'no'} | {verdict} |")
    return "\n".join(lines)


def curve_table(results: dict[str, Any], key: str) -> str:
    m = results["metrics"][key]
    lines = [f"`{key}`:", "", "| neurons | perturbation | " + " | ".join(f"f={f:g}" for f in results["fractions"]) + " |",
             "|---|---|" + "---|" * len(results["fractions"])]
    for kind, c in m["kinds"].items():
        for d in DIRECTIONS:
            cells = []
            for p in c[d]["points"]:
                mean, (lo, hi) = (p["mean"], p["ci95"]) if m["no_information"] is not None else (p["mean_defined"],
                                                                                                p["ci95_defined"])
                cells.append(f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]")
            lines.append(f"| {KIND_LABELS[kind]} | {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    s, p = results["set"], results["planted"]
    passing = [k for k, m in results["metrics"].items() if m["passes"]]
    failing = [k for k, m in results["metrics"].items() if m["reads_perturbed"] and not m["passes"]]
    headlines = {k: m for k, m in results["metrics"].items() if m["headline"]}
    windows = " + ".join(f"{n} {kind}" for kind, n in (results["config"]["ablation"]["windows_per_kind"] or {}).items() if n)
    llm_windows = " + ".join(f"{n} {kind}" for kind, n in results["config"]["llm_judges"]["windows_per_kind"].items() if n)
    judges = ", ".join(f"`{m}`" for m in results["config"]["llm_judges"]["scorers"] or []
                       if m in results["config"]["scorer"])
    lines = [
        "# Metric sanity: label-perturbation tests of every scorer", "",
        "Generated by `python -m harness.metric_sanity` (config `conf/check/metric_sanity.yaml`) — do not edit by hand.",
        "", "![metric sanity curves](metric_sanity.png)", "",
        "## What is measured", "",
        "A metric of explanation quality should get worse when the explanation gets worse. Following NeuronEval "
        "(Oikarinen et al., ICML 2025), whose two sanity tests ask that a metric drop when true concept labels are "
        "removed and drop when wrong ones are added, each scorer that reads a simulation is applied to the **oracle "
        "simulation** (the true "
        "activations quantised to the simulators' 0–10 scale, the cell's ceiling control) perturbed at fractions "
        f"f = {', '.join(f'{f:g}' for f in results['fractions'])}:", "",
        "- **missing labels**: a share f of the truly active tokens (oracle value > 0) are set to 0;",
        "- **extra labels**: a share f of the inactive tokens get a label, a value drawn from the neuron's own active "
        "labels.", "",
        "Token choices are seeded and nested; calibration is perturbed like test. Neurons: the **planted neuron** "
        f"(layer {p['layer']}, neuron {p['neuron']} of the random-init `tiny_llama`, edited to fire on the pronouns "
        f"{', '.join(repr(c) for c in p['class'])} and be exactly 0 elsewhere; {p['n_active_test_tokens']} of its "
        f"{p['n_test_tokens']} test tokens are active), with a CI over {p['draws']} perturbation draws; and the "
        f"**{s['n_neurons']} neurons of set `{s['name']}`** (`{s['hash'][:12]}`), with a CI over neurons; the "
        f"ablation scorer, which runs the subject model for every perturbation, on the first {s['n_ablation_neurons']} "
        f"of them with {windows} test windows each.", "",
        "The scorers that judge the explanation itself (embedding, detection, fuzzing) read no simulation, so for "
        "them the same two tests perturb the **explanation**, a list of true labels written as the top-tokens "
        f"baseline writes it: for the planted neuron its class ({p['true_explanation']}), for a set neuron the "
        "top-tokens baseline's own explanation. *Missing labels*: ceil(f × length) of the labels removed (every f > 0 "
        f"removes at least one; with none left the explanation is the empty baseline's \"{results['empty_explanation']}\"); "
        "*extra labels*: as many wrong labels inserted at seeded places, drawn from the other tokens of the planted "
        "neuron's explain windows, or from the other set neurons' lists. Choices are seeded and nested. Each "
        "perturbed explanation is scored as a cell scores it."
        + (f" The LLM judges ({judges}) ask their judge about every window under every condition, so they run on "
           f"{p['llm_judge_draws']} planted draws and the first {s['n_llm_judge_neurons']} set neurons, with "
           f"{llm_windows} test windows each." if judges else ""), "",
        "Means count an undefined value at the metric's no-information value (as the board does); metrics without "
        "one (F1, KLs) are averaged over the neurons where they are defined. A metric **passes** when, for both "
        "perturbations and on every kind of neuron, its mean falls at every step up the fractions (rises, for a KL) "
        "and the drop from f = 0 to the largest f has a paired bootstrap 95% CI above 0.", "",
        "## Verdicts", "", verdict_table(results), "",
        f"Pass: {', '.join(f'`{k}`' for k in passing) or 'none'}.", "",
        f"Fail: {', '.join(f'`{k}`' for k in failing) or 'none'}.", "",
        "## Headline metrics", "",
    ]
    lines += ["The board ranks each scoring rule on its headline metric, so a headline must pass both tests. Why each "
              "headline, among the metrics of its scorer that pass:", ""]
    for key, m in headlines.items():
        verdict = "passes both tests" if m["passes"] else ("**fails** (see the table above): it should not be a headline "
                                                           "until a passing metric replaces it")
        lines.append(f"- `{key}` {verdict}. {HEADLINE_REASONS.get(m['scorer'], '')}")
    lines += ["", "## Curves of the headline metrics (mean [95% CI])", ""]
    for key in headlines:
        lines += [curve_table(results, key), ""]
    lines += ["Every metric's curve, with its CI, is in `results.json`.", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, m in results["metrics"].items() if m["reads_perturbed"]]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    styles = {"planted": ":", "set": "-", "set_ablation": "-", "planted_llm": ":", "set_llm": "-"}
    for ax, key in zip(axes.flat, keys):
        m = results["metrics"][key]
        for kind, c in m["kinds"].items():
            for i, d in enumerate(DIRECTIONS):
                pts = c[d]["points"]
                use_all = m["no_information"] is not None
                mean = [p["mean"] if use_all else p["mean_defined"] for p in pts]
                ci = [p["ci95"] if use_all else p["ci95_defined"] for p in pts]
                xs = c[d]["fractions"]
                y = np.array([np.nan if v is None else v for v in mean], dtype=float)
                lo = np.array([np.nan if v[0] is None else v[0] for v in ci], dtype=float)
                hi = np.array([np.nan if v[1] is None else v[1] for v in ci], dtype=float)
                ax.plot(xs, y, styles[kind], marker="o", ms=3, color=f"C{i}",
                        label=f"{d}, {KIND_LABELS[kind]}")
                ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15)
        ax.set_title(("✓ " if m["passes"] else "✗ ") + key + (" (headline)" if m["headline"] else ""), fontsize=9)
        ax.set_xlabel("fraction perturbed", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, bbox_to_anchor=(0.5, 0.975))
    fig.suptitle("Label-perturbation sanity tests: a sound metric falls in both directions (✓ passes); "
                 "mean with 95% CI", y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    write_figure(path, fig, dpi=80)
    plt.close(fig)

