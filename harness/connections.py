"""Connection weights of MLP neurons (definitions in `baselines/connection_weights.py`).

    python -m harness.connections layer=3 neuron=17              # print one neuron's connections
    python -m harness.connections all=true set=smollm2-135m-brown-v1 out=conn.parquet

`all=true` writes one row per neuron of a frozen set (`set=null`: every neuron of the subject):
top input and output tokens, strongest upstream and downstream neurons, each as parallel lists.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import hydra
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from baselines.connection_weights import ConnectionWeights, Top
from harness.cli import exit_on_harness_error
from harness.errors import ConfigError
from harness.records import load_set
from harness.subject import load_subject

log = logging.getLogger(__name__)
KINDS = ("input", "output", "upstream", "downstream")


def layer_connections(weights: ConnectionWeights, layer: int, neurons: list[int] | None, k: int) -> dict[str, Top]:
    return {"input": weights.input_tokens(layer, neurons, k), "output": weights.output_tokens(layer, neurons, k),
            "upstream": weights.upstream(layer, neurons, k), "downstream": weights.downstream(layer, neurons, k)}


def rows_for(tops: dict[str, Top], layer: int, decode: Callable[[int], str]) -> list[dict[str, Any]]:
    """One row per neuron: for each kind, parallel lists (ids or layers/neurons, weights, gate, up)."""
    rows = []
    for i, neuron in enumerate(tops["input"].neurons):
        row: dict[str, Any] = {"layer": layer, "neuron": neuron}
        for kind, top in tops.items():
            ids = top.index[i].tolist()
            if top.layer is None:
                row[f"{kind}_token_ids"] = ids
                row[f"{kind}_tokens"] = [decode(t) for t in ids]
            else:
                row[f"{kind}_layers"] = top.layer[i].tolist()
                row[f"{kind}_neurons"] = ids
            row[f"{kind}_weights"] = top.weight[i].tolist()
            if top.gate is not None:
                row[f"{kind}_gate"], row[f"{kind}_up"] = top.gate[i].tolist(), top.up[i].tolist()
        rows.append(row)
    return rows


def describe(row: dict[str, Any], gated: bool) -> str:
    """A readable report of one neuron's row."""
    titles = {"input": "top input tokens" + (" (relu(gate)·up)" if gated else ""),
              "output": "top output tokens",
              "upstream": "strongest upstream neurons" + (" (gate·up)" if gated else ""),
              "downstream": "strongest downstream neurons" + (" (gate·up)" if gated else "")}
    lines = [f"layer {row['layer']} neuron {row['neuron']}"]
    for kind in KINDS:
        lines.append(f"\n{titles[kind]}:")
        names = ([repr(t) for t in row[f"{kind}_tokens"]] if f"{kind}_tokens" in row else
                 [f"L{la}/N{n}" for la, n in zip(row[f"{kind}_layers"], row[f"{kind}_neurons"])])
        if not names:
            lines.append("  (none)")
        for j, (name, w) in enumerate(zip(names, row[f"{kind}_weights"])):
            extra = f"  gate {row[f'{kind}_gate'][j]:+.4g}  up {row[f'{kind}_up'][j]:+.4g}" if f"{kind}_gate" in row else ""
            lines.append(f"  {j + 1:3d}  {name:<24} {w:+.4g}{extra}")
    return "\n".join(lines)


def _weights(cfg: DictConfig) -> ConnectionWeights:
    if cfg.k < 1 or cfg.chunk < 1:
        raise ConfigError(f"k={cfg.k} and chunk={cfg.chunk} must both be at least 1.")
    return ConnectionWeights(load_subject(cfg.subject), chunk=cfg.chunk)


def _decoder(weights: ConnectionWeights) -> Callable[[int], str]:
    tokenizer = weights.subject.tokenizer
    return functools.lru_cache(maxsize=None)(lambda t: tokenizer.decode([t]))


def report(cfg: DictConfig) -> str:
    """One neuron (`layer`, `neuron`): its connections as readable text."""
    if cfg.layer is None or cfg.neuron is None:
        raise ConfigError("pass layer=L neuron=N for one neuron, or all=true set=NAME out=FILE.parquet "
                          "for every neuron of a frozen set.")
    weights = _weights(cfg)
    layer, neuron = int(cfg.layer), int(cfg.neuron)
    tops = layer_connections(weights, layer, [neuron], cfg.k)
    return describe(rows_for(tops, layer, _decoder(weights))[0], weights.gated)


def write_all(cfg: DictConfig) -> Path:
    """Every neuron of the set `set` (null: of the subject) to the parquet file `out`."""
    weights = _weights(cfg)
    subject = weights.subject
    by_layer: dict[int, list[int] | None]
    if cfg.set is None:
        by_layer = {layer: None for layer in range(subject.neurons.n_layers)}
        order = None
    else:
        neuron_set = load_set(cfg.set)
        built_on = neuron_set.manifest["subject"]
        if built_on["weights_digest"] != subject.weights_digest:
            raise ConfigError(f"set {neuron_set.name} was built on subject {built_on['name']}, not on "
                              f"{subject.name} (weights digests differ); pass subject={built_on['name']}.")
        by_layer = defaultdict(list)
        for n in neuron_set.neurons:
            by_layer[n.layer].append(n.neuron)
        order = {(n.layer, n.neuron): i for i, n in enumerate(neuron_set.neurons)}
    decode = _decoder(weights)
    rows = []
    for layer, neurons in tqdm(sorted(by_layer.items()), desc="layers", unit="layer"):
        rows += rows_for(layer_connections(weights, layer, neurons, cfg.k), layer, decode)
    if order is not None:  # the set's fixed order
        rows.sort(key=lambda r: order[(r["layer"], r["neuron"])])
    out = Path(hydra.utils.to_absolute_path(cfg.out))
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out, index=False)
    log.info("wrote %s: %d neurons, top %d connections of each kind", out, len(rows), cfg.k)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="connections")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    if cfg.all:
        write_all(cfg)
    else:
        print(report(cfg))


if __name__ == "__main__":
    main()
