"""Lite sets (harness.sets.lite): a stratified subset of a frozen set that keeps its records, scores
its neurons exactly as the parent does, and loads, verifies and is named by entries like any set."""

import json
import shutil
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from harness.cell import run_cell
from harness.cli import COMMANDS
from harness.errors import ConfigError, SetIntegrityError
from harness.leaderboard.schema import EntryError, known_set
from harness.paths import SETS_DIR
from harness.records import content_hash, load_set, read_tables
from harness.set_info import set_info
from harness.sets.lite import build_lite
from harness.sets.lite import main as lite_command
from tests.cells import build_tiny_set, cell_cfg

PARENT, LITE = "smollm2-135m-brown-v2", "smollm2-135m-brown-v2-lite"
pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny model's forward passes, on a small machine

CHEAP = ("explainer=baseline_top_tokens", "simulator=token_match", "scorer=[correlation]")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny test set (2 layers x 4 neurons) and its lite set of 2 per layer."""
    root = tmp_path_factory.mktemp("lite")
    parent = build_tiny_set(root / "tiny")
    lite, _ = build_lite(parent, per_layer=2, seed=3, name="tiny-lite", output_dir=root / "tiny-lite")
    return parent, lite


def _rows(table: pa.Table, keys) -> pa.Table:
    """The table's rows of the neurons `keys`, in file order."""
    pairs = zip(table.column("layer").to_pylist(), table.column("neuron").to_pylist())
    return table.filter(pa.array([p in keys for p in pairs]))


def _check_subset_of_parent(parent, lite, per_layer):
    """The lite set verifies, keeps `per_layer` neurons per layer and the parent's rows for them."""
    lite_set = load_set(lite)  # verifies the hash
    p_manifest, p_tables = read_tables(parent)
    manifest, tables = read_tables(lite)
    keys = {(n.layer, n.neuron) for n in lite_set.neurons}
    assert set(Counter(layer for layer, _ in keys).values()) == {per_layer}
    assert {layer for layer, _ in keys} == set(p_tables["neurons"].column("layer").to_pylist())
    assert tables["records"].equals(_rows(p_tables["records"], keys))
    used = pc.unique(tables["records"].column("window_id"))
    assert tables["windows"].equals(p_tables["windows"].filter(pc.is_in(p_tables["windows"].column("window_id"), used)))
    theirs = _rows(p_tables["neurons"], keys)
    assert tables["neurons"].drop_columns(["order"]).equals(theirs.drop_columns(["order"]))
    ours, theirs = tables["neurons"].to_pylist(), theirs.to_pylist()
    # The fixed order is the parent's, restricted: 0..n-1 in the order of the parent's `order`.
    by_parent = sorted(zip((r["order"] for r in theirs), (r["order"] for r in ours)))
    assert [order for _, order in by_parent] == list(range(len(ours)))
    assert manifest["parent"] == {"name": p_manifest["name"], "hash": p_manifest["hash"]}
    assert manifest["subset"]["neurons_per_layer"] == manifest["selection"]["neurons_per_layer"] == per_layer
    assert manifest["hash"] == content_hash(manifest, tables) != p_manifest["hash"]
    return manifest


def test_tiny_lite_set_is_a_verified_stratified_subset(tiny):
    parent, lite = tiny
    manifest = _check_subset_of_parent(parent, lite, per_layer=2)
    assert manifest["subset"]["seed"] == 3 and manifest["name"] == "tiny-lite"
    assert set_info(str(lite))["parent"] == manifest["parent"]


def test_lite_scores_equal_the_parents_on_the_same_neurons(tiny, tmp_path):
    """The cell on the lite set and on the full set: every per-neuron value but the floor (which
    borrows another neuron's explanation, so depends on which neurons run) is the same, exactly."""
    parent, lite = tiny
    run_cell(cell_cfg(f"neuron_set.path={parent}", *CHEAP), tmp_path / "full")
    run_cell(cell_cfg(f"neuron_set.path={lite}", *CHEAP), tmp_path / "lite")
    full = pd.read_parquet(tmp_path / "full" / "neurons.parquet").set_index(["layer", "neuron"])
    part = pd.read_parquet(tmp_path / "lite" / "neurons.parquet").set_index(["layer", "neuron"])
    own = [c for c in part.columns if not c.startswith("floor.")]
    assert "correlation.ev_correlation_score" in own and part["correlation.ev_correlation_score"].notna().any()
    assert len(part) == 4 and len(full) == 8
    pd.testing.assert_frame_equal(part[own], full.loc[part.index, own], check_exact=True)


def test_drawing_again_is_a_no_op_and_the_seed_decides(tiny, tmp_path):
    parent, lite = tiny
    digest = json.loads((lite / "manifest.json").read_text())["hash"]
    before = {p.name: p.stat().st_mtime_ns for p in lite.iterdir()}
    assert build_lite(parent, 2, 3, "tiny-lite", output_dir=lite) == (lite, digest)
    assert {p.name: p.stat().st_mtime_ns for p in lite.iterdir()} == before  # not rewritten
    # Elsewhere, the same draw gives the same hash; the seed changes the neurons.
    assert build_lite(parent, 2, 3, "tiny-lite", output_dir=tmp_path / "again")[1] == digest
    draws = {frozenset((n.layer, n.neuron) for n in load_set(build_lite(parent, 2, seed, "x", tmp_path / f"s{seed}")[0]).neurons)
             for seed in range(4)}
    assert len(draws) > 1


def test_a_different_set_at_the_target_is_refused_unless_overwrite(tiny, tmp_path):
    parent, lite = tiny
    target = tmp_path / "target"
    shutil.copytree(lite, target)
    with pytest.raises(ConfigError, match="holds another neuron set.*--overwrite"):
        build_lite(parent, 1, 3, "tiny-lite", output_dir=target)
    assert content_hash(*read_tables(target)) == json.loads((lite / "manifest.json").read_text())["hash"]  # untouched
    _, digest = build_lite(parent, 1, 3, "tiny-lite", output_dir=target, overwrite=True)
    assert load_set(target).hash == digest and len(load_set(target).neurons) == 2


def test_a_directory_holding_anything_else_is_never_replaced(tiny, tmp_path):
    parent, _ = tiny
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a neuron set"):
        build_lite(parent, 2, 0, "x", output_dir=tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("per_layer, seed, name, message", [
    (0, 0, "x", "--per-layer 0 is out of range"),
    (5, 0, "x", "--per-layer 5 is out of range: the parent has 4 to 4"),
    (2, -1, "x", "--seed -1 is negative"),
    (2, 0, "../x", "not a plain name"),
])
def test_bad_arguments_are_config_errors(tiny, tmp_path, per_layer, seed, name, message):
    parent, _ = tiny
    with pytest.raises(ConfigError, match=message):
        build_lite(parent, per_layer, seed, name, output_dir=None if name == "../x" else tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_parent_is_never_overwritten(tiny):
    parent, _ = tiny
    with pytest.raises(ConfigError, match="over its parent"):
        build_lite(parent, 2, 0, "tiny", output_dir=parent, overwrite=True)


def test_a_tampered_parent_is_refused(tiny, tmp_path):
    parent, _ = tiny
    bad = tmp_path / "bad"
    shutil.copytree(parent, bad)
    table = pq.read_table(bad / "neurons.parquet").to_pandas()
    table.loc[0, "max_activation"] += 1.0
    table.to_parquet(bad / "neurons.parquet", index=False)
    with pytest.raises(SetIntegrityError, match="fails its content hash"):
        build_lite(bad, 2, 0, "x", output_dir=tmp_path / "out")


def test_the_command_writes_the_set_and_reports_errors_in_one_line(tiny, tmp_path, capsys):
    parent, lite = tiny
    args = ["--parent", str(parent), "--per-layer", "2", "--seed", "3", "--name", "tiny-lite"]
    lite_command([*args, "--output-dir", str(tmp_path / "out")])
    assert load_set(tmp_path / "out").hash == load_set(lite).hash
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        lite_command([*args[:3], "9", *args[4:], "--output-dir", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "error: ConfigError: --per-layer 9 is out of range" in err
    assert not (tmp_path / "out2").exists()
    assert "lite-set" in COMMANDS and COMMANDS["lite-set"][0] == "harness.sets.lite"  # `neuronbench lite-set`


# --- The committed lite set of v2 ------------------------------------------------------------------

def test_committed_lite_set_is_v2s_records_for_its_neurons():
    manifest = _check_subset_of_parent(SETS_DIR / PARENT, SETS_DIR / LITE, per_layer=4)
    assert manifest["name"] == LITE and manifest["subset"]["seed"] == 0
    assert len(load_set(LITE).neurons) == 120


def test_committed_lite_set_is_drawn_again_from_its_manifest(tmp_path):
    """The recorded parent, seed and per-layer count give the committed set, hash for hash."""
    manifest = json.loads((SETS_DIR / LITE / "manifest.json").read_text())
    _, digest = build_lite(manifest["parent"]["name"], manifest["subset"]["neurons_per_layer"],
                           manifest["subset"]["seed"], LITE, output_dir=tmp_path / LITE)
    assert digest == manifest["hash"]


def test_committed_lite_set_is_named_by_entries_and_configs():
    digest = json.loads((SETS_DIR / LITE / "manifest.json").read_text())["hash"]
    assert known_set({"neuron_set": {"name": LITE, "hash": digest}}, SETS_DIR).hash == digest
    parent_hash = json.loads((SETS_DIR / PARENT / "manifest.json").read_text())["hash"]
    with pytest.raises(EntryError, match="unknown set hash"):
        known_set({"neuron_set": {"name": LITE, "hash": parent_hash}}, SETS_DIR)
    assert cell_cfg("neuron_set=smollm2_135m_brown_v2_lite").neuron_set.path == LITE
