"""GELU-variant check: `python -m harness.gelu_check subject=gemma3_270m [overrides]`.

OpenAI found, after publishing, that its GPT-2 neuron datasets had been recorded with an optimized
GELU implementation instead of GPT-2's own and reported the resulting post-MLP activation error for
GPT-2 small (median 0.0090, p90 0.0252, p99 0.0839, p99.9 0.1736): the error of neuron activations
from whole-network inference, so comparable with *propagated* below. This check measures that class of error
for a GELU subject: the same Brown windows are run with the model's own activation function and
with each variant swapped in, and it reports, per layer and overall:

- |Δ activation| quantiles (median, p90, p99, p99.9, max) over every token × neuron:
  *local* — the variant applied to the same pre-activation (`variant(pre)`, or
  `variant(gate) * up` for gated MLPs), against the hooked activation of the model's own run;
  *propagated* — the whole network run with the variant in every layer, against the same;
- top-k window stability: Jaccard overlap of each alive neuron's top-k windows (by window
  maximum) between the two propagated runs;
- neuron-choice stability: the frozen-set rule (a seeded uniform draw of `neurons_per_layer`
  per layer among neurons that are not dead) applied to these windows: how many neurons change
  alive/dead status, how many of the chosen neurons are still alive under the variant, and how
  many the same seeded draw picks again on the variant's alive neurons;
- score change: each chosen neuron gets explain/test records from disjoint document pools
  (top + random windows, baseline run); it is explained (explainer group), simulated on its
  test records (simulator group) and scored (scorer group) once on the baseline activations and
  once on the test split re-recorded under the variant (same windows, activations of the
  propagated variant run); reported as mean |Δscore| and the Spearman rank correlation of the
  neurons' scores.

Quantiles come from a per-layer histogram of |Δ| in log-spaced bins (memory independent of the
number of windows; `histogram.per_decade` bins per decade, so a quantile is exact to within a
relative 10**(1/per_decade) - 1, 0.46 % at 500), plus an exact count of zeros and the exact max.

Outputs in the Hydra run directory: `report.md`, `gelu_check.png` (Δ quantiles per layer per
variant) and `results.json` (every number and the resolved config); the overall table is printed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from harness import __version__
from harness.build_set import POOLS, make_windows
from harness.cell import score_neurons
from harness.cli import exit_on_harness_error
from harness.corpus import load_corpus
from harness.errors import ConfigError, HarnessError
from harness.explain import make_explainer
from harness.formatting import fmt
from harness.records import ActivationRecord, NeuronRecord
from harness.rundir import write_atomic, write_figure, write_json
from harness.scoring import Simulated, scorers_from
from harness.simulate import make_simulator
from harness.subject import Subject, fidelity_check, gelu_fast, gelu_tanh, load_subject, quick_gelu

log = logging.getLogger(__name__)

QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
# OpenAI's note on its GPT-2 small datasets (recorded with an optimized GELU instead of GPT-2's own).
OPENAI_GPT2_SMALL = {"median": 0.0090, "p90": 0.0252, "p99": 0.0839, "p99.9": 0.1736}


# --- Variants ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str  # transformers' activation name, so a subject's own activation is one of these
    fn: Callable[[torch.Tensor], torch.Tensor]
    formula: str


def _gelu_pytorch_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# Each computes exactly what transformers' ACT2FN entry of the same name computes (bit for bit;
# tests check this), so swapping in the subject's own activation changes nothing.
VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("gelu", F.gelu, "exact GELU x·Φ(x) = 0.5x(1+erf(x/√2)) (torch.nn.functional.gelu)"),
    Variant("gelu_new", gelu_tanh, "tanh approximation, GPT-2's own `gelu_new`: "
            "0.5x(1+tanh(√(2/π)(x+0.044715x³)))"),
    Variant("gelu_pytorch_tanh", _gelu_pytorch_tanh, "PyTorch's tanh GELU, "
            "torch.nn.functional.gelu(x, approximate='tanh') (Gemma's `gelu_pytorch_tanh`)"),
    Variant("gelu_fast", gelu_fast, "the \"fast\" form 0.5x(1+tanh(0.7978845608·x(1+0.044715x²)))"),
    Variant("quick_gelu", quick_gelu, "x·sigmoid(1.702x)"),
]}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ConfigError(f"unknown GELU variant {name!r}; known: {sorted(VARIANTS)}")
    return VARIANTS[name]


class _Activation(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


ACT_ATTR = {"gpt2": "act", "gated": "act_fn"}  # the MLP's activation module


def _act_attr(subject: Subject) -> str:
    attr = ACT_ATTR[subject.neurons.architecture]
    if not all(isinstance(getattr(subject.neurons.mlp(i), attr, None), nn.Module)
               for i in range(subject.neurons.n_layers)):
        raise ConfigError(f"subject {subject.name}: its MLPs have no activation module `{attr}`, so a "
                          "variant cannot be swapped in; the GELU check supports GPT-2 and Gemma-style MLPs.")
    return attr


@contextlib.contextmanager
def swap_activation(subject: Subject, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block every MLP of the subject computes `fn` instead of its own activation."""
    attr = _act_attr(subject)
    mlps = [subject.neurons.mlp(i) for i in range(subject.neurons.n_layers)]
    originals = [getattr(mlp, attr) for mlp in mlps]
    try:
        for mlp in mlps:
            setattr(mlp, attr, _Activation(fn))
        yield
    finally:
        for mlp, module in zip(mlps, originals):
            setattr(mlp, attr, module)


def record_with_preactivations(subject: Subject, input_ids: torch.Tensor, layers: list[int]):
    """`Subject.record` plus each layer's pre-activation (the activation module's input: GPT-2's
    `c_fc` output, a gated MLP's `gate_proj` output) and, for gated MLPs, the `up_proj` output.
    Returns (acts, pre, up) as {layer: [batch, tokens, n_neurons]}; `up` is empty for GPT-2."""
    attr = _act_attr(subject)
    pre: dict[int, torch.Tensor] = {}
    up: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        mlp = subject.neurons.mlp(layer)
        handles.append(getattr(mlp, attr).register_forward_pre_hook(
            lambda _m, args, layer=layer: pre.__setitem__(layer, args[0].detach())))
        if subject.neurons.architecture == "gated":
            handles.append(mlp.up_proj.register_forward_hook(
                lambda _m, _args, out, layer=layer: up.__setitem__(layer, out.detach())))
    try:
        acts = subject.record(input_ids, layers)
    finally:
        for h in handles:
            h.remove()
    return acts, pre, up


def local_activations(subject: Subject, fn: Callable, pre: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor:
    """The layer's neurons with `fn` applied to the same pre-activation."""
    return fn(pre) if subject.neurons.architecture == "gpt2" else fn(pre) * up


# --- Streaming |Δ| quantiles ------------------------------------------------------------------

class AbsHistogram:
    """Counts of |x| per layer in log-spaced bins, `per_decade` bins per decade from 10**min_exp to
    10**max_exp (smaller non-zero values go to the first bin, larger to the last), plus the
    exact number of zeros, the exact maximum and the sum."""

    def __init__(self, n_layers: int, per_decade: int = 500, min_exp: int = -12, max_exp: int = 4):
        self.per_decade, self.min_exp = per_decade, min_exp
        self.n_bins = (max_exp - min_exp) * per_decade
        self.counts = torch.zeros((n_layers, self.n_bins), dtype=torch.int64)
        self.zeros = torch.zeros(n_layers, dtype=torch.int64)
        self.max = torch.zeros(n_layers, dtype=torch.float64)
        self.sum = torch.zeros(n_layers, dtype=torch.float64)

    def add(self, layer: int, values: torch.Tensor) -> None:
        v = values.detach().abs().flatten().float()
        nonzero = v[v > 0]
        self.zeros[layer] += v.numel() - nonzero.numel()
        if nonzero.numel():
            idx = ((torch.log10(nonzero) - self.min_exp) * self.per_decade).floor()
            self.counts[layer] += torch.bincount(idx.clamp(0, self.n_bins - 1).long(), minlength=self.n_bins)
            self.max[layer] = max(self.max[layer].item(), nonzero.max().item())
            self.sum[layer] += nonzero.double().sum()

    def summary(self, layer: int | None = None) -> dict[str, float]:
        """{median, p90, p99, p99.9, max, mean, n} of one layer (or all layers pooled)."""
        sel = slice(None) if layer is None else slice(layer, layer + 1)
        counts = self.counts[sel].sum(0).numpy()
        zeros = int(self.zeros[sel].sum())
        n = zeros + int(counts.sum())
        top = float(self.max[sel].max())
        out = {name: self._quantile(q, counts, zeros, n, top) for name, q in QUANTILES.items()}
        out.update(max=top, mean=float(self.sum[sel].sum()) / n if n else math.nan, n=n)
        return out

    def _quantile(self, q: float, counts: np.ndarray, zeros: int, n: int, top: float) -> float:
        if n == 0:
            return math.nan
        rank = q * (n - 1)  # numpy's default (linear) position among the sorted values
        if rank < zeros:
            return 0.0
        r = rank - zeros
        cum = np.cumsum(counts)
        b = int(np.searchsorted(cum, r, side="right"))
        b = min(b, len(counts) - 1)
        within = (r - (cum[b] - counts[b]) + 0.5) / max(counts[b], 1)  # values spread log-uniformly
        return min(10 ** (self.min_exp + (b + within) / self.per_decade), top)


# --- Neuron choice (the frozen-set rule) --------------------------------------------------------

def alive_mask(window_max: torch.Tensor, pool: np.ndarray, min_activation: float, min_windows: int) -> torch.Tensor:
    """[n_neurons] bool: in each pool, at least `min_windows` windows have a maximum above
    `min_activation` (window_max is [W, n_neurons])."""
    alive = torch.ones(window_max.shape[1], dtype=torch.bool)
    for p in range(len(POOLS)):
        rows = torch.from_numpy(pool == p)
        alive &= (window_max[rows] > min_activation).sum(0) >= min_windows
    return alive


def choose_neurons(alive: torch.Tensor, n_layers: int, per_layer: int, seed: int, strict: bool = True) -> list[int]:
    """The build's draw: per layer, `per_layer` neurons uniformly (seeded) among alive ones; flat
    indices layer * n_neurons + neuron. With strict=False a layer with fewer gives what it has."""
    rng = np.random.default_rng(seed)
    n = alive.numel() // n_layers
    chosen = []
    for layer in range(n_layers):
        candidates = np.flatnonzero(alive[layer * n:(layer + 1) * n].numpy())
        if len(candidates) < per_layer and strict:
            raise HarnessError(f"layer {layer} has only {len(candidates)} neurons that are not dead on these "
                               "windows; lower alive.min_windows or neurons_per_layer, or raise max_windows.")
        picked = np.sort(rng.choice(candidates, size=min(per_layer, len(candidates)), replace=False))
        chosen += [layer * n + int(i) for i in picked]
    return chosen


def topk_jaccard(base_max: torch.Tensor, var_max: torch.Tensor, k: int) -> torch.Tensor:
    """[n_neurons] Jaccard overlap of each neuron's top-k windows (rows of [W, n_neurons])."""
    a = torch.zeros_like(base_max, dtype=torch.bool).scatter_(0, base_max.topk(k, 0).indices, True)
    b = torch.zeros_like(var_max, dtype=torch.bool).scatter_(0, var_max.topk(k, 0).indices, True)
    return (a & b).sum(0) / (a | b).sum(0)


# --- The check --------------------------------------------------------------------------------

def _batches(n: int, size: int, desc: str):
    with tqdm(total=n, desc=desc, unit="window") as bar:
        for lo in range(0, n, size):
            yield slice(lo, min(lo + size, n))
            bar.update(min(size, n - lo))


def run_check(cfg: DictConfig, output_dir: Path, subject: Subject | None = None) -> dict[str, Any]:
    """Run the check and write its outputs; `subject` (already loaded from `cfg.subject`) saves a load."""
    t0 = time.time()
    variants = [get_variant(name) for name in cfg.variants]
    if not variants:
        raise ConfigError("variants is empty; name at least one of " + ", ".join(sorted(VARIANTS)))
    subject = subject if subject is not None else load_subject(cfg.subject)
    own = subject.neurons.activation
    if own not in VARIANTS:
        raise ConfigError(f"subject {subject.name} uses activation {own!r}, not a GELU variant; the GELU check "
                          f"needs a GELU subject (known variants: {sorted(VARIANTS)}), e.g. subject=gemma3_270m.")
    nm = subject.neurons
    L, N = nm.n_layers, nm.n_neurons
    layers = list(range(L))
    corpus = load_corpus(cfg.corpus)
    win, _pools, _ = make_windows(corpus, subject.tokenizer, cfg.window, cfg.explain_fraction, cfg.seeds.pools,
                               cfg.max_windows)
    W, T = win.ids.shape
    ids = torch.from_numpy(win.ids)
    log.info("%s (activation %s): %d windows of %d tokens, %d layers × %d neurons, variants %s",
             subject.name, own, W, T, L, N, [v.name for v in variants])

    # The hooks and the configured activation must agree before anything is compared.
    fidelity = fidelity_check(subject, ids[: min(4, W)], layers, cfg.fidelity_tolerance)

    # Pass 1: the model's own run, to choose neurons as the frozen-set builder would.
    base_max = torch.zeros((W, L * N))
    for sl in _batches(W, cfg.batch_size, "pass 1: own activation"):
        acts = subject.record(ids[sl], layers)
        base_max[sl] = torch.cat([acts[layer].amax(1) for layer in layers], -1)
    alive = {"own": alive_mask(base_max, win.pool, cfg.alive.min_activation, cfg.alive.min_windows)}
    chosen = choose_neurons(alive["own"], L, cfg.neurons_per_layer, cfg.seeds.neurons)
    chosen_t = torch.tensor(chosen)

    # Pass 2: per batch the own run (with pre-activations), then each variant, locally and propagated.
    hist_kw = dict(per_decade=cfg.histogram.per_decade, min_exp=cfg.histogram.min_exp, max_exp=cfg.histogram.max_exp)
    scale = AbsHistogram(L, **hist_kw)  # |activation| of the own run, for scale
    local = {v.name: AbsHistogram(L, **hist_kw) for v in variants}
    prop = {v.name: AbsHistogram(L, **hist_kw) for v in variants}
    var_max = {v.name: torch.zeros((W, L * N)) for v in variants}
    chosen_acts = {name: torch.zeros((W, T, len(chosen))) for name in ["own", *local]}
    for sl in _batches(W, cfg.batch_size, f"pass 2: own + {len(variants)} variants"):
        base, pre, up = record_with_preactivations(subject, ids[sl], layers)
        chosen_acts["own"][sl] = torch.cat([base[layer] for layer in layers], -1)[..., chosen_t]
        for layer in layers:
            scale.add(layer, base[layer])
        for v in variants:
            with torch.no_grad():
                for layer in layers:
                    local[v.name].add(layer, local_activations(subject, v.fn, pre[layer], up.get(layer)) - base[layer])
            with swap_activation(subject, v.fn):
                acts = subject.record(ids[sl], layers)
            for layer in layers:
                prop[v.name].add(layer, acts[layer] - base[layer])
            flat = torch.cat([acts[layer] for layer in layers], -1)
            var_max[v.name][sl] = flat.amax(1)
            chosen_acts[v.name][sl] = flat[..., chosen_t]
            del acts, flat
        del base, pre, up

    # Stability of top-k windows and of the neuron choice.
    results: dict[str, Any] = {"variants": {}}
    alive_own = alive["own"]
    for v in variants:
        jac = topk_jaccard(base_max, var_max[v.name], cfg.top_k)
        alive_v = alive_mask(var_max[v.name], win.pool, cfg.alive.min_activation, cfg.alive.min_windows)
        redrawn = choose_neurons(alive_v, L, cfg.neurons_per_layer, cfg.seeds.neurons, strict=False)
        per_layer = []
        for layer in layers:
            cols = slice(layer * N, (layer + 1) * N)
            a = alive_own[cols]
            in_layer = [f for f in chosen if f // N == layer]
            per_layer.append({
                "layer": layer,
                "local": local[v.name].summary(layer), "propagated": prop[v.name].summary(layer),
                "topk_jaccard": float(jac[cols][a].mean()) if a.any() else math.nan,
                "topk_identical": float((jac[cols][a] == 1).float().mean()) if a.any() else math.nan,
                "alive_flips": int((a != alive_v[cols]).sum()),
                "chosen_still_alive": int(sum(bool(alive_v[f]) for f in in_layer)),
                "chosen_redrawn_same": len(set(in_layer) & {f for f in redrawn if f // N == layer}),
                "chosen": len(in_layer),
            })
        results["variants"][v.name] = {
            "formula": v.formula, "is_own": v.name == own,
            "overall": {
                "local": local[v.name].summary(), "propagated": prop[v.name].summary(),
                "topk_jaccard": float(jac[alive_own].mean()),
                "topk_identical": float((jac[alive_own] == 1).float().mean()),
                "alive_flips": int((alive_own != alive_v).sum()),
                "chosen_still_alive": int(alive_v[chosen_t].sum()),
                "chosen_redrawn_same": len(set(chosen) & set(redrawn)),
                "chosen": len(chosen),
            },
            "per_layer": per_layer,
        }

    # Score change when the test split is re-recorded under each variant.
    scores = score_changes(cfg, subject, win, [d.doc_id for d in corpus.documents], chosen, base_max, chosen_acts,
                           [v.name for v in variants])
    for name, block in scores["variants"].items():
        results["variants"][name]["score"] = block

    results.update({
        "harness_version": __version__,
        "subject": {"name": subject.name, "activation_function": own, "architecture": nm.architecture,
                    "n_layers": L, "neurons_per_layer": N, "weights_digest": subject.weights_digest},
        "corpus": {"name": corpus.name, "digest": corpus.digest, "n_windows": W, "window": T,
                   "n_tokens": W * T, "windows_per_pool": {p: int((win.pool == i).sum()) for i, p in enumerate(POOLS)}},
        "fidelity_max_abs_diff": fidelity,
        "scale": {"overall": scale.summary(), "per_layer": [scale.summary(layer) for layer in layers]},
        "alive": {"n_alive": int(alive_own.sum()), "n_neurons": L * N, "chosen": len(chosen)},
        "score_neurons": scores["n_neurons"], "explanation_failures": scores["failures"],
        "openai_gpt2_small": OPENAI_GPT2_SMALL,
        "seconds": round(time.time() - t0, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    })
    write_json(output_dir / "results.json", results)
    plot(results, output_dir / "gelu_check.png")
    write_atomic(output_dir / "report.md", report_markdown(results))
    return results


def score_changes(cfg: DictConfig, subject: Subject, win, doc_ids: list[str], chosen: list[int],
                  base_max: torch.Tensor, chosen_acts: dict[str, torch.Tensor],
                  variant_names: list[str]) -> dict[str, Any]:
    """Explain each chosen neuron from the own run and score its test split recorded under the
    own activation and under each variant (same windows, same explanation and simulation)."""
    explainer = make_explainer(cfg.explainer)
    simulator = make_simulator(cfg.simulator)
    scorers = scorers_from(cfg.scorer)  # with their parameters (scorer.threshold.max_fractions=... is honoured)
    rng = np.random.default_rng(cfg.seeds.records)
    tokens = [[subject.tokenizer.decode([t]) for t in row] for row in win.ids]
    c = cfg.counts

    def records(col: int, windows: list[int], kinds: list[str], run: str) -> list[ActivationRecord]:
        return [ActivationRecord(tokens=tokens[w], activations=chosen_acts[run][w, :, col].tolist(),
                                 doc_id=doc_ids[win.doc[w]], start=int(win.start[w]), kind=k)
                for w, k in zip(windows, kinds)]

    def pick(col_flat: int, pool: int, n_top: int, n_random: int) -> tuple[list[int], list[str]]:
        in_pool = np.flatnonzero(win.pool == pool)
        order = in_pool[np.argsort(-base_max[in_pool, col_flat].numpy(), kind="stable")]
        if len(order) < n_top + n_random:
            raise ConfigError(f"the {POOLS[pool]} pool has {len(order)} windows but {n_top + n_random} are needed "
                              "per neuron; raise max_windows or lower counts.")
        top = order[:n_top].tolist()
        rand = rng.choice(order[n_top:], size=n_random, replace=False).tolist()
        return top + rand, ["top"] * n_top + ["random"] * n_random

    neurons: list[NeuronRecord] = []
    test_under: dict[str, list[list[ActivationRecord]]] = {name: [] for name in ["own", *variant_names]}
    simulations: dict[int, list] = {}
    failures = []
    for col, f in enumerate(tqdm(chosen, desc="scores", unit="neuron")):
        layer, neuron = divmod(f, subject.neurons.n_neurons)
        ew, ek = pick(f, 0, c.explain_top, c.explain_random)
        tw, tk = pick(f, 1, c.test_top, c.test_random)
        neurons.append(NeuronRecord(layer=layer, neuron=neuron, explain=records(col, ew, ek, "own"),
                                    test=records(col, tw, tk, "own")))
        for name in test_under:
            test_under[name].append(neurons[-1].test if name == "own" else records(col, tw, tk, name))
        try:
            simulations[col] = simulator.simulate(explainer.explain(neurons[-1]).text, neurons[-1].test)
        except HarnessError as exc:
            failures.append(f"layer {layer} neuron {neuron}: {type(exc).__name__}: {exc}")

    def headlines(run: str) -> dict[str, list[float]]:
        """Each scorer's headline per neuron, the same simulations scored against `run`'s activations,
        through the cell's scoring core (no controls: the comparison is own vs variant)."""
        rows: list[dict[str, Any]] = [{} for _ in neurons]
        simulated = {i: Simulated(replace(neurons[i], test=test_under[run][i]), test=sims, calibration=[])
                     for i, sims in simulations.items()}
        score_neurons(neurons, rows, simulated, simulator, scorers, {"floor": False, "ceiling": False}, {}, [])
        return {s.name: [row.get(f"{s.name}.{s.headline}", math.nan) for row in rows] for s, _ in scorers}

    own = headlines("own")
    out: dict[str, Any] = {"variants": {}, "n_neurons": len(chosen), "failures": failures}
    for name in variant_names:
        variant = headlines(name)
        out["variants"][name] = {s.name: _compare(s.headline, own[s.name], variant[s.name]) for s, _ in scorers}
    return out


def _compare(metric: str, base: list[float], var: list[float]) -> dict[str, Any]:
    from scipy.stats import spearmanr

    a, b = np.asarray(base, dtype=np.float64), np.asarray(var, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = np.abs(a[ok] - b[ok])
    if ok.sum() >= 2 and np.ptp(a[ok]) > 0 and np.ptp(b[ok]) > 0:
        rho = 1.0 if np.array_equal(a[ok], b[ok]) else float(spearmanr(a[ok], b[ok]).statistic)
    else:
        rho = math.nan
    return {"metric": metric, "n": int(ok.sum()), "n_undefined": int((~ok).sum()),
            "mean_abs_delta": float(d.mean()) if len(d) else math.nan,
            "max_abs_delta": float(d.max()) if len(d) else math.nan,
            "spearman": rho, "mean_own": float(a[ok].mean()) if ok.any() else math.nan,
            "mean_variant": float(b[ok].mean()) if ok.any() else math.nan}


# --- Report -----------------------------------------------------------------------------------

def _f(x: float) -> str:
    return "0" if x == 0 else fmt(x, lambda v: ".3g" if abs(v) >= 1e-3 else ".2e")


def overall_table(results: dict[str, Any]) -> str:
    lines = ["| variant | Δ | median | p90 | p99 | p99.9 | max |", "|---|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        label = f"{name} (own)" if v["is_own"] else name
        for kind in ("local", "propagated"):
            s = v["overall"][kind]
            lines.append(f"| {label} | {kind} | " + " | ".join(_f(s[q]) for q in [*QUANTILES, "max"]) + " |")
    ref = OPENAI_GPT2_SMALL
    lines.append("| OpenAI, GPT-2 small (an optimized GELU instead of its own) | post-MLP | "
                 + " | ".join(_f(ref[q]) for q in QUANTILES) + " | n/a |")
    return "\n".join(lines)


def stability_table(results: dict[str, Any]) -> str:
    score_names = sorted({s for v in results["variants"].values() for s in v["score"]})
    head = ("| variant | top-k Jaccard (mean) | top-k identical | alive flips | chosen still alive | "
            "same draw | " + " | ".join(f"{s}: mean \\|Δscore\\| | {s}: max \\|Δscore\\| | {s}: Spearman ρ"
                                     for s in score_names) + " |")
    lines = [head, "|" + "---|" * (6 + 3 * len(score_names))]
    for name, v in results["variants"].items():
        o = v["overall"]
        cells = [f"{name} (own)" if v["is_own"] else name, f"{o['topk_jaccard']:.3f}", f"{o['topk_identical']:.1%}",
                 f"{o['alive_flips']} / {results['alive']['n_neurons']}",
                 f"{o['chosen_still_alive']} / {o['chosen']}", f"{o['chosen_redrawn_same']} / {o['chosen']}"]
        for s in score_names:
            sc = v["score"][s]
            cells += [_f(sc["mean_abs_delta"]), _f(sc["max_abs_delta"]),
                      fmt(sc["spearman"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_table(results: dict[str, Any], name: str) -> str:
    lines = ["| layer | local median | local p99 | local p99.9 | propagated median | propagated p90 | "
             "propagated p99 | propagated p99.9 | propagated max | \\|a\\| median (own) | top-k Jaccard | alive flips |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, sc in zip(results["variants"][name]["per_layer"], results["scale"]["per_layer"]):
        lo, pr = row["local"], row["propagated"]
        lines.append(f"| {row['layer']} | {_f(lo['median'])} | {_f(lo['p99'])} | {_f(lo['p99.9'])} | "
                     f"{_f(pr['median'])} | {_f(pr['p90'])} | {_f(pr['p99'])} | {_f(pr['p99.9'])} | {_f(pr['max'])} | "
                     f"{_f(sc['median'])} | {row['topk_jaccard']:.3f} | {row['alive_flips']} |")
    return "\n".join(lines)


def report_markdown(results: dict[str, Any]) -> str:
    s, c, cfg = results["subject"], results["corpus"], results["config"]
    sc = results["scale"]["overall"]
    variants = "\n".join(f"- `{n}`{' (the model’s own)' if v['is_own'] else ''}: {v['formula']}"
                         for n, v in results["variants"].items())
    parts = [
        f"# GELU-variant check: {s['name']}",
        "",
        f"Subject `{s['name']}` ({s['architecture']} MLP, {s['n_layers']} layers × {s['neurons_per_layer']} neurons, "
        f"own activation `{s['activation_function']}`, weights sha256 `{s['weights_digest'][:16]}…`) on "
        f"{c['n_windows']} {c['name']} windows of {c['window']} tokens ({c['n_tokens']} tokens; "
        f"{c['windows_per_pool']['explain']} explain-pool / {c['windows_per_pool']['scoring']} scoring-pool windows, "
        f"seeded subset). Generated by `python -m harness.gelu_check` (harness {results['harness_version']}) "
        f"in {results['seconds']:.0f} s; every number is in `results.json`.",
        "",
        f"Fidelity guard: hooked activations match a recomputation with `{s['activation_function']}` from each "
        f"layer's own weights to {_f(results['fidelity_max_abs_diff'])} (tolerance "
        f"{cfg['fidelity_tolerance']:g}).",
        "",
        "Variants:",
        variants,
        "",
        "## |Δ activation| over every token × neuron × layer",
        "",
        "A neuron's activation is the input of the MLP's output projection"
        + (" (`act(gate) * up` for this gated MLP)" if s["architecture"] == "gated" else " (the GELU output)")
        + ". *Local*: the variant applied to the same pre-activation; *propagated*: the whole network run "
        "with the variant in every layer, so earlier layers' changes reach later ones. Both are compared "
        "with the model's own run.",
        "",
        overall_table(results),
        "",
        "OpenAI's row is its note on the GPT-2 small datasets: neuron activations from whole-network inference "
        "with the wrong GELU, so it compares with the *propagated* rows (on another model: compare sizes "
        "relative to the activations' own scale).",
        "",
        f"For scale, the own run's |activation| over the same values: median {_f(sc['median'])}, p90 {_f(sc['p90'])}, "
        f"p99 {_f(sc['p99'])}, p99.9 {_f(sc['p99.9'])}, max {_f(sc['max'])}.",
        "",
        "![Δ quantiles per layer per variant](gelu_check.png)",
        "",
        "## Stability of what a neuron set would hold",
        "",
        f"Top-k: Jaccard overlap of each neuron's top {cfg['top_k']} windows (by window maximum, propagated run) "
        f"with the own run's, over the {results['alive']['n_alive']} neurons alive in the own run. The neuron "
        f"choice applies the frozen-set rule to these windows: a neuron is alive when, in each pool, at least "
        f"{cfg['alive']['min_windows']} windows have a maximum above {cfg['alive']['min_activation']}; "
        f"{cfg['neurons_per_layer']} per layer are drawn with seed {cfg['seeds']['neurons']} among alive neurons "
        f"({results['alive']['chosen']} chosen). *Chosen still alive*: chosen neurons the variant leaves alive; "
        "*same draw*: chosen neurons the same seeded draw picks again on the variant's alive neurons (one "
        "alive flip in a layer changes that layer's candidate list, so it can change the layer's whole draw).",
        "",
        f"Scores: each of the {results['score_neurons']} chosen neurons is explained from its explain split "
        f"({cfg['counts']['explain_top']} top + {cfg['counts']['explain_random']} random explain-pool windows, "
        f"own run) by `{cfg['explainer']['kind']}`, simulated on its test split ({cfg['counts']['test_top']} top + "
        f"{cfg['counts']['test_random']} random scoring-pool windows) by `{cfg['simulator']['kind']}` and scored "
        "on the test split as recorded by the own run and as re-recorded under the variant (same windows, same "
        "explanation and simulation); Δscore is the difference of the headline metric, ρ the Spearman rank "
        "correlation of the neurons' scores.",
        "",
        stability_table(results),
        "",
    ]
    if results["explanation_failures"]:
        parts += ["Explanation/simulation failures (not scored): " + "; ".join(results["explanation_failures"]), ""]
    parts += ["## Per layer", ""]
    for name, v in results["variants"].items():
        if v["is_own"]:
            continue
        parts += [f"### {name}", "", layer_table(results, name), ""]
    own = [n for n, v in results["variants"].items() if v["is_own"]]
    if own:
        parts += [f"`{own[0]}` is the model's own activation: every Δ above is exactly 0 for it, a check of the "
                  "method itself.", ""]
    return "\n".join(parts)


def plot(results: dict[str, Any], path: Path) -> None:
    """Δ quantiles per layer: rows local / propagated, columns median / p90 / p99 / p99.9, a line per
    variant (log scale; the own activation's Δ = 0 is not drawn), OpenAI's GPT-2 value dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = [n for n, v in results["variants"].items() if not v["is_own"]]
    fig, axes = plt.subplots(2, len(QUANTILES), figsize=(4 * len(QUANTILES), 7), sharex=True, squeeze=False)
    n_layers = results["subject"]["n_layers"]
    for r, kind in enumerate(("local", "propagated")):
        for col, q in enumerate(QUANTILES):
            ax = axes[r][col]
            for i, name in enumerate(names):
                ys = [row[kind][q] for row in results["variants"][name]["per_layer"]]
                ys = [y if y > 0 else np.nan for y in ys]
                ax.plot(range(n_layers), ys, marker="o", ms=3, color=f"C{i}", label=name)
            ax.axhline(OPENAI_GPT2_SMALL[q], color="k", ls=":", lw=1, label="OpenAI GPT-2 small")
            ax.set_yscale("log")
            ax.set_title(f"{kind} |Δ|, {q}")
            ax.grid(True, which="major", alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == 1:
                ax.set_xlabel("layer")
    axes[0][0].legend(fontsize=8)
    own = [n for n, v in results["variants"].items() if v["is_own"]]
    fig.suptitle(f"GELU variants on {results['subject']['name']} ({results['corpus']['n_tokens']} tokens)"
                 + (f"; {own[0]} is the model's own (Δ = 0, not drawn)" if own else ""))
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="check/gelu")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_check(cfg, output_dir)
    print(overall_table(results))
    print()
    print(stability_table(results))
    print(f"\nwrote {output_dir / 'report.md'}, {output_dir / 'gelu_check.png'} and {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
