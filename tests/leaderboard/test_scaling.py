"""Explainer size against score (issue 24): which entries the scaling table holds, in which order,
and the paired difference to the next smaller model, checked against a direct paired test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.leaderboard.assess import Assessed
from harness.leaderboard.scaling import render_scaling, scaling_rows, size_label
from harness.scoring.stats import paired_test

CORR = "correlation.ev_correlation_score"
N = 40
SIZES = {"hf_local:small": 135_000_000, "hf_local:mid": 494_000_000, "hf_local:large": 1_540_000_000}


def assessed(name, model, level, prompt="top_tokens", status="verified", seed=0, kind="llm"):
    """A verified entry as the board reads it: per-neuron correlation values around `level`."""
    values = level + np.random.default_rng(seed).normal(0, 0.1, N)
    entry = {"name": name, "submitter": "t", "date": "2026-12-03", "neuron_set": {"name": "s", "hash": "a" * 64, "n_neurons": N},
             "explainer": {"kind": kind, "backend": "hf_local" if kind == "llm" else None,
                           "model": model if kind == "llm" else None, "parameters": {}},
             "prompt": {"variant": prompt, "parameters": {}} if kind == "llm" else None,
             "simulator": {"kind": "token_match", "backend": None, "model": None, "parameters": {"high": 10.0}},
             "scorers": {"correlation": {}}, "cost": {"usd": 0.0},
             "summary": {"scores": {"correlation": {"metric": "ev_correlation_score", "mean": float(values.mean()),
                                                    "ci95": [0.0, 1.0], "mean_defined": float(values.mean()),
                                                    "coverage": 1.0}}},
             "neurons": [{"layer": i // 10, "neuron": i % 10, "scores": {CORR: float(v)}} for i, v in enumerate(values)]}
    return Assessed(Path(f"{name}.json"), entry, status)


def values(a: Assessed) -> np.ndarray:
    return np.array([n["scores"][CORR] for n in a.entry["neurons"]])


def test_sized_explainers_smallest_first_each_against_the_next_smaller_with_its_prompt():
    small, mid, large = assessed("s", "small", 0.1, seed=1), assessed("m", "mid", 0.3, seed=2), \
        assessed("l", "large", 0.35, seed=3)
    other_prompt = assessed("m-cot", "mid", 0.2, prompt="cot", seed=4)
    baseline = assessed("top", None, 0.5, kind="baseline_top_tokens", seed=5)  # no size: not in the table
    unverified = assessed("x", "large", 0.9, status="failed", seed=6)
    (rows,) = scaling_rows([large, baseline, mid, small, other_prompt, unverified],
                           {"explainer_sizes": SIZES}).values()
    assert [r["name"] for r in rows] == ["s", "m-cot", "m", "l"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["s"]["vs"] is None and by_name["m-cot"]["vs"] is None  # nothing smaller with its prompt
    assert by_name["m"]["vs"] == "hf_local:small" and by_name["l"]["vs"] == "hf_local:mid"  # the nearest smaller
    direct = paired_test(values(large), values(mid), 10_000, 0)
    assert by_name["l"]["diff"] == direct["mean_diff"] and by_name["l"]["diff_ci"] == direct["ci95"]
    assert by_name["l"]["p_value"] == direct["p_value"]
    assert by_name["m"]["diff"] > 0.1 and by_name["m"]["p_value"] < 0.05
    text = "\n".join(render_scaling(scaling_rows([small, mid, large], {"explainer_sizes": SIZES})))
    assert "| hf\\_local:large | 1.54B | top\\_tokens | l |" in text and "| hf\\_local:small | 135M |" in text


def test_no_table_without_two_model_sizes():
    one_size = [assessed("a", "mid", 0.2), assessed("b", "mid", 0.3, prompt="cot", seed=1)]
    assert scaling_rows(one_size, {"explainer_sizes": SIZES}) == {}
    assert scaling_rows([assessed("a", "mid", 0.2), assessed("b", "large", 0.3)], {}) == {}  # no sizes configured
    assert render_scaling({}) == []


def test_size_labels():
    assert [size_label(x) for x in (135_000_000, 494_000_000, 1_540_000_000, 7_000_000_000)] == \
        ["135M", "494M", "1.54B", "7B"]
