"""Score change under a variant: each chosen neuron is explained and simulated once, and the same
simulations are scored against its test split as recorded by the own run and by each variant's."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from harness.cell import score_neurons
from harness.errors import ConfigError, HarnessError
from harness.explain import make_explainer
from harness.records import ActivationRecord, NeuronRecord
from harness.scoring import Simulated, scorers_from
from harness.sets.windows import POOLS
from harness.simulate import make_simulator
from harness.subject import Subject


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

