"""A check of a scorer that judges the explanation itself (detection, fuzzing, embedding):
`python -m harness.check_scorer scorer=<name> [overrides]`.

As `harness.check_simulator` checks a simulator, this checks such a scorer as an instrument: each
item is a neuron with known activations and candidate explanations, one of them true, and the
scorer's headline metric ranks the candidates. Items: the planted neuron (its test windows) and
every puzzle of the puzzle files, each as a neuron whose test windows are its own text (active) and
the other puzzles of its file, marks stripped (inactive) (`check_simulator.puzzle_neurons`).
Reported per group, overall and per puzzle kind (lexical, semantic): k/n ranked first against
chance, the mean rank and the margin with a bootstrap CI. Written to the run directory and to
`store` as `<name>-<identity[:12]>.json`, the identity being the sha256 of the scorer's name and
resolved parameters, where the leaderboard finds it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from harness import __version__
from harness.check_simulator import (PUZZLE_DIR, check_scorer, load_puzzles, planted_item, planted_record,
                                     puzzle_neurons, shown_path, simulator_identity, table, ScorerItem)
from harness.cli import exit_on_harness_error, hydra_output_dir
from harness.components import SCORERS, RunContext
from harness.errors import ConfigError
from harness.paths import REPO_ROOT
from harness.rundir import write_json
from harness.scoring import Simulated, run_scorers, scorers_from


def scorer_identity(name: str, params: dict[str, Any]) -> str:
    """What makes two scorer checks the same instrument: the name and every resolved parameter."""
    return simulator_identity({"scorer": name, **params})


def run_check(name: str, params: dict[str, Any] | None, puzzle_files: list[str | Path],
              planted_corpus: dict[str, Any] | None, resamples: int = 2000, seed: int = 0,
              metric: str | None = None, negatives: int | None = None,
              context: RunContext | None = None) -> dict[str, Any]:
    """The check's result: per-item rows and a summary per group and per puzzle kind, the candidates
    ranked by `metric` (default: the scorer's headline)."""
    [(scorer, params)] = scorers_from({name: params})
    if scorer.reads_simulation:
        raise ConfigError(f"scorer {name} scores a simulation: check the simulator with python -m "
                          "harness.check_simulator instead")
    files = [Path(p) for p in puzzle_files]
    items: list[ScorerItem] = []
    for path in files:
        items += puzzle_neurons(load_puzzles(path), negatives, seed)
    if planted_corpus is not None:
        planted = planted_item(planted_corpus)
        neuron = planted_record(planted_corpus)
        items.insert(0, ScorerItem("planted", "planted", None, neuron, [planted.true, *planted.false], 0))
    # Window embeddings are cached by "set": here, the puzzle files' content and the planted corpus.
    key = hashlib.sha256(b"".join(p.read_bytes() for p in files) + repr(planted_corpus).encode()).hexdigest()
    context = context or RunContext(manifest={"hash": f"check-{key[:16]}"})
    headline = metric or scorer.headline
    no_information = scorer.metric(headline).no_information

    def score(pairs):
        batch = [Simulated(neuron, [], [], explanation) for neuron, explanation in pairs]
        return [row[f"{name}.{headline}"] for row in run_scorers([(scorer, params)], batch, context)]

    result = check_scorer(score, items, no_information=0.5 if no_information is None else no_information,
                          resamples=resamples, seed=seed)
    return {"scorer": {"name": name, **params}, "metric": headline,
            "identity": scorer_identity(name, {**params, **({"check_metric": metric} if metric else {}),
                                               **({"check_negatives": negatives} if negatives else {})}),
            "harness_version": __version__, "puzzle_files": [shown_path(p) for p in files], **result}


def store_path(store: str | Path, result: dict[str, Any]) -> Path:
    return Path(store) / f"{result['scorer']['name']}-{result['identity'][:12]}.json"


@hydra.main(version_base="1.3", config_path="../conf", config_name="check/scorer")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    if len(cfg.scorer) != 1:
        raise ConfigError(f"check one scorer at a time (scorer=<name>); got {list(cfg.scorer)}")
    [(name, params)] = OmegaConf.to_container(cfg.scorer, resolve=True).items()
    if name not in SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; known: {sorted(SCORERS)}")
    files = list(cfg.puzzles) if cfg.puzzles is not None else sorted(PUZZLE_DIR.glob("*.json"))
    corpus = OmegaConf.to_container(cfg.corpus, resolve=True) if cfg.planted else None
    result = run_check(name, params, files, corpus, cfg.bootstrap.resamples, cfg.bootstrap.seed, cfg.metric,
                       cfg.negatives)
    out = [hydra_output_dir() / "results.json"]
    if cfg.store:
        out.append(store_path(REPO_ROOT / cfg.store, result))
    for path in out:
        write_json(path, result)
    print(f"scorer check: {name} ({result['metric']}), identity {result['identity'][:12]}")
    print(table(result))
    print("\nwrote " + " and ".join(map(str, out)))


if __name__ == "__main__":
    main()
