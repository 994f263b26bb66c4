"""Ground-truth puzzles (tests/puzzles.json, written for NeuronBench): short texts with hand-set
activations, each with one true explanation and three false ones. Each explanation is simulated
with the all_at_once SmolLM2 simulator and scored by correlation with the set activations; the
figure reported is how often the true explanation ranks first (chance: 25%)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.records import ActivationRecord
from harness.scoring.correlation import correlation_scores
from harness.simulate import AllAtOnceSimulator

PUZZLES = json.loads((Path(__file__).parent / "puzzles.json").read_text())["puzzles"]
_TOKEN = re.compile(r"(\s?)\[\[([^\]|]+)(?:\|(\d+))?\]\]|\s?\w+|\s?[^\w\s]")


def puzzle_record(text: str) -> ActivationRecord:
    """`[[word]]` is a token with activation 10, `[[word|k]]` one with k; other tokens 0."""
    tokens, acts = [], []
    for m in _TOKEN.finditer(text):
        if m.group(2):
            tokens.append(m.group(1) + m.group(2))
            acts.append(float(m.group(3) or 10))
        else:
            tokens.append(m.group(0))
            acts.append(0.0)
    return ActivationRecord(tokens=tokens, activations=acts)


def test_puzzle_file_is_well_formed():
    assert len(PUZZLES) >= 8
    for p in PUZZLES:
        record = puzzle_record(p["text"])
        assert "".join(record.tokens) == re.sub(r"\[\[([^\]|]+)(?:\|\d+)?\]\]", r"\1", p["text"])
        assert max(record.activations) == 10 and sum(a > 0 for a in record.activations) >= 2
        assert len(p["false"]) == 3 and p["true"] not in p["false"]


@pytest.mark.slow
def test_true_explanation_ranks_first_above_chance(smollm2, capsys, record_property):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sim = AllAtOnceSimulator(model=smollm2.model, tokenizer=smollm2.tokenizer)
        firsts, lines = [], []
        for p in PUZZLES:
            record = puzzle_record(p["text"])
            candidates = [p["true"], *p["false"]]
            scores = [correlation_scores([record], sim.simulate(e, [record]))["ev_correlation_score"] for e in candidates]
            scores = [-np.inf if np.isnan(s) else s for s in scores]
            rank = 1 + sum(s > scores[0] for s in scores[1:])
            firsts.append(rank == 1)
            lines.append(f"  rank {rank}  true {scores[0]:+.2f}  best false {max(scores[1:]):+.2f}  {p['true']}")
    finally:
        torch.set_num_threads(threads)
    accuracy = float(np.mean(firsts))
    record_property("puzzle_top1_accuracy", accuracy)
    with capsys.disabled():
        print(f"\nground-truth puzzles: true explanation ranked first in {sum(firsts)}/{len(firsts)} "
              f"= {accuracy:.0%} (chance 25%), all_at_once SmolLM2-135M, ev_correlation_score")
        print("\n".join(lines))
    assert accuracy > 0.25
