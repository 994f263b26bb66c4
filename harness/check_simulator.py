"""A check of the simulator itself: `python -m harness.check_simulator simulator=<name> [overrides]`.

The simulator is the measuring instrument of the benchmark: a score is only as sharp as the
simulator's ability to tell a true explanation from a close wrong one. Each *item* is a neuron
with known activations and candidate explanations, one of them true: the planted neuron
(harness/planted.py, its test windows) and every puzzle of the puzzle files (harness/puzzles/*.json
by default: a text with hand-set activations, one true and three false explanations). Every
candidate is simulated and scored by ev_correlation_score (an undefined correlation, e.g. a
constant simulation, counts as 0, the metric's no-information value). Per item: the true
explanation's rank among the candidates (ties count half) and its margin, true minus the best
false score. Reported per puzzle file and overall: k/n ranked first against chance
(1/candidates), the mean rank, and the mean margin with a seeded percentile-bootstrap 95% CI over
items. A puzzle file names its `kind`: `lexical` (the true explanation names the marked words) or
`semantic` (it describes a category or a role and names none of them); the summary is also
reported per kind, since a lexical instrument can do well on the first and fall to chance on the
second. Written to the run directory and to `store` as `<kind>-<identity[:12]>.json`, where the
identity is the sha256 of the simulator's resolved config (`simulator_identity`), which the
leaderboard uses to show each entry's simulator check.

Scorers that judge whole windows (detection, fuzzing, embedding) are checked on the same puzzles
by `check_scorer` over `puzzle_neurons`: each puzzle becomes a neuron whose test windows are its
own text and, as inactive windows, the other texts of its file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness import __version__
from harness.cli import exit_on_harness_error, hydra_output_dir
from harness.errors import ConfigError
from harness.formatting import fmt
from harness.paths import REPO_ROOT
from harness.records import ActivationRecord, NeuronRecord
from harness.rundir import write_json
from harness.scoring.correlation import correlation_scores
from harness.scoring.stats import bootstrap_ci
from harness.simulate import Simulator, make_simulator

log = logging.getLogger(__name__)

PUZZLE_DIR = Path(__file__).parent / "puzzles"
MAX_PUZZLE_FILE = 2_000_000  # bytes: a puzzle file is small; refuse what cannot be one
KINDS = ("lexical", "semantic")  # what a puzzle file's true explanations are (see the module docstring)
_TOKEN = re.compile(r"(\s?)\[\[([^\]|]+)(?:\|(\d+))?\]\]|\s?\w+|\s?[^\w\s]")


def simulator_identity(simulator: dict[str, Any]) -> str:
    """The sha256 of a simulator's resolved config (kind and every parameter): what makes two
    simulators the same instrument."""
    return hashlib.sha256(json.dumps(simulator, sort_keys=True).encode()).hexdigest()


def puzzle_record(text: str) -> ActivationRecord:
    """`[[word]]` is a token with activation 10, `[[word|k]]` one with k; other tokens are words
    with their leading space and punctuation marks, with activation 0."""
    tokens, acts = [], []
    for m in _TOKEN.finditer(text):
        if m.group(2):
            tokens.append(m.group(1) + m.group(2))
            acts.append(float(m.group(3) or 10))
        else:
            tokens.append(m.group(0))
            acts.append(0.0)
    return ActivationRecord(tokens=tokens, activations=acts)


@dataclass
class Item:
    name: str
    records: list[ActivationRecord]
    true: str
    false: list[str]
    group: str = ""          # the puzzle file's stem, or "planted"
    kind: str | None = None  # the file's kind (KINDS), None when it names none


def load_puzzles(path: str | Path) -> list[Item]:
    """The puzzles of one JSON file: {"kind": "lexical" | "semantic" (optional),
    "puzzles": [{"text", "true", "false": [...]}, ...]}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"puzzle file {path} does not exist")
    if path.stat().st_size > MAX_PUZZLE_FILE:
        raise ConfigError(f"puzzle file {path} is larger than {MAX_PUZZLE_FILE} bytes")
    try:
        data = json.loads(path.read_text())
        puzzles, kind = data["puzzles"], data.get("kind")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ConfigError(f"puzzle file {path}: not a JSON object with a 'puzzles' list ({exc})") from exc
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"puzzle file {path}: kind must be one of {', '.join(KINDS)} (or absent), not {kind!r}")
    items = []
    for i, p in enumerate(puzzles):
        ok = (isinstance(p, dict) and isinstance(p.get("text"), str) and isinstance(p.get("true"), str)
              and isinstance(p.get("false"), list) and p["false"] and all(isinstance(f, str) for f in p["false"])
              and p["true"] not in p["false"])
        record = puzzle_record(p["text"]) if ok else None
        if not ok or not record.tokens or max(record.activations) <= 0:
            raise ConfigError(f"puzzle file {path}: puzzle {i} needs a text with at least one [[marked]] token, "
                              "a 'true' explanation and a list of different 'false' ones")
        items.append(Item(f"{path.stem}:{i}", [record], p["true"], list(p["false"]), path.stem, kind))
    return items


def planted_record(corpus_cfg: dict[str, Any]) -> NeuronRecord:
    """The planted neuron, recorded on the corpus `corpus_cfg` describes."""
    from harness.corpus import load_corpus
    from harness.planted import plant, planted_neuron
    from harness.subject import load_subject, subject_config

    subject = plant(load_subject(subject_config("tiny_llama")))
    return planted_neuron(subject, [d.text for d in load_corpus(corpus_cfg).documents])


def planted_item(corpus_cfg: dict[str, Any]) -> Item:
    """The planted neuron's test windows and its four candidate explanations."""
    from harness.planted import EXPLANATIONS

    return Item("planted", planted_record(corpus_cfg).test, EXPLANATIONS["true"],
                [v for k, v in EXPLANATIONS.items() if k != "true"], "planted")


def ranked(name: str, scores: list[float], true_index: int, group: str, kind: str | None,
           no_information: float) -> dict[str, Any]:
    """One item's row: the candidates' scores (higher is better; an undefined one counts as
    `no_information`), the true one's rank among them (ties count half) and its margin over the
    best false one."""
    scores = [float(s) if np.isfinite(s) else no_information for s in scores]
    true = scores[true_index]
    false = np.array(scores[:true_index] + scores[true_index + 1:])
    rank = 1 + float((false > true).sum()) + 0.5 * float((false == true).sum())
    return {"item": name, "group": group, "kind": kind, "scores": scores, "true_index": true_index,
            "rank": rank, "first": rank == 1, "margin": true - float(false.max()), "candidates": len(scores)}


def score_item(simulator: Simulator, item: Item) -> dict[str, Any]:
    """Every candidate simulated and scored by ev_correlation_score (undefined: 0, its
    no-information value); the true one (first) ranked."""
    scores = [correlation_scores(item.records, simulator.simulate(e, item.records))["ev_correlation_score"]
              for e in [item.true, *item.false]]
    return {**ranked(item.name, scores, 0, item.group, item.kind, 0.0), "true": item.true}


def summarise(rows: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    margin = bootstrap_ci([r["margin"] for r in rows], n_resamples=resamples, seed=seed)
    return {"n": len(rows), "first": int(sum(r["first"] for r in rows)),
            "chance_first": float(np.mean([1 / r["candidates"] for r in rows])),
            "mean_rank": float(np.mean([r["rank"] for r in rows])),
            "chance_rank": float(np.mean([(1 + r["candidates"]) / 2 for r in rows])),
            "mean_margin": margin["mean"], "margin_ci95": margin["ci95"]}


def report(rows: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    """The statistics of a check from its item rows: `summary` per group (planted, each puzzle
    file) and over all items, `by_kind` per puzzle kind present, and the rows by group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    summary = {g: summarise(r, resamples, seed) for g, r in groups.items()}
    summary["all"] = summarise(rows, resamples, seed)
    by_kind = {k: summarise([r for r in rows if r["kind"] == k], resamples, seed)
               for k in KINDS if any(r["kind"] == k for r in rows)}
    return {"summary": summary, "by_kind": by_kind, "items": groups}


def run_check(simulator_cfg: dict[str, Any], puzzle_files: list[str | Path], planted_corpus: dict[str, Any] | None,
              resamples: int = 2000, seed: int = 0, simulator: Simulator | None = None) -> dict[str, Any]:
    """The check's result: per-item rows and a summary per group (planted, each puzzle file, all)
    and per puzzle kind."""
    simulator = simulator or make_simulator(dict(simulator_cfg))
    items = [planted_item(planted_corpus)] if planted_corpus is not None else []
    for path in puzzle_files:
        items += load_puzzles(path)
    t0 = time.monotonic()
    rows = [score_item(simulator, it) for it in tqdm(items, desc="check", leave=False)]
    return {"simulator": simulator_cfg, "identity": simulator_identity(simulator_cfg),
            "harness_version": __version__, "puzzle_files": [shown_path(p) for p in puzzle_files],
            "wall_s": round(time.monotonic() - t0, 1), **report(rows, resamples, seed)}


# --- Scorers that judge whole windows -------------------------------------------------------------

@dataclass
class ScorerItem:
    """A neuron whose true explanation is known, for a scorer that judges windows."""
    name: str
    group: str
    kind: str | None
    neuron: NeuronRecord
    candidates: list[str]
    true_index: int


def puzzle_neurons(items: list[Item], negatives: int | None = None, seed: int = 0) -> list[ScorerItem]:
    """Each puzzle as a neuron: its `test` split holds the puzzle's window (kind "top", its
    activations) and, as inactive windows, the texts of the other puzzles of its file with the
    marks stripped (kind "random", activations 0). `calibration` holds the same windows, so
    q-thresholds are defined; `max_activation` is 10, the puzzles' scale. The true explanation is
    the first candidate. `negatives`: at most this many other puzzles per puzzle, a seeded draw (a
    judge model's time grows with the windows)."""
    out = []
    for item in items:
        if len(item.records) != 1:
            raise ConfigError(f"{item.name}: puzzle_neurons takes puzzles (one window each), "
                              f"not {len(item.records)} windows")
        own = item.records[0]
        top = ActivationRecord(list(own.tokens), list(own.activations), doc_id=item.name, kind="top")
        others = [ActivationRecord(list(o.records[0].tokens), [0.0] * len(o.records[0].tokens), doc_id=o.name,
                                   kind="random") for o in items if o.group == item.group and o is not item]
        if negatives is not None and len(others) > negatives:
            keep = np.random.default_rng([seed, len(out)]).choice(len(others), size=negatives, replace=False)
            others = [others[i] for i in sorted(keep)]
        windows = [top, *others]
        acts = np.concatenate([r.activations for r in windows])
        neuron = NeuronRecord(layer=0, neuron=len(out), calibration=list(windows), test=list(windows),
                              mean=float(acts.mean()), variance=float(acts.var()), max_activation=10.0)
        out.append(ScorerItem(item.name, item.group, item.kind, neuron, [item.true, *item.false], 0))
    return out


def check_scorer(score_fn: Callable[[list[tuple[NeuronRecord, str]]], list[float]], items: list[ScorerItem], *,
                 no_information: float, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """A scorer checked as a simulator is: `score_fn` gets one item's (neuron, candidate) pairs and
    returns one score per candidate, higher meaning a better explanation (NaN: undefined, counted
    as the metric's `no_information` value). Returns `report`'s summary per group, over all items
    and per kind, with the rows."""
    t0 = time.monotonic()
    rows = []
    for item in tqdm(items, desc="check scorer", leave=False):
        scores = list(score_fn([(item.neuron, c) for c in item.candidates]))
        if len(scores) != len(item.candidates):
            raise ConfigError(f"{item.name}: the scorer returned {len(scores)} scores "
                              f"for {len(item.candidates)} candidates")
        rows.append({**ranked(item.name, scores, item.true_index, item.group, item.kind, no_information),
                     "true": item.candidates[item.true_index]})
    return {"wall_s": round(time.monotonic() - t0, 1), **report(rows, resamples, seed)}


def shown_path(path: str | Path) -> str:
    """A puzzle file as recorded: relative to the repository when in it (no checkout's absolute path
    in a committed result)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def describe(simulator: dict[str, Any]) -> str:
    """The simulator's kind, then its model (if any) and other parameters."""
    llm = simulator.get("llm")
    words = [simulator["kind"]] + ([f"{llm['backend']}:{llm.get('model')}"] if llm else [])
    return " ".join(words + [f"{k}={v}" for k, v in simulator.items() if k not in ("kind", "llm")])


def table(result: dict[str, Any]) -> str:
    """The summary as Markdown: a row per group, over all items, then a row per puzzle kind."""
    head = [f"simulator check: {describe(result['simulator'])} (identity {result['identity'][:12]})"] \
        if "simulator" in result else []
    lines = head + ["| items | n | ranked first | chance | mean rank (chance) | mean margin | 95% CI |",
                    "|---|---|---|---|---|---|---|"]
    groups = [*result["summary"].items(), *((f"kind: {k}", s) for k, s in result.get("by_kind", {}).items())]
    for group, s in groups:
        lo, hi = s["margin_ci95"]
        lines.append(f"| {group} | {s['n']} | {s['first']}/{s['n']} | {s['chance_first'] * s['n']:.1f}/{s['n']} | "
                     f"{s['mean_rank']:.2f} ({s['chance_rank']:.2f}) | {fmt(s['mean_margin'], '+.3f')} | "
                     f"[{fmt(lo, '+.3f')}, {fmt(hi, '+.3f')}] |")
    return "\n".join(lines)


def store_path(store: str | Path, result: dict[str, Any]) -> Path:
    return Path(store) / f"{result['simulator']['kind']}-{result['identity'][:12]}.json"


def stored_check(simulator: dict[str, Any], store: str | Path = REPO_ROOT / "reports" / "simulator_checks"
                 ) -> dict[str, Any] | None:
    """The stored check of this simulator (by identity), or None."""
    identity = simulator_identity(simulator)
    path = Path(store) / f"{simulator.get('kind')}-{identity[:12]}.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("identity") == identity else None


@hydra.main(version_base="1.3", config_path="../conf", config_name="check/simulator")
@exit_on_harness_error
def main(cfg: DictConfig) -> None:
    simulator_cfg = OmegaConf.to_container(cfg.simulator, resolve=True)
    files = list(cfg.puzzles) if cfg.puzzles is not None else sorted(PUZZLE_DIR.glob("*.json"))
    corpus = OmegaConf.to_container(cfg.corpus, resolve=True) if cfg.planted else None
    result = run_check(simulator_cfg, files, corpus,
                       cfg.bootstrap.resamples, cfg.bootstrap.seed)
    out = [hydra_output_dir() / "results.json"]
    if cfg.store:
        out.append(store_path(REPO_ROOT / cfg.store, result))
    for path in out:
        write_json(path, result)
    print(table(result))
    print("\nwrote " + " and ".join(map(str, out)))


if __name__ == "__main__":
    main()
