"""The simulator check (harness/check_simulator.py) and its puzzle files (harness/puzzles/*.json,
written for NeuronBench): well-formedness, the ranking arithmetic on a simulator whose answers
are known (token_match), typed errors for bad files, the stored result keyed by the simulator's
identity, and the real check of all_at_once SmolLM2 against chance."""

import json
import re

import numpy as np
import pytest

from harness.check_simulator import (PUZZLE_DIR, Item, load_puzzles, puzzle_record, run_check, score_item,
                                     simulator_identity, store_path, stored_check, table)
from harness.errors import ConfigError
from harness.simulate import TokenMatchSimulator

FILES = sorted(PUZZLE_DIR.glob("*.json"))


def test_puzzle_files_are_well_formed():
    assert [f.stem for f in FILES] == ["basic", "close"]
    counts = {}
    for path in FILES:
        puzzles = json.loads(path.read_text())["puzzles"]
        counts[path.stem] = len(puzzles)
        assert len(load_puzzles(path)) == len(puzzles)
        for p in puzzles:
            record = puzzle_record(p["text"])
            assert "".join(record.tokens) == re.sub(r"\[\[([^\]|]+)(?:\|\d+)?\]\]", r"\1", p["text"])
            assert max(record.activations) == 10 and sum(a > 0 for a in record.activations) >= 2
            assert len(p["false"]) == 3 and p["true"] not in p["false"]
    assert counts["basic"] >= 8 and counts["close"] >= 20


def test_ranks_and_margins_on_a_simulator_with_known_answers():
    record = puzzle_record("The [[red]] car and the [[blue]] van.")
    sim = TokenMatchSimulator()
    # true names the marked tokens; one false names an unmarked one, one names nothing (constant: r undefined → 0)
    row = score_item(sim, Item("x", [record], '"red", "blue"', ['"car"', '"zebra"', '"red", "blue"x']))
    assert row["scores"][0] == pytest.approx(1.0) and row["scores"][2] == 0.0
    assert row["rank"] == 1.5 and not row["first"]  # tied with the last candidate (it names the same tokens)
    assert row["margin"] == pytest.approx(0.0)
    row = score_item(sim, Item("y", [record], '"red", "blue"', ['"car"', '"van"']))
    assert row["first"] and row["rank"] == 1 and row["margin"] == pytest.approx(1.0 - max(row["scores"][1:]))
    wrong = score_item(sim, Item("z", [record], '"car"', ['"red", "blue"', '"van"']))
    assert wrong["rank"] == 2.5 and wrong["margin"] < 0  # below "red", "blue"; tied with "van" (both r < 0, equal)


def test_check_on_a_puzzle_file_stores_by_identity(tmp_path):
    puzzles = {"puzzles": [
        {"text": "A [[cat]] saw a [[dog]] by the door.", "true": '"cat", "dog"', "false": ['"door"', '"saw"', '"by"']},
        {"text": "We ate [[bread]] and [[soup]] at noon.", "true": '"noon"', "false": ['"bread", "soup"', '"we"', '"at"']}]}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(puzzles))
    cfg = {"kind": "token_match", "high": 10.0}
    result = run_check(cfg, [path], planted_corpus=None, resamples=200)
    s = result["summary"]["mine"]
    assert (s["n"], s["first"], s["mean_rank"], s["chance_first"]) == (2, 1, 2.0, 0.25)
    assert s["margin_ci95"][0] <= s["mean_margin"] <= s["margin_ci95"][1]
    assert result["summary"]["all"]["n"] == 2 and "| mine | 2 | 1/2 |" in table(result)
    out = store_path(tmp_path / "store", result)
    out.parent.mkdir()
    out.write_text(json.dumps(result))
    assert stored_check(cfg, tmp_path / "store")["summary"] == json.loads(json.dumps(result["summary"]))
    assert stored_check({**cfg, "high": 5.0}, tmp_path / "store") is None  # another instrument
    assert simulator_identity(cfg) != simulator_identity({**cfg, "high": 5.0})
    assert result["puzzle_files"] == [str(path.resolve())]  # a file outside the repository: its full path
    project = run_check(cfg, [PUZZLE_DIR / "basic.json"], planted_corpus=None, resamples=200)
    assert project["puzzle_files"] == ["harness/puzzles/basic.json"]  # no checkout's path in a stored result


@pytest.mark.parametrize("content", ['{"puzzles": [{"text": "no marks here", "true": "a", "false": ["b"]}]}',
                                     '{"puzzles": [{"text": "a [[b]] c", "true": "a", "false": ["a"]}]}',
                                     '{"puzzles": [{"text": "a [[b]] c", "true": "a", "false": []}]}',
                                     '{"nope": []}', "[1, 2", '{"puzzles": [3]}'])
def test_bad_puzzle_files_are_typed_errors(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="puzzle"):
        load_puzzles(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_puzzles(tmp_path / "missing.json")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_all_at_once_smollm2_check_above_chance(smollm2, capsys, record_property):
    """The real check of the offline LLM simulator on the project's puzzles; prints its table."""
    from harness.simulate import AllAtOnceSimulator

    sim = AllAtOnceSimulator(model=smollm2.model, tokenizer=smollm2.tokenizer)
    cfg = {"kind": "all_at_once", "llm": {"backend": "hf_local", "model": "smollm2_135m_instruct",
                                          "subject": "smollm2_135m"}}
    result = run_check(cfg, FILES, planted_corpus=None, resamples=500, simulator=sim)
    s = result["summary"]["all"]
    record_property("puzzle_top1", s["first"] / s["n"])
    with capsys.disabled():
        print("\n" + table(result))
    assert s["mean_rank"] < s["chance_rank"] and np.isfinite(s["mean_margin"])


def test_board_shows_the_stored_check_of_an_entrys_simulator():
    from harness.leaderboard.assess import simulator_check_label

    stored = stored_check({"kind": "token_match", "high": 10.0})  # reports/simulator_checks/, committed
    s = stored["summary"]["all"]
    assert simulator_check_label({"kind": "token_match", "high": 10.0}).startswith(f"{s['first']}/{s['n']} first")
    assert simulator_check_label({"kind": "token_match", "high": 3.0}) == "n/a"
