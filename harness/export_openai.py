"""`python -m harness.export_openai SET OUT_DIR`: write a neuron set in OpenAI neuron-explainer's
layout, `OUT_DIR/<layer>/<neuron>.json`, one `NeuronRecord` each (with `dataclass_name` tags, as
neuron-explainer's `loads` expects).

Mapping: `most_positive_activation_records` = every top record (explain, calibration and test),
strongest first; `random_sample` = every random record; `random_sample_by_quantile` = one list per
quantile bin; `quantile_boundaries`, `mean`, `variance` as stored. neuron-explainer re-slices top
records by interleaving, which does not reproduce our explain/scoring document split; use our own
loaders for benchmark runs and this export for interoperability.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from harness.cli import exit_on_harness_error
from harness.records import ActivationRecord, NeuronRecord, load_set


def _record(r: ActivationRecord) -> dict:
    return {"dataclass_name": "ActivationRecord", "tokens": r.tokens, "activations": r.activations}


def to_openai(neuron: NeuronRecord) -> dict:
    records = neuron.explain + neuron.calibration + neuron.test
    top = sorted((r for r in records if r.kind == "top"), key=lambda r: r.max_activation, reverse=True)
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", **neuron.neuron_id},
        "random_sample": [_record(r) for r in records if r.kind == "random"],
        "random_sample_by_quantile": [[_record(r)] for r in records if r.kind == "quantile"],
        "quantile_boundaries": neuron.quantile_boundaries,
        "mean": neuron.mean,
        "variance": neuron.variance,
        "skewness": None,
        "kurtosis": None,
        "most_positive_activation_records": [_record(r) for r in top],
    }


def export(set_path: str, out_dir: Path) -> int:
    neuron_set = load_set(set_path)
    for neuron in tqdm(neuron_set.neurons, desc="exporting", unit="neuron"):
        path = out_dir / str(neuron.layer) / f"{neuron.neuron}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_openai(neuron)))
    return len(neuron_set.neurons)


@exit_on_harness_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", help="a set directory or a name under leaderboard/sets/")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    n = export(args.set, args.out_dir)
    print(f"wrote {n} neuron records under {args.out_dir}")


if __name__ == "__main__":
    main()
