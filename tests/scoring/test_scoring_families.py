"""The threshold and ablation scoring rules: definitions against hand-computed values, the KL
arithmetic against a float64 reference on a real (tiny) model, the batched patch against
one-neuron patches, a *planted* neuron whose true explanation must beat distractors under all
three families, and one cell carrying all three scorers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.components import RunContext
from harness.build_set import build
from harness.cell import results_table, run_cell
from harness.corpus import load_corpus
from harness.errors import ConfigError
from harness.paths import CONF_DIR
from harness.planted import CLASS, EXPLANATIONS, PLANTED, plant, planted_neuron
from harness.records import ActivationRecord, NeuronRecord, load_set
from harness.scoring import SCORERS, Simulated, get_scorer, run_scorers
from harness.scoring.ablation import choose_windows, kl_from_logits, linear_calibration
from harness.scoring.threshold import auroc, balanced_accuracy, f1, fit_cut, threshold_scores, thresholds
from harness.simulate import TokenMatchSimulator
from harness.subject import patch_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def _rec(acts, kind="top", tokens=None, ids=None):
    return ActivationRecord(tokens=tokens or [f"t{i}" for i in range(len(acts))], activations=list(map(float, acts)),
                            kind=kind, token_ids=ids)


# --- threshold: definitions -------------------------------------------------------------------

def test_auroc_by_hand():
    labels = np.array([True, False, True, False, False])
    scores = np.array([0.9, 0.1, 0.4, 0.4, 0.2])
    # positives 0.9 and 0.4 against negatives 0.1, 0.4, 0.2: 0.9 wins 3; 0.4 wins 2 and ties 1 (½)
    assert auroc(labels, scores) == pytest.approx(5.5 / 6)
    assert auroc(labels, -scores) == pytest.approx(0.5 / 6)
    assert auroc(labels, np.zeros(5)) == 0.5  # a constant simulation is at chance
    assert math.isnan(auroc(np.zeros(5, bool), scores))  # one class empty


def test_balanced_accuracy_f1_and_fitted_cut_by_hand():
    labels = np.array([False, False, True, True, True])
    predicted = np.array([False, True, True, True, False])
    # TPR 2/3, TNR 1/2 → 7/12; F1 = 2·2 / (2·2 + 1 + 1) = 2/3
    assert balanced_accuracy(labels, predicted) == pytest.approx(7 / 12)
    assert f1(labels, predicted) == pytest.approx(2 / 3)
    assert math.isnan(f1(np.zeros(3, bool), np.zeros(3, bool)))
    assert math.isnan(balanced_accuracy(np.ones(3, bool), np.ones(3, bool)))
    # cut: midpoints of distinct values; 1 < cut < 2 separates perfectly → the midpoint 1.5
    assert fit_cut(np.array([False, False, True, True]), np.array([0.0, 1.0, 2.0, 3.0])) == 1.5
    # inverted simulation: nothing beats "all positive"/"all negative" (0.5) → the lowest such cut
    assert fit_cut(np.array([True, False]), np.array([0.0, 1.0])) == -1.0
    assert math.isnan(fit_cut(np.array([True, True]), np.array([0.0, 1.0])))


def test_threshold_scores_on_a_tiny_neuron():
    neuron = NeuronRecord(layer=0, neuron=0, max_activation=10.0,
                          calibration=[_rec([0, 1, 8, 9])],
                          test=[_rec([0, 6, 2, 10], "top"), _rec([0, 0, 1, 0], "random"), _rec([7, 0, 0, 0], "quantile")])
    cal_sims = [[0, 2, 8, 8]]  # calibration at 0.5·max: labels F F T T → cut = midpoint of 2 and 8 = 5
    test_sims = [[1, 9, 3, 6], [0, 0, 0, 0], None]  # the quantile window failed: left out
    out = threshold_scores(neuron, test_sims, cal_sims, max_fractions=[0.5], quantiles=[0.75])
    # test tokens (8): real [0,6,2,10,0,0,1,0], sims [1,9,3,6,0,0,0,0]; >5 positives: 6 and 10
    # AUROC: positive sims 9 and 6 beat all 6 negatives (max 3) → 1.0
    assert out["auroc_max50"] == 1.0
    # cut 5: predicted sims > 5 → [F,T,F,T,F,F,F,F] = labels → perfect
    assert out["balacc_max50"] == 1.0 and out["f1_max50"] == 1.0
    # q75 from the 4 calibration tokens (never test): sorted [0,1,8,9] → np.quantile 0.75 =
    # 8 + 0.25·(9−8) = 8.25; test positives (>8.25): only 10 (sim 6), which beats 6 of the 7
    # negatives' sims [1,9,3,0,0,0,0]; calibration labels at 8.25: F F F T, sims [0,2,8,8] → cuts
    # −1, 1, 5, 9 give balanced accuracy ½, ⅔, ⅚, ½ → cut 5; on test "sim > 5" flags 9 and 6:
    # TPR 1, TNR 6/7 → 13/14
    assert out["auroc_q75"] == pytest.approx(6 / 7) and out["balacc_q75"] == pytest.approx(13 / 14)
    assert list(out) == ["auroc_max50", "auroc_q75", "balacc_max50", "balacc_q75", "f1_max50", "f1_q75"]
    # no calibration positive at 0.95·max = 9.5 → no cut can be fitted → NaN; AUROC is still
    # defined: the one positive (10, sim 6) beats 6 of the 7 negatives (not the 6 simulated 9)
    high = threshold_scores(neuron, test_sims, cal_sims, max_fractions=[0.95], quantiles=[])
    assert high["auroc_max95"] == pytest.approx(6 / 7) and math.isnan(high["balacc_max95"]) and math.isnan(high["f1_max95"])


def test_quantile_threshold_comes_from_calibration_never_test():
    def neuron(test_acts, cal_acts):
        return NeuronRecord(layer=0, neuron=0, max_activation=10.0, calibration=[_rec(a) for a in cal_acts],
                            test=[_rec(a, k) for a, k in zip(test_acts, ("top", "random", "quantile"))])
    cal = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    base = thresholds(neuron([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]], cal), [0.5], [0.9, 0.5])
    # np.quantile over the 10 pooled calibration tokens 0..9: 0.9 → 8.1, 0.5 → 4.5
    assert base == pytest.approx({"max50": 5.0, "q90": 8.1, "q50": 4.5}, rel=1e-5)
    # changing only test activations (even scaling them up 100×) leaves every cut unchanged …
    other_test = thresholds(neuron([[100, 0, 300, 0, 0], [9, 9, 9, 9, 9], [50, 0, 0, 0, 0]], cal), [0.5], [0.9, 0.5])
    assert other_test == base
    # … while changing calibration moves the q cuts (not the max cut)
    moved = thresholds(neuron([[0] * 5, [1] * 5, [2] * 5], [[0, 10, 20, 30, 40], [50, 60, 70, 80, 90]]), [0.5], [0.9])
    assert moved == pytest.approx({"max50": 5.0, "q90": 81.0}, rel=1e-5)
    # no calibration token → no q cut → NaN
    empty = NeuronRecord(layer=0, neuron=0, max_activation=10.0, test=[_rec([0, 9])])
    assert math.isnan(thresholds(empty, [], [0.9])["q90"])


def test_threshold_is_registered_with_its_config():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["scorer=[correlation,threshold,ablation]"])
    assert list(cfg.scorer) == ["correlation", "threshold", "ablation"]
    assert 0.5 in cfg.scorer.threshold.max_fractions  # the headline auroc_max50 needs it
    assert SCORERS["threshold"].headline == "auroc_max50" and SCORERS["ablation"].headline == "score"
    assert SCORERS["ablation"].needs_context
    with pytest.raises(ConfigError, match="manifest"):
        get_scorer("ablation").score([Simulated(NeuronRecord(0, 0), [], [])], context=None)


# --- ablation: pieces -------------------------------------------------------------------------

def test_linear_calibration_and_window_choice():
    records = [_rec([1, 3, 5]), _rec([0, 0, 1], "random")]
    a, b = linear_calibration(records, [[0, 1, 2], None])
    assert (a, b) == pytest.approx((2.0, 1.0))  # exact fit 2·sim + 1
    assert linear_calibration(records, [[4, 4, 4], [4, 4, 4]]) == pytest.approx((0.0, 10 / 6))  # constant → mean
    recs = [_rec([0], "top", ids=[1]), _rec([0], "top", ids=[2]), _rec([0], "random", ids=[3]),
            _rec([0], "quantile", ids=[4])]
    chosen = choose_windows(recs, [None, [1.0], [2.0], [3.0]], {"top": 1, "random": 5})
    assert [r.token_ids for r, _ in chosen] == [[2], [3]]  # the failed top window skipped; no quantile
    with pytest.raises(ConfigError, match="token ids"):
        choose_windows([_rec([0])], [[0.0]], {"top": 1})


def test_kl_from_logits_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 5, 1000, generator=g) * 3
    for scale in (1e-3, 0.1, 2.0):
        patched = clean + scale * torch.randn(3, 5, 1000, generator=g) + 4.0  # + a shift that cancels
        lp = torch.log_softmax(clean.double(), -1)
        lq = torch.log_softmax(patched.double(), -1)
        want = (lp.exp() * (lp - lq)).sum(-1).sum(-1)
        got = kl_from_logits(clean, torch.softmax(clean, -1), patched)
        assert torch.allclose(got, want, rtol=1e-3, atol=0), (scale, got, want)
        # a clean distribution shared by every row, broadcast
        shared = kl_from_logits(clean[0], torch.softmax(clean[0], -1), patched)
        want0 = (lp[0].exp() * (lp[0] - lq)).sum(-1).sum(-1)
        assert torch.allclose(shared, want0, rtol=1e-3, atol=0)
    assert kl_from_logits(clean, torch.softmax(clean, -1), clean + 7.0).abs().max() < 1e-9  # shift: KL 0


def test_patch_rows_equals_one_patch_per_row(tiny_llama, sample_ids):
    values = [torch.linspace(-2, 3, sample_ids.shape[1]), torch.full((sample_ids.shape[1],), 5.0)]
    with torch.no_grad():
        with patch_rows(tiny_llama, [(0, 0, 3, values[0]), (1, 1, 10, values[1])]):
            together = tiny_llama.model(input_ids=sample_ids).logits
        with tiny_llama.patch(0, 3, values[0]):
            first = tiny_llama.model(input_ids=sample_ids[:1]).logits
        with tiny_llama.patch(1, 10, values[1]):
            second = tiny_llama.model(input_ids=sample_ids[1:]).logits
        clean = tiny_llama.model(input_ids=sample_ids).logits
    assert torch.allclose(together[0], first[0], atol=1e-5) and torch.allclose(together[1], second[0], atol=1e-5)
    assert not torch.allclose(together, clean, atol=1e-5)
    with patch_rows(tiny_llama, []):  # nothing patched: a clean run
        assert torch.allclose(tiny_llama.model(input_ids=sample_ids).logits, clean)
    with pytest.raises(ConfigError):
        with patch_rows(tiny_llama, [(0, 5, 0, values[0])]):
            pass


# --- the planted neuron -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tiny_llama):
    """The planted subject and a NeuronRecord for its planted neuron (harness/planted.py), recorded
    from Brown windows (explain from the first half of the documents, calibration/test from the second)."""
    subject = plant(tiny_llama)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        corpus = load_corpus(compose("build_set", overrides=["corpus.max_documents=24"]).corpus)
    return subject, planted_neuron(subject, [doc.text for doc in corpus.documents])


def test_planted_neuron_fires_on_its_class(planted):
    subject, neuron = planted
    tokens = [t for r in neuron.test for t in r.tokens]
    acts = np.array([a for r in neuron.test for a in r.activations])
    in_class = np.array([t in CLASS for t in tokens])
    assert in_class.sum() >= 20
    assert acts[in_class].min() > 10 and np.abs(acts[~in_class]).max() < 1e-6


def test_planted_neuron_true_explanation_beats_distractors(planted):
    subject, neuron = planted
    simulator = TokenMatchSimulator()
    names = list(EXPLANATIONS)
    batch = [Simulated(neuron, simulator.simulate(EXPLANATIONS[k], neuron.test),
                       simulator.simulate(EXPLANATIONS[k], neuron.calibration)) for k in names]
    scorers = [(get_scorer(name), {}) for name in ("correlation", "threshold", "ablation")]
    # every explanation of the same neuron in one batch: the ablation patches them in shared passes
    rows = dict(zip(names, run_scorers(scorers, batch, context=RunContext(given_subject=subject))))
    report = {k: {m: round(rows[k][m], 4) for m in ("correlation.ev_correlation_score", "threshold.auroc_max50",
                                                    "threshold.balacc_max50", "threshold.f1_max50",
                                                    "ablation.score", "ablation.score_vs_zero")} for k in names}
    print("\nplanted neuron, correct explanation vs distractors:\n" + json.dumps(report, indent=1))
    for metric in ("correlation.ev_correlation_score", "threshold.auroc_max50", "threshold.balacc_max50",
                   "threshold.f1_max50", "ablation.score", "ablation.score_vs_zero"):
        others = [rows[k][metric] for k in names[1:] if np.isfinite(rows[k][metric])]
        assert rows["true"][metric] > max(others, default=-np.inf) + 0.2, (metric, report)
    assert rows["true"]["correlation.ev_correlation_score"] > 0.9  # binary simulation of a graded activation
    assert rows["true"]["threshold.auroc_max50"] > 0.99
    assert rows["true"]["ablation.score"] > 0.9  # the simulation nearly restores the model
    assert rows["true"]["ablation.kl_mean"] > 1e-3  # and the neuron does matter


def test_ablation_kl_matches_a_direct_float64_computation(planted):
    """kl_mean and kl_zero of the scorer against Subject.patch and float64 log-softmaxes, and
    kl_simulated for a simulation equal to the true activations (≈ 0)."""
    subject, neuron = planted
    exact = [list(r.activations) for r in neuron.test]
    sim = Simulated(neuron, exact, [list(r.activations) for r in neuron.calibration])
    params = {"windows_per_kind": {"top": 2, "random": 1}, "batch_size": 3}
    out = get_scorer("ablation").score([sim], context=RunContext(given_subject=subject), **params)[0]
    chosen = choose_windows(neuron.test, exact, params["windows_per_kind"])
    ids = torch.tensor([r.token_ids for r, _ in chosen])
    layer, n = PLANTED

    def log_probs(value=None):
        with torch.no_grad():
            if value is None:
                return torch.log_softmax(subject.model(input_ids=ids).logits.double(), -1)
            with subject.patch(layer, n, value):
                return torch.log_softmax(subject.model(input_ids=ids).logits.double(), -1)

    clean = log_probs()
    def kl(lq):
        return float((clean.exp() * (clean - lq)).sum(-1).mean())
    kl_mean, kl_zero = kl(log_probs(neuron.mean)), kl(log_probs(0.0))
    assert out["kl_mean"] == pytest.approx(kl_mean, rel=1e-3)
    assert out["kl_zero"] == pytest.approx(kl_zero, rel=1e-3)
    assert out["score"] == pytest.approx(1 - out["kl_simulated"] / kl_mean, rel=1e-3)
    assert out["kl_simulated"] < 1e-4 * kl_mean and out["score"] > 0.999


# --- one cell, three scorers ------------------------------------------------------------------

SMALL_COUNTS = ["counts.explain_top=3", "counts.explain_random=1", "counts.calibration_top=2",
                "counts.calibration_random=2", "counts.test_top=3", "counts.test_random=2",
                "counts.test_quantile=1", "alive.min_windows=1", "alive.min_activation=0.0",
                "neurons_per_layer=2", "subject=tiny_llama", "corpus.max_documents=8", "sample_windows=32"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("sets") / "small"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        build(compose("build_set", overrides=SMALL_COUNTS + [f"output_dir={out}", "name=small"]))
    return out


def test_records_carry_token_ids(small_set, tiny_llama):
    neuron = load_set(small_set).neurons[0]
    record = neuron.test[0]
    assert len(record.token_ids) == len(record.tokens) == len(record.activations)
    assert [tiny_llama.tokenizer.decode([t]) for t in record.token_ids] == record.tokens
    again = tiny_llama.record(torch.tensor([record.token_ids]), [neuron.layer])[neuron.layer][0, :, neuron.neuron]
    assert np.allclose(again.numpy(), record.activations, atol=1e-5)


def test_cell_with_three_scorers(small_set, tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"neuron_set.path={small_set}", "scorer=[correlation,threshold,ablation]",
                                           "scorer.ablation.windows_per_kind.top=2",
                                           "scorer.ablation.windows_per_kind.random=1"])
    summary = run_cell(cfg, tmp_path)
    for name, headline in (("correlation", "ev_correlation_score"), ("threshold", "auroc_max50"), ("ablation", "score")):
        for block in ("scores", "floor", "ceiling"):
            assert summary[block][name]["metric"] == headline
        assert summary["scores"][name]["mean"] is not None
        lo, hi = summary["scores"][name]["ci95"]
        assert lo <= summary["scores"][name]["mean"] <= hi
    assert set(summary["scores"]["ablation"]["metrics"]) == {"score", "score_vs_zero", "kl_simulated", "kl_mean", "kl_zero"}
    # the ceiling (true activations, quantised) restores most of the model's behaviour
    assert summary["ceiling"]["ablation"]["mean"] > 0.5
    sig = summary["significance"]
    assert sig["q"] == 0.05 and 0 <= sig["n_significant"] <= sig["n_tested"] <= summary["n_neurons"]
    assert "floor" in sig
    table = results_table(summary)
    assert "| ablation | score (headline) |" in table and "BH-FDR" in table
