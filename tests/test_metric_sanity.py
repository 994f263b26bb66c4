"""Issues 17 and 23: the random-weights subject, the label perturbations of harness.metric_sanity (of
the oracle simulation, and of the explanation for the scorers that judge it) and their verdicts, and
the board's trained-vs-random comparison."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from harness import leaderboard as lb
from harness.leaderboard.markdown import render_markdown
from harness.leaderboard.rows import random_weight_rows
from harness.errors import ConfigError
from harness.components import RunContext
from harness.metric_sanity import curves, run_check, score_grid, verdicts
from harness.sanity.perturb import (LabelPlan, Labeller, Plan, conditions, explained_batch, label_count,
                                    perturbed_batch)
from harness.sanity.report import verdict_table
from harness.paths import CONF_DIR, SETS_DIR
from harness.records import ActivationRecord, NeuronRecord
from harness.scoring import DETECTION, EMBEDDING, Metric, scorers_from
from harness.scoring.stats import difference_ci
from harness.subject import load_subject, subject_config
from tests.leaderboard.test_leaderboard import board, lb_cells, lb_sets  # noqa: F401 (fixtures)
from tests.scoring.test_detection import KeywordJudge, tea_neuron

pytestmark = pytest.mark.usefixtures("one_thread")
STATS = {"seed": 0, "bootstrap_resamples": 500}


# --- the random-weights subject -----------------------------------------------------------------

def test_random_init_copies_another_subjects_architecture_under_its_own_seed(tiny_llama):
    cfg = {"name": "r", "source": "random_init", "config_from": "tiny_llama", "tokenizer_from": "smollm2_135m",
           "seed": 3}
    a, b = load_subject(cfg), load_subject(dict(cfg))
    assert a.weights_digest == b.weights_digest != tiny_llama.weights_digest  # seeded, and not seed 0's draw
    assert a.model.config.to_dict()["intermediate_size"] == tiny_llama.model.config.intermediate_size
    assert [n for n, _ in a.model.named_parameters()] == [n for n, _ in tiny_llama.model.named_parameters()]
    assert load_subject({**cfg, "seed": 4}).weights_digest != a.weights_digest
    with pytest.raises(ConfigError, match="either config_from"):
        load_subject({**cfg, "model_type": "llama"})
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_subject({**cfg, "name": "tiny_llama_again", "config_from": "tiny_llama_again"})


@pytest.mark.slow
def test_committed_random_set_was_built_on_the_configured_random_subject():
    """The random-weights control set's manifest names smollm2_135m_random and its weights digest,
    which the seeded re-draw reproduces; the architecture is the trained subject's."""
    manifest = json.loads((SETS_DIR / "smollm2-135m-random-brown-v1" / "manifest.json").read_text())
    trained = json.loads((SETS_DIR / "smollm2-135m-brown-v1" / "manifest.json").read_text())
    subject = load_subject(subject_config("smollm2_135m_random"))
    assert manifest["subject"]["config"] == subject_config("smollm2_135m_random")
    assert manifest["subject"]["weights_digest"] == subject.weights_digest != trained["subject"]["weights_digest"]
    for key in ("n_layers", "neurons_per_layer", "architecture", "activation_function"):
        assert manifest["subject"][key] == trained["subject"][key]
    for key in ("window", "seeds", "counts", "corpus", "pools"):
        assert manifest[key] == trained[key], key
    assert manifest["selection"]["rule"] == trained["selection"]["rule"]


# --- perturbations ------------------------------------------------------------------------------

def _records(rows, kind="top"):
    return [ActivationRecord(tokens=[f"t{i}" for i in range(len(r))], activations=list(map(float, r)), kind=kind)
            for r in rows]


def test_missing_and_extra_labels_touch_only_their_tokens_and_nest():
    sims = [[0, 5, 10, 0, 0, 3], [0, 0, 8, 0, 1, 0]]
    plan = Plan.draw(sims, np.random.default_rng(0))
    labels = np.concatenate(sims).astype(float)
    active, inactive = labels > 0, labels == 0
    previous = np.zeros(len(labels), bool)
    for f in (0.0, 0.4, 0.6, 1.0):
        out = np.concatenate(plan.perturbed("missing", f))
        removed = labels != out
        assert (out[removed] == 0).all() and not removed[inactive].any()
        assert removed.sum() == round(f * active.sum()) and (removed | ~previous).all()  # nested
        previous = removed
        extra = np.concatenate(plan.perturbed("extra", f))
        added = labels != extra
        assert not added[active].any() and added.sum() == round(f * inactive.sum())
        assert set(extra[added]) <= set(labels[active])  # added labels look like true ones
    assert [len(r) for r in plan.perturbed("extra", 0.5)] == [6, 6]
    with pytest.raises(ConfigError, match="unknown perturbation"):
        plan.perturbed("shuffled", 0.5)


def test_perturbed_batch_perturbs_calibration_too_and_starts_from_the_oracle():
    neuron = NeuronRecord(layer=0, neuron=0, max_activation=4.0, test=_records([[0, 1, 2, 4], [0, 0, 3, 0]]),
                          calibration=_records([[4, 0, 0, 1]]))
    batch = perturbed_batch(neuron, [0.0, 0.5, 1.0], seed=0)
    assert conditions([0.0, 0.5, 1.0]) == [("missing", 0.0), ("missing", 0.5), ("missing", 1.0), ("extra", 0.5),
                                           ("extra", 1.0)]
    assert batch[0].test == [[0, 2, 5, 10], [0, 0, 7, 0]]  # floor(10 a / max) over the split
    assert batch[2].test == [[0, 0, 0, 0], [0, 0, 0, 0]] and batch[2].calibration == [[0, 0, 0, 0]]
    assert all(v > 0 for v in batch[4].calibration[0])


def test_a_metric_passes_only_if_it_falls_in_both_directions():
    fractions = [0.0, 0.5, 1.0]
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, size=(40, 1))
    falling = np.hstack([base, base - 0.2, base - 0.4, base - 0.1, base - 0.3])  # conditions(): m0, m.5, m1, e.5, e1
    metric = Metric("x", 0.0)
    c = curves(falling, fractions, metric, STATS)
    assert c["missing"]["passes"] and c["extra"]["passes"]
    rising_extra = np.hstack([base, base - 0.2, base - 0.4, base + 0.1, base + 0.05])
    c = curves(rising_extra, fractions, metric, STATS)
    assert c["missing"]["passes"] and not c["extra"]["passes"] and not c["extra"]["monotone"]
    # lower is better (a KL): rising is the sound direction
    c = curves(-falling, fractions, Metric("kl_x", None, higher_is_better=False), STATS)
    assert c["missing"]["passes"] and c["extra"]["passes"]
    # an undefined value counts at the no-information value: NaN at f = 1 is a drop to 0
    undefined = falling.copy()
    undefined[:, 2] = np.nan
    assert curves(undefined, fractions, metric, STATS)["missing"]["means"][-1] == 0.0


# --- explanation perturbations (the scorers that judge the explanation) ------------------------

def test_label_perturbations_are_seeded_and_nested():
    labels, pool = ["he", "she", "it", "they", "He"], ["the", "of", "and", "to", "a", "in", "he"]
    plan = LabelPlan.draw(labels, pool, np.random.default_rng(0))
    assert plan == LabelPlan.draw(labels, pool, np.random.default_rng(0))  # seeded
    assert any(LabelPlan.draw(labels, pool, np.random.default_rng(s)) != plan for s in (1, 2, 3))
    assert [label_count(f, 5) for f in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)] == [0, 1, 2, 3, 4, 5]  # ceil: f > 0 moves one
    assert label_count(0.3, 10) == 3  # not 4 from 0.3 * 10 = 3.0000000000000004
    before_missing, before_extra = labels, labels
    for f in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        missing, extra = plan.perturbed("missing", f), plan.perturbed("extra", f)
        assert len(missing) == 5 - label_count(f, 5) and missing == [x for x in labels if x in missing]  # order kept
        assert set(missing) <= set(before_missing)  # nested: a larger f removes a superset
        added = [x for x in extra if x not in labels]
        assert len(added) == label_count(f, 5) and set(added) <= set(pool) - set(labels)
        assert [x for x in extra if x in labels] == labels  # every true label stays, in its order
        assert [x for x in before_extra if x in extra] == before_extra  # nested: earlier extras stay in place
        before_missing, before_extra = missing, extra
    assert plan.perturbed("missing", 1.0) == [] and len(plan.perturbed("extra", 1.0)) == 10
    with pytest.raises(ConfigError, match="unknown perturbation"):
        plan.perturbed("shuffled", 0.5)
    with pytest.raises(ConfigError, match="only 2 wrong labels to draw 5"):
        LabelPlan.draw(labels, ["the", "of", "he"], np.random.default_rng(0))


def test_explained_batch_writes_labels_as_the_top_tokens_baseline_and_none_as_the_empty_one():
    labeller = Labeller.from_baselines()
    plan = LabelPlan.draw(["tea", "coffee"], ["cat", "dog", "rain"], np.random.default_rng(0))
    batch = explained_batch(tea_neuron(), plan, labeller, [0.0, 0.5, 1.0])
    texts = [s.explanation for s in batch]  # conditions(): m0, m.5, m1, e.5, e1
    assert texts[0] == 'the tokens "tea", "coffee"'
    assert texts[2] == "nothing in particular"
    assert texts[4].count('"') == 8 and '"tea"' in texts[4] and '"coffee"' in texts[4]
    assert all(s.test == [] and s.neuron.test == tea_neuron().test for s in batch)


def test_a_judge_scorer_passes_or_fails_the_rule_on_hand_made_scores():
    """Explanation-space metrics take the same verdict as the simulation's: the embedding AUROC falls in
    both directions on both kinds (pass), the gap rises when wrong labels are added (fail), and the
    report says what each metric's perturbation acts on."""
    fractions = [0.0, 0.5, 1.0]
    base = np.random.default_rng(0).uniform(0.7, 0.9, size=(30, 1))
    falling = np.hstack([base, base - 0.1, base - 0.2, base - 0.05, base - 0.15])  # m0, m.5, m1, e.5, e1
    rising_extra = np.hstack([base, base - 0.1, base - 0.2, base + 0.05, base + 0.1])
    grids = {"planted": {"embedding.auroc": falling, "embedding.similarity_gap": falling},
             "set": {"embedding.auroc": falling[:20], "embedding.similarity_gap": rising_extra}}
    out = verdicts(grids, [(EMBEDDING, {})], fractions, STATS)
    auroc, gap = out["embedding.auroc"], out["embedding.similarity_gap"]
    assert auroc["passes"] and auroc["perturbs"] == "explanation" and auroc["headline"]
    assert not gap["passes"] and gap["kinds"]["planted"]["extra"]["passes"] and not gap["kinds"]["set"]["extra"]["passes"]
    assert gap["kinds"]["set"]["missing"]["passes"]
    table = verdict_table({"metrics": out})
    assert "| embedding | **auroc** (headline) |" in table and "no: extra on set neurons" in table
    constant = verdicts({"set": {"detection.failed_fraction": np.zeros((5, 5))}}, [(DETECTION, {})], fractions, STATS)
    assert "n/a: does not read the explanation" in verdict_table({"metrics": constant})


def test_detection_scores_each_perturbed_explanation_as_a_cell_does(monkeypatch):
    """Plumbing with a fake judge (yes for windows naming a word of the explanation): the true list
    finds the tea windows; no labels ("nothing in particular") finds none (AUROC 0.5); the wrong
    labels added at f = 1 ("cat", "dog", "rain", ...) make it say yes to inactive windows."""
    import harness.llm

    monkeypatch.setattr(harness.llm, "make_backend", lambda block: KeywordJudge())
    plan = LabelPlan.draw(["tea", "coffee"], ["cat", "dog", "rain", "birds"], np.random.default_rng(0))
    batch = explained_batch(tea_neuron(), plan, Labeller.from_baselines(), [0.0, 1.0])
    grid = score_grid([batch], 1, scorers_from({"detection": {}}), RunContext(), "fake judge")
    auroc = grid["detection.auroc"][0]  # conditions: m0, m1, e1
    # f = 0: the three tea/coffee windows say yes, and "The cat sat down" (the word "the"): 9/12 + 3 ties
    assert auroc[0] == pytest.approx(0.875) and auroc[1] == 0.5 and auroc[2] < auroc[0]


def test_difference_ci_is_an_unpaired_bootstrap_of_two_samples():
    a, b = np.linspace(0.5, 0.7, 30), np.linspace(0.0, 0.2, 50)
    d = difference_ci(a, b, 1000, 0)
    assert d["diff"] == pytest.approx(0.5) and d["ci95"][0] < 0.5 < d["ci95"][1] and d["ci95"][0] > 0.45
    assert (d["n_a"], d["n_b"]) == (30, 50)
    assert difference_ci([math.nan], b)["diff"] is None
    same = difference_ci(b, b, 1000, 0)
    assert same["ci95"][0] < 0 < same["ci95"][1]


@pytest.mark.heavy
def test_metric_sanity_end_to_end_on_a_tiny_set(lb_sets, tmp_path):  # noqa: F811
    """The whole check (planted neuron + the tiny set, correlation and threshold) writes its
    report; on the planted neuron the headline correlation falls under both perturbations, while on
    the tiny set (activations far below the 0-10 scale) the uncalibrated R² rises when true labels
    are removed: a metric that rewards predicting less, caught by the missing-labels test."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("check/metric_sanity", overrides=[f"neuron_set.path={lb_sets / 'tiny'}", "scorer=[correlation,threshold]",
                                                        "planted_draws=3", "fractions=[0.0,0.5,1.0]",
                                                        "stats.bootstrap_resamples=200"])
    results = run_check(cfg, tmp_path)
    corr = results["metrics"]["correlation.ev_correlation_score"]
    assert corr["headline"] and corr["kinds"]["planted"]["missing"]["passes"] and corr["kinds"]["planted"]["extra"]["passes"]
    uncal = results["metrics"]["correlation.rsquared_uncalibrated"]
    assert uncal["kinds"]["set"]["missing"]["means"][-1] > uncal["kinds"]["set"]["missing"]["means"][0]
    assert not uncal["kinds"]["set"]["missing"]["passes"] and not uncal["passes"]
    assert results["set"]["n_neurons"] == 8
    report = (tmp_path / "report.md").read_text()
    assert "| correlation | **ev_correlation_score** (headline) |" in report
    assert (tmp_path / "metric_sanity.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["fractions"] == [0.0, 0.5, 1.0]


@pytest.mark.heavy
def test_metric_sanity_runs_the_ablation_scorer_with_the_subjects_it_needs(lb_sets, tmp_path):  # noqa: F811
    """Ablation patches a subject: the planted neuron's edited tiny Llama, and the set's own subject
    for the set neurons, each handed over in the run's context (the default config runs it)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("check/metric_sanity", overrides=[f"neuron_set.path={lb_sets / 'tiny'}", "scorer=[ablation]",
                                                        "planted_draws=2", "fractions=[0.0,1.0]", "ablation.set_neurons=1",
                                                        "ablation.windows_per_kind={top: 1, random: 1, quantile: 0}",
                                                        "stats.bootstrap_resamples=200"])
    results = run_check(cfg, tmp_path)
    kinds = results["metrics"]["ablation.score"]["kinds"]
    assert set(kinds) >= {"planted", "set_ablation"}
    assert all(len(kinds[k]["missing"]["means"]) == 2 for k in ("planted", "set_ablation"))


@pytest.mark.slow
def test_metric_sanity_runs_the_embedding_scorer_on_perturbed_explanations(lb_sets, tmp_path):  # noqa: F811
    """MiniLM on the planted neuron (3 draws) and the tiny set at three fractions: the report has the
    embedding scorer's rows, its explanations were perturbed (the values move), and the planted
    neuron's true explanation is its pronoun class."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("check/metric_sanity", overrides=[f"neuron_set.path={lb_sets / 'tiny'}", "scorer=[embedding]",
                                                        "planted_draws=3", "fractions=[0.0,0.5,1.0]",
                                                        "stats.bootstrap_resamples=200"])
    results = run_check(cfg, tmp_path)
    assert results["planted"]["true_explanation"] == 'the tokens "he", "she", "it", "they", "He", "She", "It", "They"'
    assert set(results["metrics"]) == {"embedding.auroc", "embedding.similarity_gap"}
    auroc = results["metrics"]["embedding.auroc"]
    assert auroc["perturbs"] == "explanation" and auroc["reads_perturbed"] and set(auroc["kinds"]) == {"planted", "set"}
    planted = auroc["kinds"]["planted"]
    assert len(planted["missing"]["points"]) == 3 and planted["missing"]["points"][0]["n"] == 3
    assert planted["missing"]["means"][0] == planted["extra"]["means"][0]  # f = 0 is shared
    report = (tmp_path / "report.md").read_text()
    assert "| embedding | **auroc** (headline) |" in report and "| embedding | similarity_gap |" in report
    assert '"nothing in particular"' in report
    assert json.loads((tmp_path / "results.json").read_text())["metrics"]["embedding.auroc"]["passes"] == auroc["passes"]


# --- the board: trained vs random weights -------------------------------------------------------

def _as_control(entry: dict, set_name: str, name: str, scores=None) -> dict:
    e = copy.deepcopy(entry)
    e["name"], e["neuron_set"]["name"] = name, set_name
    if scores is not None:
        for n, v in zip(e["neurons"], scores):
            n["scores"] = {k: v for k in n["scores"]}
    return e


def test_board_shows_trained_vs_random_and_flags_what_random_weights_match(board):  # noqa: F811
    cfg = {**board["cfg"], "random_weights_controls": {"tiny": "tiny-random"}}
    top = lb.read_entry(board["paths"]["top-tokens"], cfg)
    empty = lb.read_entry(board["paths"]["empty"], cfg)
    assessed = [lb.Assessed(board["paths"]["top-tokens"], top, "verified"),
                lb.Assessed(board["paths"]["empty"], empty, "verified"),
                # top-tokens on the random control: every neuron undefined (→ the no-information value)
                lb.Assessed(board["paths"]["top-tokens"], _as_control(top, "tiny-random", "r-top", [None] * 8), "verified"),
                # empty on the random control: the same (no-information) scores as on the trained set
                lb.Assessed(board["paths"]["empty"], _as_control(empty, "tiny-random", "r-empty"), "verified")]
    rows = random_weight_rows(assessed, cfg)
    corr = {r["explainer"]: r for r in rows[("tiny", "tiny-random", "correlation")]}
    t = corr["baseline_top_tokens"]
    assert t["random_entry"] == "r-top" and t["random"] == 0.0
    assert t["trained"] == pytest.approx(top["summary"]["scores"]["correlation"]["mean"], abs=1e-9)
    assert t["diff"] == pytest.approx(t["trained"]) and t["flagged"] == (t["ci95"][0] <= 0)
    assert corr["baseline_empty"]["flagged"] and corr["baseline_empty"]["diff"] == 0.0
    md = render_markdown(assessed, cfg)
    assert "## Trained vs random weights" in md and "### tiny vs tiny-random — correlation" in md
    assert "⚠ not better than on random weights" in md
    data, _ = lb.page_data(assessed, cfg)
    assert {(r["explainer"], r["scorer"]) for r in data["random_weights"]} >= {("baseline_empty", "correlation")}
    # without a matching entry on the control set the row says so, and nothing is flagged
    rows = random_weight_rows(assessed[:2], cfg)
    assert all(r["random_entry"] is None and r["flagged"] is None for rs in rows.values() for r in rs)
    assert random_weight_rows(assessed, board["cfg"]) == {}  # no control configured: no comparison


def test_weight_baselines_read_the_subject_the_set_was_built_on():
    from omegaconf import OmegaConf

    from harness.cell import explainer_reads_the_sets_subject

    manifest = {"name": "smollm2-135m-random-brown-v1", "subject": {"name": "smollm2_135m_random"}}
    cfg = OmegaConf.create({"explainer": OmegaConf.load(CONF_DIR / "explainer" / "baseline_weight_in.yaml")})
    explainer_reads_the_sets_subject(cfg, manifest)
    assert cfg.explainer.subject == "smollm2_135m_random"  # null: the set's subject, recorded in the config
    cfg.explainer.subject = "smollm2_135m"  # the trained weights on the random model's neurons: refused
    with pytest.raises(ConfigError, match="set explainer.subject=smollm2_135m_random"):
        explainer_reads_the_sets_subject(cfg, manifest)
    plain = OmegaConf.create({"explainer": {"kind": "baseline_top_tokens", "n_tokens": 5}})
    explainer_reads_the_sets_subject(plain, manifest)  # reads no weights: untouched
    assert "subject" not in plain.explainer
