"""Connection weights against a brute-force, one-neuron-at-a-time computation written straight
from the definitions (float64, explicit diag matrices); the weight baselines; the CLI."""

import subprocess
import sys

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from baselines.connection_weights import ConnectionWeights, Top
from baselines.weight_tokens import WeightInExplainer, WeightOutExplainer
from harness.build_set import build
from harness.connections import report, write_all
from harness.errors import ConfigError
from harness.explain import make_explainer
from harness.records import NeuronRecord, load_set
from harness.simulate import TokenMatchSimulator
from harness.subject import load_subject, neuron_map_for, norm_gain, subject_config
from harness.paths import CONF_DIR


# --- Brute force, from the definitions --------------------------------------------------------

def _d(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double()


def brute_force(subject, layer: int, neuron: int) -> dict[str, dict[str, torch.Tensor]]:
    """Every weight of one neuron. Tokens: [V]; neurons: [n_layers, n_neurons], NaN where the
    layer is not up/downstream. Keys "weight" and, for gated MLPs, "gate" and "up"."""
    model, nm = subject.model, subject.neurons
    V = len(subject.tokenizer)
    L, N = nm.n_layers, nm.n_neurons
    if nm.architecture == "gpt2":
        wte = _d(model.transformer.wte.weight)[:V]
        h = model.transformer.h

        def ln2(la):
            return torch.diag(_d(h[la].ln_2.weight))

        def read(la):  # {name: [d, N]}
            return {"w": _d(h[la].mlp.c_fc.weight)}

        def write(la):  # [N, d]
            return _d(h[la].mlp.c_proj.weight)

        emb = unemb = wte
        final = torch.diag(_d(model.transformer.ln_f.weight))
    else:
        layers = model.model.layers

        def ln2(la):
            return torch.diag(_d(layers[la].post_attention_layernorm.weight))

        def read(la):
            mlp = layers[la].mlp
            return {"gate": _d(mlp.gate_proj.weight).T, "up": _d(mlp.up_proj.weight).T}

        def write(la):
            return _d(layers[la].mlp.down_proj.weight).T

        emb, unemb = _d(model.model.embed_tokens.weight)[:V], _d(model.lm_head.weight)[:V]
        final = torch.diag(_d(model.model.norm.weight))

    def combine(parts: dict[str, torch.Tensor], token: bool) -> dict[str, torch.Tensor]:
        if "w" in parts:
            return {"weight": parts["w"]}
        gate = parts["gate"].clamp(min=0) if token else parts["gate"]
        return {"weight": gate * parts["up"], **parts}

    out = {"input": combine({k: emb @ ln2(layer) @ w[:, neuron] for k, w in read(layer).items()}, True),
           "output": {"weight": write(layer)[neuron] @ final @ unemb.T}}
    up = {k: torch.full((L, N), float("nan"), dtype=torch.float64) for k in read(0)}
    down = {k: torch.full((L, N), float("nan"), dtype=torch.float64) for k in read(0)}
    for other in range(L):
        if other < layer:  # c_proj.w[n1, :] @ diag(ln_2.g of `layer`) @ c_fc.w[:, neuron], all n1
            for k, w in read(layer).items():
                up[k][other] = write(other) @ ln2(layer) @ w[:, neuron]
        elif other > layer:
            for k, w in read(other).items():
                down[k][other] = write(layer)[neuron] @ ln2(other) @ w
    out["upstream"], out["downstream"] = combine(up, False), combine(down, False)
    return out


def assert_matches(top: Top, row: int, brute: dict[str, torch.Tensor], magnitude: bool):
    """The returned connections carry their brute-force weights and are the brute-force top-k."""
    full = brute["weight"].flatten()
    ids = top.index[row] if top.layer is None else top.layer[row] * brute["weight"].shape[-1] + top.index[row]
    k = ids.numel()
    scale = full.nan_to_num().abs().max().item()
    tol = {"rtol": 1e-5, "atol": 1e-6 * scale}
    torch.testing.assert_close(top.weight[row].double(), full[ids], **tol)
    key = full.nan_to_num(nan=0.0).abs() if magnitude else full  # NaN: not up/downstream
    want = key.topk(k).values
    got = top.weight[row].double().abs() if magnitude else top.weight[row].double()
    torch.testing.assert_close(got, want, **tol)
    for name in ("gate", "up"):
        if name in brute:
            torch.testing.assert_close(getattr(top, name)[row].double(), brute[name].flatten()[ids], **tol)
        else:
            assert getattr(top, name) is None


def check_neurons(subject, weights: ConnectionWeights, picks: list[tuple[int, int]], k: int):
    for layer in sorted({la for la, _ in picks}):
        neurons = [n for la, n in picks if la == layer]
        tops = {"input": weights.input_tokens(layer, neurons, k), "output": weights.output_tokens(layer, neurons, k),
                "upstream": weights.upstream(layer, neurons, k), "downstream": weights.downstream(layer, neurons, k)}
        for row, neuron in enumerate(neurons):
            brute = brute_force(subject, layer, neuron)
            for kind, top in tops.items():
                assert top.neurons == neurons
                assert_matches(top, row, brute[kind], magnitude=kind in ("upstream", "downstream"))


# --- Random-init subjects (fast) --------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_matches_brute_force_on_random_init(name):
    subject = load_subject(subject_config(name))  # a fresh copy to edit
    # Random init leaves every norm gain at 1: randomise them so leaving one out would show.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in subject.model.modules():
            if "Norm" in type(module).__name__:
                module.weight.uniform_(0.2, 3.0, generator=gen)
    # An uneven chunk size, so the running top-k merges chunks of different sizes.
    weights = ConnectionWeights(subject, chunk=7000)
    n = subject.neurons.n_neurons
    check_neurons(subject, weights, [(0, 0), (0, n - 1), (1, 3), (1, n // 2)], k=12)
    # The whole layer at once gives the same rows as the neurons asked for one by one.
    every = weights.input_tokens(1, None, 5)
    one = weights.input_tokens(1, [3], 5)
    assert torch.equal(every.index[3], one.index[0])
    torch.testing.assert_close(every.weight[3], one.weight[0])


def test_neuron_connections_at_the_ends(tiny_gpt2):
    weights = ConnectionWeights(tiny_gpt2)
    assert weights.upstream(0, [1], 5).index.shape == (1, 0)
    assert weights.downstream(1, [1], 5).index.shape == (1, 0)
    with pytest.raises(ConfigError, match="neuron index"):
        weights.input_tokens(0, [tiny_gpt2.neurons.n_neurons])
    with pytest.raises(ConfigError, match="layer index"):
        weights.output_tokens(2)


def test_norm_gain_is_the_scale_each_norm_applies():
    """norm(x) = x / rms(x) · gain for zero-mean x (LayerNorm with zero bias; RMSNorm), Gemma's
    RMSNorm included (gain 1 + weight); Gemma 2 reads the MLP input from pre_feedforward_layernorm."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gemma = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gemma2", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    norms = [load_subject(subject_config("tiny_gpt2")).neurons.pre_mlp_norm(0),
             load_subject(subject_config("tiny_llama")).neurons.pre_mlp_norm(0)]
    gemma_map = neuron_map_for(gemma)
    assert gemma_map.pre_mlp_norm(0) is gemma.model.layers[0].pre_feedforward_layernorm
    norms.append(gemma_map.pre_mlp_norm(0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm in norms:
            d = norm.weight.shape[0]
            norm.weight.copy_(torch.rand(d, generator=gen) + 0.5)
            if getattr(norm, "bias", None) is not None:
                norm.bias.zero_()
            x = torch.randn(d, generator=gen)
            x -= x.mean()
            expected = x / x.square().mean().sqrt() * norm_gain(norm)
            torch.testing.assert_close(norm(x[None])[0], expected, rtol=1e-4, atol=1e-4)


def test_planted_neuron_names_its_token_first():
    """Neuron 5 of layer 1 reads along " river"'s embedding through a non-trivial ln_2 gain:
    c_fc[:, 5] = wte[river] / g, so its input weight for token t is wte[t] · wte[river]."""
    subject = load_subject(subject_config("tiny_gpt2"))  # a fresh copy to edit
    river = subject.tokenizer(" river", add_special_tokens=False).input_ids
    assert len(river) == 1
    block = subject.model.transformer.h[1]
    with torch.no_grad():
        gain = torch.empty(block.ln_2.weight.shape).uniform_(0.2, 3.0, generator=torch.Generator().manual_seed(0))
        block.ln_2.weight.copy_(gain)
        block.mlp.c_fc.weight[:, 5] = subject.model.transformer.wte.weight[river[0]] / gain
    explainer = WeightInExplainer(subject=subject, n_tokens=3)
    text = explainer.explain(NeuronRecord(layer=1, neuron=5)).text
    assert text.startswith('fires on the tokens "river", ')
    assert len(TokenMatchSimulator().named_tokens(text)) == 3


def test_explainers_from_config_and_registry():
    empty = make_explainer({"kind": "baseline_empty", "text": "nothing in particular"})
    assert empty.explain(NeuronRecord(0, 0)).text == "nothing in particular"
    out = make_explainer({"kind": "baseline_weight_out", "subject": "tiny_llama", "n_tokens": 4})
    text = out.explain(NeuronRecord(1, 7)).text
    assert text.startswith("comes before and promotes the tokens \"")
    named = TokenMatchSimulator().named_tokens(text)
    top = out.weights.output_tokens(1, [7], 40)  # the named tokens are the top ones, in order
    decoded = [out.weights.subject.tokenizer.decode([t]).strip().lower() for t in top.index[0].tolist()]
    assert named <= set(decoded) and len(named) == 4


# --- The CLI ----------------------------------------------------------------------------------

def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("connections", overrides=list(overrides))


@pytest.mark.heavy
def test_cli_report_and_bad_indices(tmp_path):
    text = report(_cfg("subject=tiny_llama", "layer=1", "neuron=3", "k=4"))
    assert "top input tokens" in text and "strongest upstream neurons" in text and "L0/N" in text
    proc = subprocess.run([sys.executable, "-m", "harness.connections", "subject=tiny_gpt2", "layer=2", "neuron=0"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "layer index [2] out of range" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ConfigError, match=r"neuron index \[128\] out of range"):
        report(_cfg("subject=tiny_gpt2", "layer=0", "neuron=128"))
    with pytest.raises(ConfigError, match="pass layer=L neuron=N"):
        report(_cfg("subject=tiny_gpt2"))


def test_cli_all_writes_every_neuron(tmp_path):
    out = write_all(_cfg("subject=tiny_llama", "all=true", f"out={tmp_path / 'all.parquet'}", "k=3"))
    table = pd.read_parquet(out)
    assert len(table) == 2 * 64
    row = table.set_index(["layer", "neuron"]).loc[(1, 5)]
    assert len(row["input_tokens"]) == 3 and len(row["upstream_neurons"]) == 3
    assert len(row["downstream_neurons"]) == 0 and list(row["upstream_layers"]) == [0, 0, 0]
    assert {"input_gate", "input_up", "output_weights", "downstream_up"} <= set(table.columns)


@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_cli_all_on_a_set_keeps_its_order_and_checks_its_subject(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("build_set", overrides=[
            "subject=tiny_gpt2", "corpus.max_documents=12", f"output_dir={tmp_path / 'tiny'}", "name=tiny",
            "sample_windows=48", "alive.min_windows=2", "alive.min_activation=0.0", "neurons_per_layer=3"])
    build(cfg)
    out = write_all(_cfg("subject=tiny_gpt2", "all=true", f"set={tmp_path / 'tiny'}", f"out={tmp_path / 's.parquet'}"))
    table = pd.read_parquet(out)
    order = [(n.layer, n.neuron) for n in load_set(tmp_path / "tiny").neurons]
    assert list(zip(table["layer"], table["neuron"])) == order
    assert "input_gate" not in table.columns  # GPT-2: one read weight
    with pytest.raises(ConfigError, match="built on subject tiny_gpt2"):
        write_all(_cfg("subject=tiny_llama", "all=true", f"set={tmp_path / 'tiny'}", f"out={tmp_path / 'x.parquet'}"))


# --- The real SmolLM2 (slow; `smollm2` is the session-wide fixture of conftest.py) ---------------

@pytest.mark.slow
def test_matches_brute_force_on_smollm2(smollm2):
    weights = ConnectionWeights(smollm2, chunk=10000)
    check_neurons(smollm2, weights, [(0, 7), (0, 1200), (14, 500), (29, 1535)], k=10)


@pytest.mark.slow
def test_weight_explainers_on_smollm2_feed_token_match(smollm2):
    sim = TokenMatchSimulator()
    for cls, prefix in [(WeightInExplainer, "fires on the tokens"), (WeightOutExplainer, "comes before")]:
        explainer = cls(subject=smollm2)
        for layer, neuron in [(2, 100), (20, 1000)]:
            text = explainer.explain(NeuronRecord(layer, neuron)).text
            assert text.startswith(prefix)
            assert len(sim.named_tokens(text)) == 5  # quoted, distinct, what token_match reads
