"""GELU-variant check and the fidelity guard: plumbing on a random-init GPT-2 (fast), numbers
against hand computations, and the real Gemma 3 270M (marked slow, still run in CI)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers.activations import ACT2FN

import harness.build_set as build_set
import harness.sets.setup as setup_mod
from harness.build_set import make_windows
from harness.corpus import load_corpus
from harness.errors import ConfigError, FidelityError
from harness.gelu_check import (QUANTILES, VARIANTS, AbsHistogram, get_variant, run_check, swap_activation,
                                topk_jaccard)
from harness.paths import CONF_DIR, REPO_ROOT
from harness.subject import Subject, fidelity_check, load_subject, subject_config


def _cfg(name, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


TINY = ["subject=tiny_gpt2", "corpus.max_documents=12", "max_windows=24", "alive.min_activation=0.0",
        "neurons_per_layer=4", "variants=[gelu,gelu_new,gelu_pytorch_tanh,quick_gelu]"]


@pytest.fixture(scope="module")
def gpt2_o1() -> Subject:
    """A random-init GPT-2 whose c_fc weights are scaled so pre-activations are O(1): there the
    erf and tanh GELUs differ by ~1e-4, far above float32 rounding (on the raw tiny model the
    pre-activations are ~0.1 and the difference drowns in rounding)."""
    subject = load_subject(subject_config("tiny_gpt2"))
    with torch.no_grad():
        for layer in range(subject.neurons.n_layers):
            subject.neurons.mlp(layer).c_fc.weight.mul_(25.0)
    return subject


@pytest.fixture(scope="module")
def tiny_results(gpt2_o1, tmp_path_factory):
    out = tmp_path_factory.mktemp("gelu")
    cfg = _cfg("check/gelu", *TINY)
    return cfg, run_check(cfg, out, subject=gpt2_o1), out


def _hand_deltas(subject: Subject, cfg, a: str, b: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer, |a(pre) − b(pre)| (× up for gated MLPs) in float64 from the layer's weights and
    its MLP input on the check's windows, with the activation formulas written out here; and
    beside it (|a(pre)| + |b(pre)|) × |up|, the magnitudes whose float32 rounding bounds how far
    the check's own float32 difference may be from the exact one."""
    formulas = {
        "gelu": lambda x: 0.5 * x * (1.0 + torch.special.erf(x / math.sqrt(2.0))),
        "gelu_new": lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    }
    corpus = load_corpus(cfg.corpus)
    win, _, _ = make_windows(corpus, subject.tokenizer, cfg.window, cfg.explain_fraction, cfg.seeds.pools,
                          cfg.max_windows)
    layers = list(range(subject.neurons.n_layers))
    inputs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [subject.neurons.mlp(layer).register_forward_pre_hook(
        lambda _m, args, layer=layer: inputs[layer].append(args[0].detach().double())) for layer in layers]
    try:
        for lo in range(0, len(win.ids), cfg.batch_size):
            subject.record(torch.from_numpy(win.ids[lo:lo + cfg.batch_size]), layers)
    finally:
        for h in handles:
            h.remove()
    deltas, magnitudes = [], []
    for layer in layers:
        x = torch.cat(inputs[layer])
        mlp = subject.neurons.mlp(layer)
        if subject.neurons.architecture == "gpt2":
            pre, up = x @ mlp.c_fc.weight.double() + mlp.c_fc.bias.double(), torch.ones(())
        else:
            pre, up = x @ mlp.gate_proj.weight.double().T, x @ mlp.up_proj.weight.double().T
        va, vb = formulas[a](pre), formulas[b](pre)
        deltas.append((va - vb).mul(up).abs().flatten().detach().numpy())
        magnitudes.append(((va.abs() + vb.abs()) * up.abs()).flatten().detach().numpy())
    return deltas, magnitudes


# --- Variants and swapping ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_compute_exactly_what_transformers_computes(name):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(VARIANTS[name].fn(x), ACT2FN[name](x))


def test_variants_differ_as_expected_by_hand():
    x = torch.tensor([-3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    phi = 0.5 * (1 + torch.special.erf(x / math.sqrt(2)))
    assert torch.allclose(VARIANTS["gelu"].fn(x), x * phi)
    assert torch.allclose(VARIANTS["quick_gelu"].fn(x), x / (1 + torch.exp(-1.702 * x)))
    # The tanh forms agree with each other to float rounding and differ from erf by < 5e-4.
    for name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        assert (VARIANTS[name].fn(x) - VARIANTS["gelu_new"].fn(x)).abs().max() < 1e-9
        assert 1e-5 < (VARIANTS[name].fn(x) - x * phi).abs().max() < 5e-4


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown GELU variant 'gelu_exact'.*quick_gelu"):
        get_variant("gelu_exact")


def test_swap_activation_changes_the_output_and_restores_the_model(gpt2_o1):
    ids = torch.arange(100, 116).reshape(2, 8)
    before = gpt2_o1.record(ids, [1])[1]
    originals = [gpt2_o1.neurons.mlp(i).act for i in range(2)]
    with pytest.raises(RuntimeError, match="inside"):
        with swap_activation(gpt2_o1, VARIANTS["quick_gelu"].fn):
            assert not torch.equal(gpt2_o1.record(ids, [1])[1], before)
            raise RuntimeError("inside")
    assert [gpt2_o1.neurons.mlp(i).act for i in range(2)] == originals
    assert torch.equal(gpt2_o1.record(ids, [1])[1], before)


# --- Histogram quantiles ----------------------------------------------------------------------

def test_histogram_quantiles_match_numpy_within_a_bin():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.zeros(1000), rng.lognormal(-6, 2, 200_000)])
    h = AbsHistogram(2)
    h.add(0, torch.from_numpy(values[:50_000]).float())
    h.add(1, torch.from_numpy(-values[50_000:]).float())  # signs do not matter
    s = h.summary()
    exact = values.astype(np.float32).astype(np.float64)
    for name, q in QUANTILES.items():
        assert s[name] == pytest.approx(np.quantile(exact, q), rel=5e-3)
    assert s["max"] == pytest.approx(exact.max()) and s["n"] == len(values)


def test_histogram_of_zeros_is_exactly_zero():
    h = AbsHistogram(1)
    h.add(0, torch.zeros(10, 3))
    assert all(v == 0 for k, v in h.summary(0).items() if k != "n")


def test_topk_jaccard():
    base = torch.tensor([[5.0, 1.0], [4.0, 2.0], [3.0, 3.0], [0.0, 4.0]])
    var = torch.tensor([[5.0, 4.0], [0.0, 3.0], [3.0, 2.0], [4.0, 1.0]])
    # neuron 0: {0,1} vs {0,3} → 1/3; neuron 1: {2,3} vs {0,1} → 0
    assert topk_jaccard(base, var, 2).tolist() == pytest.approx([1 / 3, 0.0])


# --- The check on the tiny GPT-2 ----------------------------------------------------------------

def test_own_activation_gives_exactly_zero(tiny_results):
    _, results, _ = tiny_results
    own = results["variants"]["gelu_new"]
    assert own["is_own"] and results["subject"]["activation_function"] == "gelu_new"
    for kind in ("local", "propagated"):
        assert {k: v for k, v in own["overall"][kind].items() if k != "n"} == dict.fromkeys(
            [*QUANTILES, "max", "mean"], 0.0)
    o = own["overall"]
    assert o["topk_jaccard"] == 1.0 and o["alive_flips"] == 0 and o["chosen_redrawn_same"] == o["chosen"] == 8
    score = own["score"]["correlation"]
    assert score["mean_abs_delta"] == 0.0 and score["spearman"] == 1.0 and score["n"] > 0


def test_erf_vs_tanh_local_delta_equals_a_hand_computation(tiny_results, gpt2_o1):
    cfg, results, _ = tiny_results
    hand, magnitudes = _hand_deltas(gpt2_o1, cfg, "gelu", "gelu_new")
    pooled = np.concatenate(hand)
    reported = results["variants"]["gelu"]["overall"]["local"]
    assert reported["n"] == len(pooled) == 24 * 64 * 2 * 128
    assert reported["median"] > 1e-5  # well above float32 rounding, so the comparison means something
    for name, q in QUANTILES.items():
        assert reported[name] == pytest.approx(np.quantile(pooled, q), rel=1e-2), name
    # The check subtracts two float32 activations of magnitude up to ~3 to get deltas of ~5e-4, so
    # each of its deltas may be off by a few float32 ulps of the activations (kernel- and
    # CPU-dependent: 0.14% at the maximum on an AMD EPYC). Bound every delta by 4 ulps of each
    # activation; the reported maximum must lie between the bounded maxima.
    slack = 4 * np.finfo(np.float32).eps * np.concatenate(magnitudes)
    assert (pooled - slack).max() <= reported["max"] <= (pooled + slack).max()
    assert slack[pooled.argmax()] < 0.01 * pooled.max()  # the bound is tight enough to mean something
    for layer, values in enumerate(hand):
        row = results["variants"]["gelu"]["per_layer"][layer]["local"]
        assert row["p99"] == pytest.approx(np.quantile(values, 0.99), rel=1e-2)


def test_first_layer_propagated_equals_local(tiny_results):
    """Layer 0's pre-activation does not depend on any MLP, so the whole-network swap changes
    layer 0 exactly as the local one does; later layers see the earlier layers' changes."""
    _, results, _ = tiny_results
    for name in ("gelu", "quick_gelu"):
        rows = results["variants"][name]["per_layer"]
        assert rows[0]["propagated"] == rows[0]["local"]
        assert rows[1]["propagated"] != rows[1]["local"]


def test_report_files_and_scores(tiny_results):
    _, results, out = tiny_results
    assert json.loads((out / "results.json").read_text())["variants"].keys() == results["variants"].keys()
    assert (out / "gelu_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| gelu_new (own) | local | 0 | 0 | 0 | 0 | 0 |" in report
    assert "| OpenAI, GPT-2 small (an optimized GELU instead of its own) | post-MLP | 0.009 | 0.0252 | 0.0839 | 0.174 |" in report
    assert "![Δ quantiles per layer per variant](gelu_check.png)" in report
    quick = results["variants"]["quick_gelu"]["score"]["correlation"]
    assert 0 < quick["mean_abs_delta"] < 0.1 and -1 <= quick["spearman"] <= 1


def test_check_refuses_a_non_gelu_subject(tmp_path):
    cfg = _cfg("check/gelu", "subject=tiny_llama")
    with pytest.raises(ConfigError, match="uses activation 'silu', not a GELU variant"):
        run_check(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def _gelu_check_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny model: one thread, as in conftest
    return subprocess.run([sys.executable, "-m", "harness.gelu_check", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)


@pytest.mark.heavy
def test_cli_writes_the_report_and_prints_the_table(tmp_path):
    proc = _gelu_check_cli(*TINY, "variants=[gelu,gelu_new]", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "| gelu_new (own) | propagated | 0 | 0 | 0 | 0 | 0 |" in proc.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"report.md", "gelu_check.png", "results.json"}


@pytest.mark.heavy
def test_cli_unknown_variant_fails_cleanly(tmp_path):
    proc = _gelu_check_cli(*TINY, "variants=[gelu,erf]", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert "ConfigError: unknown GELU variant 'erf'" in proc.stderr and "Traceback" not in proc.stderr


# --- The fidelity guard in set building -------------------------------------------------------

def test_fidelity_guard_stops_a_build_whose_model_computes_another_activation(tmp_path, monkeypatch):
    """tiny_gpt2's config says gelu_new, but its MLPs compute quick_gelu: the build must stop
    before writing, naming the layer and the size of the difference."""
    real_load = setup_mod.load_subject

    def load_wrong(cfg):
        subject = real_load(cfg)
        for layer in range(subject.neurons.n_layers):
            subject.neurons.mlp(layer).act = ACT2FN["quick_gelu"]
        assert subject.neurons.activation == "gelu_new"
        return subject

    monkeypatch.setattr(setup_mod, "load_subject", load_wrong)
    out = tmp_path / "wrong"
    cfg = _cfg("build_set", "subject=tiny_gpt2", "corpus.max_documents=12", f"output_dir={out}", "name=wrong",
               "sample_windows=48", "alive.min_windows=2", "alive.min_activation=0.0", "neurons_per_layer=4")
    with pytest.raises(FidelityError, match=r"layer 0: .*'gelu_new' by up to [0-9.e-]+ \(tolerance 0.0001\)"):
        build_set.build(cfg)
    assert not out.exists() and not out.with_name("wrong.partial").exists()
    assert list(tmp_path.iterdir()) == []


# --- The real Gemma 3 270M (GELU, gated) ------------------------------------------------------

GEMMA = ["subject=gemma3_270m", "max_windows=12", "batch_size=12", "variants=[gelu,gelu_pytorch_tanh]",
         "neurons_per_layer=2", "top_k=2", "alive.min_windows=1",
         "counts={explain_top: 2, explain_random: 1, test_top: 2, test_random: 1}"]


@pytest.fixture(scope="module")
def gemma() -> Subject:
    return load_subject(subject_config("gemma3_270m"))


@pytest.mark.slow
def test_gemma_check_on_real_windows(gemma, tmp_path):
    assert (gemma.neurons.architecture, gemma.neurons.activation) == ("gated", "gelu_pytorch_tanh")
    assert (gemma.neurons.n_layers, gemma.neurons.n_neurons) == (18, 2048)
    cfg = _cfg("check/gelu", *GEMMA)
    results = run_check(cfg, tmp_path, subject=gemma)
    own = results["variants"]["gelu_pytorch_tanh"]
    assert own["is_own"]
    assert own["overall"]["local"]["max"] == 0 and own["overall"]["propagated"]["max"] == 0
    assert own["score"]["correlation"]["mean_abs_delta"] == 0
    # erf GELU on this tanh-GELU model: the local Δ matches act(gate)·up written out by hand.
    hand = np.concatenate(_hand_deltas(gemma, cfg, "gelu", "gelu_new")[0])
    erf = results["variants"]["gelu"]["overall"]
    for name in ("median", "p90", "p99", "p99.9"):
        assert erf["local"][name] == pytest.approx(np.quantile(hand, QUANTILES[name]), rel=2e-2), name
    assert erf["propagated"]["p99"] >= erf["local"]["p99"] > 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "gelu_check.png").exists()


@pytest.mark.slow
def test_fidelity_guard_catches_erf_gelu_in_gemma(gemma):
    """OpenAI's GPT-2 error on the real model: recording a tanh-GELU model with the erf GELU."""
    ids = torch.tensor([gemma.tokenizer("The jury said it did find that many of Georgia's registration "
                                        "and election laws are outmoded", add_special_tokens=False).input_ids])
    layers = list(range(gemma.neurons.n_layers))
    assert fidelity_check(gemma, ids, layers, 1e-4) < 1e-4
    with swap_activation(gemma, VARIANTS["gelu"].fn):
        with pytest.raises(FidelityError, match=r"layer \d+: .*'gelu_pytorch_tanh' by up to"):
            fidelity_check(gemma, ids, layers, 1e-4)
    assert fidelity_check(gemma, ids, layers, 1e-4) < 1e-4  # restored


def test_scorer_parameters_reach_the_scores(gpt2_o1, tmp_path, monkeypatch):
    """The check scores with the scorers as configured, parameters and all (it used to rebuild
    them by name with none, so an override was silently ignored)."""
    import harness.gelu.scores as scores_mod

    seen = []
    real = scores_mod.score_neurons

    def spy(neurons, rows, simulated, simulator, scorers, *args, **kwargs):
        seen.append([(s.name, params) for s, params in scorers])
        return real(neurons, rows, simulated, simulator, scorers, *args, **kwargs)

    monkeypatch.setattr(scores_mod, "score_neurons", spy)
    cfg = _cfg("check/gelu", *TINY, "scorer=[correlation,threshold]", "scorer.threshold.max_fractions=[0.25,0.75]")
    results = run_check(cfg, tmp_path, subject=gpt2_o1)
    assert seen and all(dict(s)["threshold"]["max_fractions"] == [0.25, 0.75] for s in seen)
    # without 0.5 among the fractions the headline auroc_max50 is undefined on every neuron
    assert results["variants"]["quick_gelu"]["score"]["threshold"]["n"] == 0
