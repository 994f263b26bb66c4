"""The simulator check (harness/check_simulator.py) and its puzzle files (harness/puzzles/*.json,
written for NeuronBench): well-formedness, the rules a semantic puzzle keeps (its true explanation
names no marked token; a distractor lists tokens of the text), the ranking arithmetic on a
simulator whose answers are known (token_match) and on a scorer whose answers are known, the
summary per puzzle kind, the neurons built from puzzles for window scorers, typed errors for bad
files, the stored result keyed by the simulator's identity, and the real check of all_at_once
SmolLM2 against chance."""

import json
import re

import numpy as np
import pytest

from harness.check_simulator import (PUZZLE_DIR, Item, check_scorer, load_puzzles, puzzle_neurons, puzzle_record,
                                     run_check, score_item, simulator_identity, store_path, stored_check, table)
from harness.errors import ConfigError
from harness.simulate import TokenMatchSimulator

FILES = sorted(PUZZLE_DIR.glob("*.json"))


def test_puzzle_files_are_well_formed():
    assert [f.stem for f in FILES] == ["basic", "close", "semantic"]
    counts, kinds = {}, {}
    for path in FILES:
        data = json.loads(path.read_text())
        puzzles = data["puzzles"]
        counts[path.stem], kinds[path.stem] = len(puzzles), data["kind"]
        assert len(load_puzzles(path)) == len(puzzles)
        for p in puzzles:
            record = puzzle_record(p["text"])
            assert "".join(record.tokens) == re.sub(r"\[\[([^\]|]+)(?:\|\d+)?\]\]", r"\1", p["text"])
            assert max(record.activations) == 10 and sum(a > 0 for a in record.activations) >= 2
            assert len(p["false"]) == 3 and p["true"] not in p["false"]
    assert counts["basic"] >= 8 and counts["close"] >= 20 and counts["semantic"] >= 24
    assert kinds == {"basic": "lexical", "close": "lexical", "semantic": "semantic"}


def _words(text: str) -> set[str]:
    """Lowercased words with a trailing "s" stripped: "Months" and "month" are one word."""
    return {w.lower().removesuffix("s") for w in re.findall(r"\w+", text)}


def test_semantic_puzzles_name_no_marked_token_and_offer_a_token_list():
    path = PUZZLE_DIR / "semantic.json"
    items = load_puzzles(path)
    assert len(items) >= 24 and all(it.kind == "semantic" for it in items)
    for it in items:
        record = it.records[0]
        marked = {t.strip().lower() for t, a in zip(record.tokens, record.activations) if a > 0}
        assert len(marked) >= 3 and any(0 < a < 10 for a in record.activations), it.name  # several, graded
        shared = _words(it.true) & {m.removesuffix("s") for m in marked}
        assert not shared and '"' not in it.true, f"{it.name}: the true explanation names {shared}"
        tokens = {t.strip().lower() for t in record.tokens}
        # a token list: quoted tokens of the text, at least one of them unmarked (else it would be true)
        lists = [f for f in it.false if (quoted := {q.lower() for q in re.findall(r'"([^"]+)"', f)})
                 and quoted <= tokens and quoted - marked]
        assert lists, f"{it.name}: no false explanation lists tokens of the text"


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


def _write(path, kind, puzzles):
    path.write_text(json.dumps({**({"kind": kind} if kind else {}), "puzzles": puzzles}))
    return path


def test_summary_per_kind(tmp_path):
    lex = _write(tmp_path / "lex.json", "lexical", [
        {"text": "A [[cat]] saw a [[dog]] by the door.", "true": '"cat", "dog"', "false": ['"door"', '"saw"', '"by"']},
        {"text": "We ate [[bread]] and [[soup]] at noon.", "true": '"noon"', "false": ['"bread", "soup"', '"we"']}])
    sem = _write(tmp_path / "sem.json", "semantic", [
        {"text": "A [[cat]] saw a [[dog]] by the door.", "true": "animals", "false": ['"door"', '"cat", "saw"']}])
    plain = _write(tmp_path / "plain.json", None, [
        {"text": "The [[red]] van.", "true": '"red"', "false": ['"van"']}])
    result = run_check({"kind": "token_match", "high": 10.0}, [lex, sem, plain], planted_corpus=None, resamples=200)
    by_kind = result["by_kind"]
    assert list(by_kind) == ["lexical", "semantic"]  # a file that names no kind is in no kind's row
    # ranks 1 and 2.5 ("noon" is below "bread", "soup" and tied with "we": both name one unmarked token)
    assert (by_kind["lexical"]["n"], by_kind["lexical"]["first"], by_kind["lexical"]["mean_rank"]) == (2, 1, 1.75)
    # the semantic item: "animals" names no token (constant → 0), "door" r < 0, "cat", "saw" r > 0
    assert (by_kind["semantic"]["n"], by_kind["semantic"]["first"], by_kind["semantic"]["mean_rank"]) == (1, 0, 2.0)
    assert by_kind["semantic"]["chance_first"] == pytest.approx(1 / 3)
    assert result["summary"]["all"]["n"] == 4 and result["summary"]["plain"]["first"] == 1
    assert [r["kind"] for r in result["items"]["sem"]] == ["semantic"]
    assert "| kind: lexical | 2 | 1/2 |" in table(result) and "| kind: semantic | 1 | 0/1 |" in table(result)


def test_puzzle_neurons_hold_the_puzzle_and_the_other_texts_of_its_file():
    from harness.scoring.windows import threshold_value, window_labels

    items = load_puzzles(PUZZLE_DIR / "semantic.json") + load_puzzles(PUZZLE_DIR / "basic.json")
    built = puzzle_neurons(items)
    assert len(built) == len(items)
    for it, b in zip(items, built):
        n, same_file = b.neuron, [o for o in items if o.group == it.group]
        assert (b.name, b.group, b.kind, b.candidates[b.true_index]) == (it.name, it.group, it.kind, it.true)
        assert b.candidates == [it.true, *it.false] and n.max_activation == 10.0
        assert n.test[0].tokens == it.records[0].tokens and n.test[0].activations == it.records[0].activations
        assert [r.kind for r in n.test] == ["top"] + ["random"] * (len(same_file) - 1)
        others = ["".join(o.records[0].tokens) for o in same_file if o is not it]
        assert ["".join(r.tokens) for r in n.test[1:]] == others
        assert all(a == 0 for r in n.test[1:] for a in r.activations)
        assert [r.tokens for r in n.calibration] == [r.tokens for r in n.test]
        assert window_labels(n, n.test).tolist() == [True] + [False] * (len(same_file) - 1)
        assert np.isfinite(threshold_value(n, "q99"))  # calibration defines q-thresholds
    with pytest.raises(ConfigError, match="one window each"):
        puzzle_neurons([Item("planted", items[0].records * 2, "t", ["f"], "planted")])


def test_check_scorer_ranks_as_the_simulator_check_does(tmp_path):
    from harness.scoring.correlation import correlation_scores

    files = [PUZZLE_DIR / "basic.json", PUZZLE_DIR / "semantic.json"]
    items = puzzle_neurons([it for f in files for it in load_puzzles(f)])

    def token_match_on_top_window(pairs):
        sim, out = TokenMatchSimulator(), []
        for neuron, explanation in pairs:
            top = [r for r in neuron.test if r.kind == "top"]
            out.append(correlation_scores(top, sim.simulate(explanation, top))["ev_correlation_score"])
        return out

    scored = check_scorer(token_match_on_top_window, items, no_information=0.0, resamples=200)
    simulated = run_check({"kind": "token_match", "high": 10.0}, files, planted_corpus=None, resamples=200)
    for mine, theirs in [*zip(scored["summary"].values(), simulated["summary"].values()),
                         *zip(scored["by_kind"].values(), simulated["by_kind"].values())]:
        assert (mine["n"], mine["first"], mine["mean_rank"]) == (theirs["n"], theirs["first"], theirs["mean_rank"])
        assert mine["mean_margin"] == pytest.approx(theirs["mean_margin"], abs=1e-6)
    assert list(scored["summary"]) == list(simulated["summary"]) and list(scored["by_kind"]) == ["lexical", "semantic"]

    # a scorer whose ranking is known: the longer explanation scores higher; NaN for "undefined"
    lex = _write(tmp_path / "lex.json", "lexical", [
        {"text": "A [[cat]].", "true": "a long true one", "false": ["short", "shorter one"]},
        {"text": "A [[dog]].", "true": "x", "false": ["yy", "zzz"]}])
    sem = _write(tmp_path / "sem.json", "semantic", [
        {"text": "A [[cow]].", "true": "abc", "false": ["def", "g", "undefined"]}])
    items = puzzle_neurons(load_puzzles(lex) + load_puzzles(sem))
    result = check_scorer(lambda pairs: [float("nan") if e == "undefined" else len(e) for _, e in pairs], items,
                          no_information=3.0, resamples=200)
    rows = [r for g in result["items"].values() for r in g]
    assert [r["rank"] for r in rows] == [1, 3, 2]  # "abc" ties "def" and "undefined" (counted as 3.0)
    assert [r["margin"] for r in rows] == [4.0, -2.0, 0.0]
    assert rows[2]["scores"] == [3.0, 3.0, 1.0, 3.0]
    assert (result["by_kind"]["lexical"]["first"], result["by_kind"]["lexical"]["mean_rank"]) == (1, 2.0)
    assert (result["by_kind"]["semantic"]["first"], result["by_kind"]["semantic"]["chance_first"]) == (0, 0.25)
    assert result["summary"]["all"]["mean_margin"] == pytest.approx(2 / 3)
    assert "| kind: semantic | 1 | 0/1 |" in table(result)
    with pytest.raises(ConfigError, match="returned 1 scores for 3 candidates"):
        check_scorer(lambda pairs: [0.0], items, no_information=0.0)


@pytest.mark.parametrize("content", ['{"puzzles": [{"text": "no marks here", "true": "a", "false": ["b"]}]}',
                                     '{"puzzles": [{"text": "a [[b]] c", "true": "a", "false": ["a"]}]}',
                                     '{"puzzles": [{"text": "a [[b]] c", "true": "a", "false": []}]}',
                                     '{"nope": []}', "[1, 2", '{"puzzles": [3]}', "[]",
                                     '{"kind": "spatial", "puzzles": [{"text": "a [[b]]", "true": "a", '
                                     '"false": ["c"]}]}'])
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
    """The real check of the offline LLM simulator on the project's lexical puzzles; prints its table.
    (On the semantic puzzles it is near chance: measured by the CLI, docs/simulators.md.)"""
    from harness.simulate import AllAtOnceSimulator

    sim = AllAtOnceSimulator(model=smollm2.model, tokenizer=smollm2.tokenizer)
    cfg = {"kind": "all_at_once", "llm": {"backend": "hf_local", "model": "smollm2_135m_instruct",
                                          "subject": "smollm2_135m"}}
    lexical = [f for f in FILES if json.loads(f.read_text())["kind"] == "lexical"]
    result = run_check(cfg, lexical, planted_corpus=None, resamples=500, simulator=sim)
    s = result["summary"]["all"]
    record_property("puzzle_top1", s["first"] / s["n"])
    with capsys.disabled():
        print("\n" + table(result))
    assert s["mean_rank"] < s["chance_rank"] and np.isfinite(s["mean_margin"])


def test_board_shows_the_stored_check_of_an_entrys_simulator():
    from harness.leaderboard.assess import simulator_check_label

    stored = stored_check({"kind": "token_match", "high": 10.0})  # reports/simulator_checks/, committed
    lexical, semantic = stored["by_kind"]["lexical"], stored["by_kind"]["semantic"]
    assert simulator_check_label({"kind": "token_match", "high": 10.0}).startswith(
        f"lexical {lexical['first']}/{lexical['n']} first (chance {lexical['chance_first'] * lexical['n']:.1f}), "
        f"semantic {semantic['first']}/{semantic['n']} first")
    assert simulator_check_label({"kind": "token_match", "high": 3.0}) == "n/a"
