"""Model-corruption experiments: which decoder layers does the subject need, and for what?

A corruption is a new order of the subject's decoder layers, as original indices (repeats allowed):
`none`, `skip_last` (n), `skip_first` (n), `skip` (a list, or a half-open range start..stop),
`repeat` (a layer run `times` times in a row) and `permute` (an explicit order of a contiguous
block, or a seeded shuffle of the block start..stop). `corrupted()` swaps the model's own layer
list for that order, and restores it afterwards. Configs (`conf/corruption/`) and an agent's JSON
actions both go through `corruption_spec`: a kind is a `corruption` component (harness/components.py)
whose params class types its parameters, and whose order function checks them against the subject's
layers (indices in range, bounded counts).

Measures, each against the clean model on the same inputs (`measure`):
- loss (nats/token) on held-out Brown windows of the scoring pool (the frozen sets' split rule),
  the paired loss change and KL(clean ‖ corrupted) of next-token distributions, each with a
  seeded bootstrap 95% CI over windows;
- per prompt, the next-token readout: top tokens with probabilities, the tokens that gained and
  lost the most probability, and the rank and probability of the clean top-1 token;
- per prompt, greedy continuations of the clean and the corrupted model.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from harness.build_set import make_windows
from harness.components import CORRUPTIONS
from harness.corpus import load_corpus
from harness.errors import ConfigError
from harness.scoring.ablation import kl_from_logits
from harness.scoring.stats import bootstrap_ci
from harness.subject import Subject
from harness.validation import option_problems

log = logging.getLogger(__name__)

__all__ = ["MEASURE_OPTIONS", "Corruption", "Probe", "check_measure", "corrupted", "corruption_spec", "make_probe",
           "measure", "schema_text"]

MAX_REPEAT = 8  # a layer run at most this many times in a row
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Corruption:
    kind: str
    params: dict[str, Any]  # every parameter of the kind, defaults filled in
    order: tuple[int, ...]  # original layer indices, in the order the corrupted model runs them

    @property
    def label(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items() if v is not None)
        return f"{self.kind}({shown})" if shown else self.kind


def _check_layers(kind: str, name: str, layers: list[int], n_layers: int) -> None:
    if len(layers) > n_layers:
        raise ConfigError(f"corruption {kind}: {name} has {len(layers)} entries; at most {n_layers} make sense")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise ConfigError(f"corruption {kind}: {name} has layer index {bad} out of range: the subject has "
                          f"layers 0..{n_layers - 1}")


def _span(kind: str, start: int | None, stop: int | None, n_layers: int) -> tuple[int, int]:
    start, stop = (0 if start is None else start), (n_layers if stop is None else stop)
    if not 0 <= start < stop <= n_layers:
        raise ConfigError(f"corruption {kind}: start={start}, stop={stop} must satisfy 0 <= start < stop <= "
                          f"{n_layers} (a half-open range of layers)")
    return start, stop


# Each kind's order of layers for a subject of `n_layers` layers, from its parameters (their types
# checked by its params class in harness/params.py): the `corruption` components' targets.

def none_order(n_layers: int) -> list[int]:
    return list(range(n_layers))


def _skip_count(kind: str, n: int, n_layers: int) -> None:
    if not 0 <= n <= n_layers:
        raise ConfigError(f"corruption {kind}: n={n} must be in 0..{n_layers} (the subject has {n_layers} layers)")


def skip_last_order(n_layers: int, n: int) -> list[int]:
    _skip_count("skip_last", n, n_layers)
    return list(range(n_layers - n))


def skip_first_order(n_layers: int, n: int) -> list[int]:
    _skip_count("skip_first", n, n_layers)
    return list(range(n, n_layers))


def skip_order(n_layers: int, layers: list[int] | None, start: int | None, stop: int | None) -> list[int]:
    if (layers is None) == (start is None and stop is None):
        raise ConfigError("corruption skip: give either `layers` (a list) or `start`/`stop` (a range), not both "
                          "and not neither")
    if layers is not None:
        _check_layers("skip", "layers", layers, n_layers)
        if len(set(layers)) != len(layers):
            raise ConfigError(f"corruption skip: layers {layers} repeat an index")
        skipped = set(layers)
    else:
        skipped = set(range(*_span("skip", start, stop, n_layers)))
    return [i for i in range(n_layers) if i not in skipped]


def repeat_order(n_layers: int, layer: int, times: int) -> list[int]:
    _check_layers("repeat", "layer", [layer], n_layers)
    if not 1 <= times <= MAX_REPEAT:
        raise ConfigError(f"corruption repeat: times={times} must be in 1..{MAX_REPEAT}")
    return list(range(layer)) + [layer] * times + list(range(layer + 1, n_layers))


def permute_order(n_layers: int, order: list[int] | None, start: int | None, stop: int | None,
                  seed: int) -> list[int]:
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"corruption permute: seed={seed} must be in 0..{MAX_SEED}")
    if order is not None:
        if start is not None or stop is not None:
            raise ConfigError("corruption permute: give `order` or `start`/`stop` (a seeded random order), not both")
        block = order
        _check_layers("permute", "order", block, n_layers)
        if len(block) < 2 or sorted(block) != list(range(min(block), max(block) + 1)):
            raise ConfigError(f"corruption permute: order {block} must be a rearrangement of a contiguous "
                              "block of at least 2 layers (e.g. [12, 11, 10])")
        start, stop = min(block), max(block) + 1
    else:
        start, stop = _span("permute", start, stop, n_layers)
        block = (start + np.random.default_rng(seed).permutation(stop - start)).tolist()
    return list(range(start)) + block + list(range(stop, n_layers))


def corruption_spec(raw: Mapping[str, Any], n_layers: int) -> Corruption:
    """Validate a corruption (a `conf/corruption/` node or an agent's JSON) against its kind's
    parameters (the `corruption` component named by `kind`) and a subject of `n_layers` layers; a
    ConfigError names what is wrong."""
    if OmegaConf.is_config(raw):
        raw = OmegaConf.to_container(raw, resolve=True)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a corruption must be an object with a `kind`, got {type(raw).__name__}")
    kind = CORRUPTIONS.component(raw.get("kind"))
    params = kind.parse({k: v for k, v in raw.items() if k != "kind"}, "corruption")
    return Corruption(kind.name, params, tuple(kind.resolve()(n_layers, **params)))


def schema_text() -> str:
    """The corruption kinds and their parameters, for a person or an agent."""
    def shown(f: Any, defaults: dict[str, Any]) -> str:
        text = f"{f.name}: {f.metadata['rule'][1]}"
        if f.name not in defaults:
            return text + " (required)"
        return text + (f" (default {defaults[f.name]})" if defaults[f.name] is not None else "")

    lines = []
    for name in CORRUPTIONS:
        kind = CORRUPTIONS.component(name)
        params = ", ".join(shown(f, kind.defaults()) for f in fields(kind.params))
        lines.append(f"- {name}" + (f": {params}" if params else ""))
    return "\n".join(lines)


# --- Applying a corruption --------------------------------------------------------------------

def _layer_list_owner(subject: Subject) -> tuple[nn.Module, str]:
    """The module holding the decoder's layer list (GPT-2 `transformer.h`, Llama/Gemma `model.layers`)
    and the attribute's name: found as the ModuleList holding exactly the neuron map's layers."""
    layers = subject.neurons.layers
    for name, module in subject.model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == len(layers) and all(
                a is b for a, b in zip(module, layers)):
            parent, _, attr = name.rpartition(".")
            return subject.model.get_submodule(parent), attr
    raise ConfigError(f"subject {subject.name}: its decoder layers are not one ModuleList; cannot corrupt it")


@contextlib.contextmanager
def corrupted(subject: Subject, order: tuple[int, ...] | list[int]) -> Iterator[None]:
    """Within the block the subject runs its decoder layers in `order` (original indices). What
    the decoder keys by layer position follows: `num_hidden_layers` (Llama and Gemma run
    `layers[:num_hidden_layers]`) and Gemma's per-position `layer_types`. Restored on exit. Run
    the model with use_cache=False inside: a repeated layer would share its key/value cache slot."""
    owner, attr = _layer_list_owner(subject)
    original = getattr(owner, attr)
    config = owner.config
    saved = {k: getattr(config, k) for k in ("num_hidden_layers", "layer_types") if hasattr(config, k)}
    try:
        setattr(owner, attr, nn.ModuleList([original[i] for i in order]))
        config.num_hidden_layers = len(order)
        if isinstance(saved.get("layer_types"), list) and len(saved["layer_types"]) == len(original):
            config.layer_types = [saved["layer_types"][i] for i in order]
        yield
    finally:
        setattr(owner, attr, original)
        for key, value in saved.items():
            setattr(config, key, value)


# --- Inputs -----------------------------------------------------------------------------------

@dataclass
class Probe:
    """What every corruption is measured on: held-out windows and prompts (token ids)."""

    windows: torch.Tensor  # [n, window] int64
    window_ids: list[str]  # "doc_id@start"
    prompts: list[str]
    prompt_ids: list[list[int]]


# The options `measure` (conf/corruption_measures/) must have; their rules are harness.validation.RULES.
MEASURE_OPTIONS = tuple(f"measure.{name}" for name in (
    "n_windows", "window", "explain_fraction", "batch_size", "top_k", "max_new_tokens", "bootstrap_resamples",
    "seeds.pools", "seeds.windows"))


def check_measure(measure: Any) -> dict[str, Any]:
    m = OmegaConf.to_container(measure, resolve=True) if OmegaConf.is_config(measure) else dict(measure)
    problems = option_problems({"measure": m}, required=MEASURE_OPTIONS)
    prompts = m.get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        problems.append("measure.prompts must be a non-empty list of non-empty strings")
    if problems:
        raise ConfigError("invalid corruption measure options: " + "; ".join(problems))
    return m


def make_probe(subject: Subject, corpus_cfg: Any, measure: dict[str, Any]) -> Probe:
    """`n_windows` windows drawn (seeded) from the scoring pool: the documents the frozen sets hold
    out for scoring, split by the same rule (`explain_fraction`, `seeds.pools`). A window, or a
    prompt with its continuation, longer than the subject's context is a ConfigError."""
    tok = subject.tokenizer
    prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in measure["prompts"]]
    context = getattr(subject.model.config, "max_position_embeddings", None)
    longest = max(len(ids) for ids in prompt_ids)
    if context and measure["window"] > context:
        raise ConfigError(f"measure.window={measure['window']} is longer than the context of {subject.name} "
                          f"({context} tokens); use a window of at most {context}")
    if context and longest + measure["max_new_tokens"] > context:
        raise ConfigError(f"measure.max_new_tokens={measure['max_new_tokens']}: the longest prompt ({longest} "
                          f"tokens) and its continuation exceed the context of {subject.name} ({context} tokens); "
                          "use fewer new tokens or shorter prompts")
    corpus = load_corpus(corpus_cfg)
    win, _, _ = make_windows(corpus, subject.tokenizer, measure["window"], measure["explain_fraction"],
                             measure["seeds"]["pools"], max_windows=None)
    scoring = np.flatnonzero(win.pool == 1)
    n = min(measure["n_windows"], len(scoring))
    if n < measure["n_windows"]:
        log.warning("the scoring pool has only %d windows of %d tokens; using all of them", n, measure["window"])
    pick = np.sort(np.random.default_rng(measure["seeds"]["windows"]).choice(scoring, size=n, replace=False))
    return Probe(windows=torch.from_numpy(win.ids[pick]),
                 window_ids=[f"{corpus.documents[win.doc[w]].doc_id}@{int(win.start[w])}" for w in pick],
                 prompts=list(measure["prompts"]), prompt_ids=prompt_ids)


# --- Measures ---------------------------------------------------------------------------------

def _logits(subject: Subject, ids: torch.Tensor) -> torch.Tensor:
    return subject.model(input_ids=ids.to(subject.device), use_cache=False).logits.float().cpu()


def _loss_and_kl(subject: Subject, order, probe: Probe, batch_size: int) -> dict[str, np.ndarray]:
    """Per window: clean and corrupted loss (nats/token over next-token predictions) and the mean
    KL(clean ‖ corrupted) per position."""
    out = {"loss_clean": [], "loss": [], "kl": []}
    n_pos = probe.windows.shape[1] - 1
    for lo in tqdm(range(0, len(probe.windows), batch_size), desc="loss + KL", unit="batch"):
        ids = probe.windows[lo:lo + batch_size]
        clean = _logits(subject, ids)[:, :-1]
        with corrupted(subject, order):
            bad = _logits(subject, ids)[:, :-1]
        targets = ids[:, 1:]
        for key, logits in (("loss_clean", clean), ("loss", bad)):
            out[key] += F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1).tolist()
        out["kl"] += (kl_from_logits(clean, clean.softmax(-1), bad) / n_pos).tolist()
    return {k: np.asarray(v) for k, v in out.items()}


def _next_token(subject: Subject, ids: list[int]) -> torch.Tensor:
    return _logits(subject, torch.tensor([ids]))[0, -1].softmax(-1)


def _greedy(subject: Subject, ids: list[int], max_new_tokens: int) -> str:
    tok = subject.tokenizer
    out = subject.model.generate(torch.tensor([ids], device=subject.device), max_new_tokens=max_new_tokens,
                                 do_sample=False, use_cache=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def _top(subject: Subject, values: torch.Tensor, k: int, sign: int = 1) -> list[list[Any]]:
    """The k largest entries of sign·values as [token, value] pairs."""
    best = (sign * values).topk(k)
    return [[subject.tokenizer.decode([int(i)]), round(float(values[i]), 6)] for i in best.indices]


@torch.no_grad()
def measure(subject: Subject, corruption: Corruption, probe: Probe, m: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measure of one corruption against the clean model: one row per measure (and prompt)."""
    base = {"subject": subject.name, "corruption": corruption.label, "kind": corruption.kind, "params": json.dumps(corruption.params),
            "order": json.dumps(list(corruption.order)), "layers_run": len(corruption.order),
            "n_layers": subject.neurons.n_layers}
    rows = []

    def row(measure_name: str, value=None, ci=(None, None), prompt=None, rank=None, text=None):
        rows.append({**base, "measure": measure_name, "prompt": prompt, "value": value, "ci_lo": ci[0],
                     "ci_hi": ci[1], "rank": rank, "text": text})

    per_window = _loss_and_kl(subject, corruption.order, probe, m["batch_size"])
    per_window["loss_delta"] = per_window["loss"] - per_window["loss_clean"]
    for key in ("loss_clean", "loss", "loss_delta", "kl"):
        s = bootstrap_ci(per_window[key], m["bootstrap_resamples"], m["seeds"]["windows"])
        row(key, s["mean"], tuple(s["ci95"]))
    k = m["top_k"]
    for prompt, ids in tqdm(list(zip(probe.prompts, probe.prompt_ids)), desc="prompts", unit="prompt"):
        clean = _next_token(subject, ids)
        clean_text = _greedy(subject, ids, m["max_new_tokens"])
        with corrupted(subject, corruption.order):
            bad = _next_token(subject, ids)
            bad_text = _greedy(subject, ids, m["max_new_tokens"])
        top1 = int(clean.argmax())
        rank = int((bad > bad[top1]).sum()) + 1  # 1: still the top token
        readout = {"clean_top1": subject.tokenizer.decode([top1]), "clean_top": _top(subject, clean, k),
                   "top": _top(subject, bad, k), "gained": _top(subject, bad - clean, k),
                   "lost": _top(subject, bad - clean, k, sign=-1)}
        row("readout", float(bad[top1]), prompt=prompt, rank=rank, text=json.dumps(readout, ensure_ascii=False))
        row("continuation_clean", prompt=prompt, text=clean_text)
        row("continuation", prompt=prompt, text=bad_text)
    return rows
