"""GELU-variant check: `python -m harness.gelu_check subject=gemma3_270m [overrides]`.

OpenAI found, after publishing, that its GPT-2 neuron datasets had been recorded with an optimized
GELU implementation instead of GPT-2's own and reported the resulting post-MLP activation error for
GPT-2 small (median 0.0090, p90 0.0252, p99 0.0839, p99.9 0.1736): the error of neuron activations
from whole-network inference, so comparable with *propagated* below. This check measures that class of error
for a GELU subject: the same Brown windows are run with the model's own activation function and
with each variant swapped in, and it reports, per layer and overall:

- |Δ activation| quantiles (median, p90, p99, p99.9, max) over every token × neuron:
  *local* — the variant applied to the same pre-activation (`variant(pre)`, or
  `variant(gate) * up` for gated MLPs), against the hooked activation of the model's own run;
  *propagated* — the whole network run with the variant in every layer, against the same;
- top-k window stability: Jaccard overlap of each alive neuron's top-k windows (by window
  maximum) between the two propagated runs;
- neuron-choice stability: the frozen-set rule (a seeded uniform draw of `neurons_per_layer`
  per layer among neurons that are not dead) applied to these windows: how many neurons change
  alive/dead status, how many of the chosen neurons are still alive under the variant, and how
  many the same seeded draw picks again on the variant's alive neurons;
- score change: each chosen neuron gets explain/test records from disjoint document pools
  (top + random windows, baseline run); it is explained (explainer group), simulated on its
  test records (simulator group) and scored (scorer group) once on the baseline activations and
  once on the test split re-recorded under the variant (same windows, activations of the
  propagated variant run); reported as mean |Δscore| and the Spearman rank correlation of the
  neurons' scores.

Quantiles come from a per-layer histogram of |Δ| in log-spaced bins (memory independent of the
number of windows; `histogram.per_decade` bins per decade, so a quantile is exact to within a
relative 10**(1/per_decade) - 1, 0.46 % at 500), plus an exact count of zeros and the exact max.

Outputs in the Hydra run directory: `report.md`, `gelu_check.png` (Δ quantiles per layer per
variant) and `results.json` (every number and the resolved config); the overall table is printed.

This module runs the check; its parts live in `harness.gelu` (variants, histogram, capture,
stability, scores, report).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from harness import __version__
from harness.cli import exit_on_harness_error, hydra_output_dir
from harness.corpus import load_corpus
from harness.errors import ConfigError
from harness.gelu.capture import VariantRuns, own_window_maxima
from harness.gelu.histogram import QUANTILES, AbsHistogram
from harness.gelu.report import OPENAI_GPT2_SMALL, overall_table, plot, report_markdown, stability_table
from harness.gelu.scores import score_changes
from harness.gelu.stability import alive_on, draw, topk_jaccard, variant_results
from harness.gelu.variants import VARIANTS, Variant, get_variant, swap_activation
from harness.rundir import write_atomic, write_json
from harness.sets.windows import POOLS, make_windows
from harness.subject import Subject, fidelity_check, load_subject

# What tests use from here.
__all__ = ["QUANTILES", "VARIANTS", "AbsHistogram", "get_variant", "main", "run_check", "swap_activation",
           "topk_jaccard"]

log = logging.getLogger(__name__)


def _gelu_subject(cfg: DictConfig, subject: Subject | None) -> tuple[Subject, list[Variant]]:
    """The configured variants and a subject whose own activation is one of them."""
    variants = [get_variant(name) for name in cfg.variants]
    if not variants:
        raise ConfigError("variants is empty; name at least one of " + ", ".join(sorted(VARIANTS)))
    subject = subject if subject is not None else load_subject(cfg.subject)
    own = subject.neurons.activation
    if own not in VARIANTS:
        raise ConfigError(f"subject {subject.name} uses activation {own!r}, not a GELU variant; the GELU check "
                          f"needs a GELU subject (known variants: {sorted(VARIANTS)}), e.g. subject=gemma3_270m.")
    return subject, variants


def run_check(cfg: DictConfig, output_dir: Path, subject: Subject | None = None) -> dict[str, Any]:
    """Run the check and write its outputs; `subject` (already loaded from `cfg.subject`) saves a load."""
    t0 = time.time()
    subject, variants = _gelu_subject(cfg, subject)
    nm = subject.neurons
    L, N, own = nm.n_layers, nm.n_neurons, nm.activation
    layers = list(range(L))
    corpus = load_corpus(cfg.corpus)
    win, _pools, _ = make_windows(corpus, subject.tokenizer, cfg.window, cfg.explain_fraction, cfg.seeds.pools,
                                  cfg.max_windows)
    W, T = win.ids.shape
    ids = torch.from_numpy(win.ids)
    log.info("%s (activation %s): %d windows of %d tokens, %d layers × %d neurons, variants %s",
             subject.name, own, W, T, L, N, [v.name for v in variants])

    # The hooks and the configured activation must agree before anything is compared.
    fidelity = fidelity_check(subject, ids[: min(4, W)], layers, cfg.fidelity_tolerance)

    # Pass 1: the model's own run, to choose neurons as the frozen-set builder would.
    base_max = own_window_maxima(subject, win, layers, cfg.batch_size)
    alive_own = alive_on(base_max, win.pool, cfg.alive)
    chosen = draw(cfg, alive_own, layers)

    # Pass 2: per batch the own run (with pre-activations), then each variant, locally and propagated.
    histogram = {k: cfg.histogram[k] for k in ("per_decade", "min_exp", "max_exp")}
    runs = VariantRuns(subject, ids, layers, variants, chosen, histogram).run(cfg.batch_size)
    results: dict[str, Any] = {"variants": {
        v.name: variant_results(cfg, v, own, runs, base_max, alive_own, win.pool, chosen) for v in variants}}

    # Score change when the test split is re-recorded under each variant.
    scores = score_changes(cfg, subject, win, [d.doc_id for d in corpus.documents], chosen, base_max,
                           runs.chosen_acts, [v.name for v in variants])
    for name, block in scores["variants"].items():
        results["variants"][name]["score"] = block

    results.update({
        "harness_version": __version__,
        "subject": {"name": subject.name, "activation_function": own, "architecture": nm.architecture,
                    "n_layers": L, "neurons_per_layer": N, "weights_digest": subject.weights_digest},
        "corpus": {"name": corpus.name, "digest": corpus.digest, "n_windows": W, "window": T,
                   "n_tokens": W * T, "windows_per_pool": {p: int((win.pool == i).sum()) for i, p in enumerate(POOLS)}},
        "fidelity_max_abs_diff": fidelity,
        "scale": {"overall": runs.scale.summary(), "per_layer": [runs.scale.summary(layer) for layer in layers]},
        "alive": {"n_alive": int(alive_own.sum()), "n_neurons": L * N, "chosen": len(chosen)},
        "score_neurons": scores["n_neurons"], "explanation_failures": scores["failures"],
        "openai_gpt2_small": OPENAI_GPT2_SMALL,
        "seconds": round(time.time() - t0, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    })
    write_json(output_dir / "results.json", results)
    plot(results, output_dir / "gelu_check.png")
    write_atomic(output_dir / "report.md", report_markdown(results))
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="check/gelu")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    output_dir = hydra_output_dir()
    results = run_check(cfg, output_dir)
    print(overall_table(results))
    print()
    print(stability_table(results))
    print(f"\nwrote {output_dir / 'report.md'}, {output_dir / 'gelu_check.png'} and {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
