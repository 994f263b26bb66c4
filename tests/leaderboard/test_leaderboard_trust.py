"""Issue 22: every number on the board is one we computed. Each test here is one case of the
second hostile review (its id in the name), run against the tiny board of tests/leaderboard/test_leaderboard.py."""

from __future__ import annotations

import copy
import importlib
import json
import shutil
from pathlib import Path

import pytest

from harness import leaderboard as lb
from harness.leaderboard.__main__ import main
from harness.leaderboard.rows import board_rows, random_weight_rows
from harness.leaderboard.entry import fingerprint
from harness.leaderboard.verification_records import load_records
from harness.leaderboard.verify import recomputed_summary
from tests.leaderboard.test_leaderboard import _entry_file, _load, board, honest, lb_cells, lb_sets  # noqa: F401

verify_module = importlib.import_module("harness.leaderboard.verify")  # the package re-exports a function `verify`
records_module = importlib.import_module("harness.leaderboard.verification_records")


def _refused(entry: dict, cfg: dict, match: str) -> None:
    with pytest.raises(lb.EntryError, match=match):
        lb.validate_entry(json.loads(json.dumps(entry)), cfg["max_explanation_chars"])


def _order(entry: dict) -> list[tuple[int, int]]:
    return [(n["layer"], n["neuron"]) for n in entry["neurons"]]


def _status(cfg: dict, name: str) -> lb.Assessed:
    return next(a for a in lb.assess(cfg) if a.path.stem == name)


# --- the board shows only what it computed (L1, L6, L7, L15) ----------------------------------

def test_L1_a_summary_block_for_a_scorer_the_entry_did_not_run_is_refused(honest):
    entry, cfg = honest
    forged = copy.deepcopy(entry)
    block = copy.deepcopy(entry["summary"]["scores"]["correlation"])
    block.update(metric="score", mean=0.99, metrics={"score": {**block["metrics"]["ev_correlation_score"], "mean": 0.99}})
    forged["summary"]["scores"]["ablation"] = block
    _refused(forged, cfg, r"summary.scores has blocks for \['ablation', 'correlation'\]; the entry ran \['correlation'\]")


@pytest.mark.parametrize("metric, match", [("bogus", "has no metric 'bogus'|headline metric of correlation"),
                                           ("rsquared", "the headline metric of correlation is 'ev_correlation_score'")])
def test_L6_L7_the_headline_metric_is_the_scorers_own(honest, metric, match):
    entry, cfg = honest
    forged = copy.deepcopy(entry)
    forged["summary"]["scores"]["correlation"]["metric"] = metric
    _refused(forged, cfg, match)


def test_L15_control_values_for_a_control_the_entry_did_not_run_are_refused(honest):
    entry, cfg = honest
    forged = copy.deepcopy(entry)
    forged["controls"]["floor"] = False  # the floor blocks below are now claims of a control never run
    _refused(forged, cfg, "summary.floor is given, but the entry did not run that control")


def test_the_board_shows_the_summary_it_recomputed_not_the_claimed_one(board):
    """A claimed mean off by less than the summary tolerance verifies, but the board shows ours."""
    cfg = board["cfg"]
    claimed = _load(board["paths"]["top-tokens"])["summary"]["scores"]["correlation"]["mean"]
    _entry_file(cfg, board["paths"]["top-tokens"], "top-tokens", lambda e: e["summary"]["scores"]["correlation"]
                .update(mean=claimed + 5e-7))
    assessed = lb.assess(cfg, use_cache=False)
    assert {a.status for a in assessed} == {"verified"}
    row = next(r for r in board_rows(assessed)[next(iter(board_rows(assessed)))] if r["name"] == "top-tokens")
    entry = lb.read_entry(board["paths"]["top-tokens"], cfg)
    assert row["mean"] == recomputed_summary(entry, _order(entry))["scores"]["correlation"]["mean"] != claimed + 5e-7


# --- sampled verification that a submitter cannot aim (L2, L3) ---------------------------------

@pytest.mark.parametrize("part, value", [("scores", 1e6), ("scores", -1.5), ("floor", 2.0), ("ceiling", -7.0)])
def test_L2_every_per_neuron_value_is_range_checked_on_every_neuron(honest, part, value):
    entry, cfg = honest
    forged = copy.deepcopy(entry)
    forged["neurons"][-1][part]["correlation.ev_correlation_score"] = value
    _refused(forged, cfg, r"correlation.ev_correlation_score = .* is outside the metric's range \[-1, 1\]")


def test_L2_a_sampled_verification_without_the_key_stays_pending(honest, monkeypatch):
    entry, cfg = honest
    cfg = {**cfg, "verify": {**cfg["verify"], "full": [], "sample_neurons": 3}}
    monkeypatch.delenv("NEURONBENCH_VERIFY_KEY", raising=False)
    result = lb.verify(entry, cfg, entry_sha256="ab" * 32)
    assert result.status == "pending" and result.checked == 0 and "cannot aim it" in result.note


def test_L3_a_small_shift_on_every_neuron_fails_an_api_entry(honest, monkeypatch):
    """Each neuron within the API tolerance (0.05), their mean (+0.049) beyond api_mean."""
    entry, cfg = honest
    monkeypatch.setattr(verify_module, "uses_api", lambda simulator: True)  # token_match standing in for an API
    shifted = copy.deepcopy(entry)
    for n in shifted["neurons"]:
        v = n["scores"].get("correlation.ev_correlation_score")
        if v is not None:
            n["scores"]["correlation.ev_correlation_score"] = v + 0.049 if v < 0.9 else v - 0.049
    ours = recomputed_summary(shifted, _order(shifted))
    shifted["summary"].update({k: ours[k] for k in ("scores", "floor", "ceiling")})  # a consistent summary
    assert lb.verify(entry, cfg).status == "verified"
    result = lb.verify(shifted, cfg)
    assert result.status == "failed"
    assert any("on average over" in p and "beyond the mean tolerance of 0.01" in p for p in result.problems)
    assert not any(p.startswith("layer ") for p in result.problems), result.problems  # no neuron out of tolerance


# --- types and canonical forms (L9, L12, L13, L16, L20) ----------------------------------------

@pytest.mark.parametrize("mutate, match", [
    (lambda e: e["simulator"]["parameters"].update(high="abc"), r"simulator.high='abc' must be a finite number"),
    (lambda e: e["simulator"]["parameters"].update(high=[1, 2]), r"simulator.high=\[1, 2\] must be a finite number"),
    (lambda e: e["scorers"].update(threshold={"quantiles": [5, -1]}), r"scorer.threshold.quantiles.0=5 must be a number in \(0, 1\]"),
])
def test_L9_parameters_of_the_wrong_type_are_refused_not_a_crash(honest, mutate, match):
    entry, cfg = honest
    mutate(entry)
    with pytest.raises(lb.EntryError, match=match):
        lb.resolve_components(entry)


def test_L9_a_negative_seed_is_refused_by_the_schema(honest):
    entry, cfg = honest
    entry["stats"]["seed"] = -1
    _refused(entry, cfg, "stats/seed")


def test_L13_fingerprints_are_canonical(honest):
    entry, _ = honest
    as_int = copy.deepcopy(entry)
    as_int["simulator"]["parameters"]["high"] = 10
    assert entry["simulator"]["parameters"]["high"] == 10.0 and fingerprint(as_int) == fingerprint(entry)


def test_L20_duplicate_json_keys_are_refused_in_entries_and_records(board):
    cfg = board["cfg"]
    text = board["paths"]["top-tokens"].read_text()
    with pytest.raises(lb.EntryError, match="holds the key 'submitter' twice"):
        lb.parse_entry_text(text.replace('"submitter":', '"submitter":"x","submitter":', 1))
    (cfg["entries_dir"].parent / "verification.json").write_text('{"top-tokens": {}, "top-tokens": {"status": "x"}}')
    with pytest.raises(lb.EntryError, match="verification.json cannot be read .*twice"):
        load_records(cfg)


def test_L12_a_record_rewritten_with_30_0_for_30_keeps_its_signature(board, monkeypatch):
    cfg = board["cfg"]
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "maintainers-secret")
    path = board["paths"]["top-tokens"]
    entry = lb.read_entry(path, cfg)
    lb.record_verification(path, lb.Verification("top-tokens", "verified", 8, 8), entry, cfg)
    store = cfg["entries_dir"].parent / "verification.json"
    assert lb.trusted_record(path, entry, cfg).status == "verified"
    store.write_text(store.read_text().replace('"checked": 8,', '"checked": 8.0,'))
    assert '"checked": 8.0' in store.read_text()
    assert lb.trusted_record(path, entry, cfg).status == "verified"  # the same record, canonically


@pytest.mark.parametrize("date", ["２０２６-01-01", "0000-00-00", "2026-02-30", "1999-01-01", "2026-01-01T25:00:00Z"])
def test_L16_dates_are_strict_iso_8601_and_in_range(honest, date):
    entry, cfg = honest
    entry["date"] = date
    _refused(entry, cfg, "date")


# --- text is data (L4, L5, L14, L19) -------------------------------------------------------------

@pytest.mark.parametrize("where, value", [("submitter", "a\ud800b"), ("submitter", "\u202eevil"),
                                          ("explanation", "tokens \ud800"),
                                          ("explanation", "left \u202e right")])
def test_L4_L14_entry_text_is_validated(honest, where, value):
    entry, cfg = honest
    if where == "explanation":
        entry["neurons"][0]["explanation"] = value
    else:
        entry[where] = value
    _refused(entry, cfg, "lone surrogate|bidirectional control|control character")


def test_explanations_may_quote_control_tokens(honest):
    """A byte token such as U+001A is a real token a weight baseline names: kept, escaped when shown."""
    entry, cfg = honest
    entry["neurons"][0]["explanation"] = 'fires on the tokens "\x1a", "posium"'
    lb.validate_entry(entry, cfg["max_explanation_chars"])


# --- cost, records, revocation (L10, L11, L22) -----------------------------------------------------

def test_L10_verification_over_the_budget_is_pending_for_the_maintainers(honest):
    entry, cfg = honest
    simulator, scorers = lb.resolve_components(entry)
    assert verify_module.estimated_seconds(entry, simulator, scorers, cfg) < cfg["verify"]["budget_seconds"]
    with_ablation = {**scorers, "ablation": {}}
    big = copy.deepcopy(entry)
    big["neuron_set"]["n_neurons"] = 300
    assert verify_module.over_budget(big, simulator, with_ablation, cfg)  # 300 x ~65 s x 3 > 1800 s
    tight = {**cfg, "verify": {**cfg["verify"], "budget_seconds": 0.1}}
    result = lb.verify(entry, tight)
    assert result.status == "pending" and result.checked == 0 and "over the verification budget" in result.note


def test_L10_the_board_ranks_a_costly_entry_only_with_a_signed_record(board, monkeypatch):
    cfg = {**board["cfg"], "verify": {**board["cfg"]["verify"], "budget_seconds": 0.1}}
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "maintainers-secret")
    assert _status(cfg, "top-tokens").status == "pending"
    assert main(["--entries-dir", str(cfg["entries_dir"]), "--sets-dir", str(cfg["sets_dir"]), "verify",
                 str(board["paths"]["top-tokens"]), "--budget-seconds", "1000"]) == 0
    assert _status(cfg, "top-tokens").status == "verified"


def test_L11_records_are_bound_to_the_code_and_revoked_files_never_come_back(board, monkeypatch):
    cfg = {**board["cfg"], "verify": {**board["cfg"]["verify"], "budget_seconds": 0.1}}
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "maintainers-secret")
    path = board["paths"]["top-tokens"]
    entry = lb.read_entry(path, cfg)
    lb.record_verification(path, lb.Verification("top-tokens", "verified", 8, 8), entry, cfg)
    record = load_records(cfg)["top-tokens"]
    assert record["set_hash"] == entry["neuron_set"]["hash"] and record["harness_digest"] == records_module.code_digest()
    assert _status(cfg, "top-tokens").status == "verified"
    monkeypatch.setattr(records_module, "code_digest", lambda: "0" * 64)  # other verifying code: the record is stale
    assert lb.trusted_record(path, entry, cfg) is None
    monkeypatch.undo()
    monkeypatch.setenv("NEURONBENCH_VERIFY_KEY", "maintainers-secret")
    sha = records_module.file_sha256(path)
    revoked = {**cfg, "revoked": [sha]}
    assert lb.trusted_record(path, entry, revoked) is None
    a = _status(revoked, "top-tokens")
    assert a.status == "rejected" and "withdrawn by the maintainers" in a.reason


def test_L22_a_malformed_records_file_is_refused_before_any_verdict(board, capsys):
    cfg = board["cfg"]
    (cfg["entries_dir"].parent / "verification.json").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(SystemExit) as stop:
        main(["--entries-dir", str(cfg["entries_dir"]), "--sets-dir", str(cfg["sets_dir"]), "verify",
              str(board["paths"]["top-tokens"])])
    out = capsys.readouterr()
    assert stop.value.code == 2 and "VERIFIED" not in out.out and "verification.json cannot be read" in out.err


# --- pairing, duplicates and the verdict cache (L8, C1, C2) --------------------------------------

def _control(entry: dict, name: str, value: float | None) -> dict:
    e = copy.deepcopy(entry)
    e["name"], e["neuron_set"]["name"] = name, "tiny-random"
    for n in e["neurons"]:
        n["scores"] = {k: value for k in n["scores"]}
    e["summary"] = recomputed_summary(e, _order(e))
    return e


def test_L8_a_back_dated_entry_claiming_a_label_cannot_take_its_row_or_lift_its_flag(board):
    cfg = {**board["cfg"], "random_weights_controls": {"tiny": "tiny-random"}}
    empty = lb.read_entry(board["paths"]["empty"], cfg)
    top = lb.read_entry(board["paths"]["top-tokens"], cfg)
    impostor = copy.deepcopy(top)  # top-tokens' explanations under baseline_empty's label, back-dated
    impostor.update(name="impostor", date="2023-01-02", explainer=empty["explainer"])
    assessed = [lb.Assessed(board["paths"][n], e, "verified") for n, e in (("empty", empty), ("top-tokens", impostor))]
    honest_control = _control(empty, "r-empty", None)
    weak_control = _control(empty, "r-weak", -1.0)  # a control claiming the same label, built to lose
    assessed += [lb.Assessed(Path(f"{c['name']}.json"), c, "verified") for c in (honest_control, weak_control)]
    rows = {r["trained_entry"]: r for r in random_weight_rows(assessed, cfg)[("tiny", "tiny-random", "correlation")]}
    assert set(rows) == {"empty", "impostor"}  # a row per entry: the impostor did not replace the honest one
    assert rows["empty"]["flagged"] and rows["empty"]["random_entry"] == "r-empty"  # the control it beats least


def test_a_failing_copy_never_pushes_the_verified_original_off(board):
    cfg = board["cfg"]

    def forge(e):
        e["date"] = "2023-01-02"  # earlier than the original
        for n in e["neurons"]:
            n["scores"] = {k: 0.95 for k in n["scores"]}
    _entry_file(cfg, board["paths"]["top-tokens"], "forged", forge)
    status = {a.path.stem: (a.status, a.reason) for a in lb.assess(cfg)}
    assert status["top-tokens"] == ("verified", "") and status["forged"][0] == "failed"


def test_C1_a_cache_hit_still_checks_the_file_name(board):
    cfg = board["cfg"]
    assert _status(cfg, "top-tokens").status == "verified"  # the verdict is now cached for these bytes
    shutil.copy(board["paths"]["top-tokens"], cfg["entries_dir"] / "zz-copy.json")
    status = {a.path.stem: (a.status, a.reason) for a in lb.assess(cfg)}
    assert status["top-tokens"][0] == "verified"
    assert status["zz-copy"][0] == "rejected" and "does not match the entry's name" in status["zz-copy"][1]


def test_C2_a_verdict_does_not_survive_a_change_to_the_sets_data(board, lb_sets, tmp_path):
    sets = tmp_path / "sets"
    shutil.copytree(lb_sets, sets)
    cfg = {**board["cfg"], "sets_dir": sets}
    assert _status(cfg, "top-tokens").status == "verified"
    records = sets / "tiny" / "records.parquet"
    records.write_bytes(records.read_bytes()[: records.stat().st_size // 2])  # the manifest is unchanged
    assert _status(cfg, "top-tokens").status != "verified"
