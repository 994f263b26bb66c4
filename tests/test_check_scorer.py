"""The check of a scorer that judges the explanation itself (python -m harness.check_scorer), on the
real offline embedding model and the project's puzzle files."""

import pytest

from harness.check_scorer import run_check
from harness.check_simulator import PUZZLE_DIR
from harness.errors import ConfigError


def test_a_scorer_of_simulations_is_sent_to_the_simulator_check():
    with pytest.raises(ConfigError, match="check_simulator"):
        run_check("correlation", {}, [PUZZLE_DIR / "basic.json"], None)


@pytest.mark.slow
def test_embedding_is_checked_per_puzzle_kind():
    files = [PUZZLE_DIR / "basic.json", PUZZLE_DIR / "semantic.json"]
    result = run_check("embedding", {}, files, None, resamples=200, metric="similarity_gap")
    assert result["metric"] == "similarity_gap" and set(result["by_kind"]) == {"lexical", "semantic"}
    semantic = result["by_kind"]["semantic"]
    assert semantic["n"] >= 24 and 0 <= semantic["first"] <= semantic["n"]
    rows = result["items"]["semantic"]
    assert all(len(r["scores"]) == r["candidates"] and 1 <= r["rank"] <= r["candidates"] for r in rows)
    # the same scorer with another ranking metric is another instrument
    assert run_check("embedding", {}, [PUZZLE_DIR / "basic.json"], None, resamples=200)["identity"] != result["identity"]
