"""Building a frozen neuron set on a tiny random-init Llama, then checking the set it wrote:
counts, provenance, pool disjointness, activations against a fresh recomputation, ordering of
top and random records, statistics, determinism, tamper detection and the builder's errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir

from harness import build_set as build_set_mod
from harness.sets import pass1 as pass1_mod
from harness.sets import setup as setup_mod
from harness.build_set import build
from harness.corpus import load_corpus
from harness.errors import ConfigError, CorpusError, FidelityError, HarnessError, SetIntegrityError
from harness.paths import CONF_DIR, REPO_ROOT, SETS_DIR
from harness.records import load_set
from harness.subject import REFERENCE_ACTIVATIONS, gelu_erf

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOW = 64
BASE = ["subject=tiny_llama", "corpus.max_documents=20", "max_windows=null", "sample_windows=64",
        "alive.min_windows=2", "alive.min_activation=0.0", "neurons_per_layer=3"]
# A quick build for error paths: a small text folder and small record counts.
SMALL_COUNTS = ["counts.explain_top=3", "counts.explain_random=1", "counts.calibration_top=1",
                "counts.calibration_random=1", "counts.test_top=2", "counts.test_random=1",
                "counts.test_quantile=1", "alive.min_windows=1", "alive.min_activation=0.0",
                "neurons_per_layer=2", "subject=tiny_llama"]


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("build_set", overrides=overrides)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The set built from 20 Brown documents; also its config, tables and the corpus."""
    out = tmp_path_factory.mktemp("sets") / "tiny-llama-brown"
    cfg = compose_cfg(BASE + [f"output_dir={out}", "name=tiny-llama-brown"])
    digest = build(cfg)
    assert not (SETS_DIR / "tiny-llama-brown").exists()  # output_dir, not leaderboard/sets/, was used
    tables = {name: pq.read_table(out / f"{name}.parquet") for name in ("windows", "records", "neurons")}
    return SimpleNamespace(cfg=cfg, path=out, hash=digest, set=load_set(out), tables=tables,
                           manifest=json.loads((out / "manifest.json").read_text()),
                           corpus=load_corpus(cfg.corpus))


@pytest.fixture(scope="module")
def full_pass(built, tiny_llama):
    """Every window of the corpus, recomputed from scratch: {(doc_id, start): [T, 2 * 64]} with
    layer 0's neurons then layer 1's, and each window's pool."""
    keys, ids = [], []
    for doc in built.corpus.documents:
        tokens = tiny_llama.tokenizer(doc.text, add_special_tokens=False).input_ids
        for start in range(0, len(tokens) - WINDOW + 1, WINDOW):
            keys.append((doc.doc_id, start))
            ids.append(tokens[start:start + WINDOW])
    ids = torch.tensor(ids)
    acts = []
    for lo in range(0, len(ids), 64):
        rec = tiny_llama.record(ids[lo:lo + 64], [0, 1])
        acts.append(torch.cat([rec[0], rec[1]], -1))
    acts = torch.cat(acts)
    pool_of = {d: name for name, docs in built.manifest["pools"].items() for d in docs}
    return SimpleNamespace(keys=keys, index={k: i for i, k in enumerate(keys)}, ids=ids, acts=acts,
                           pool=np.array([pool_of[d] for d, _ in keys]))


def _col(neuron) -> int:
    return neuron.layer * 64 + neuron.neuron


def _records(neuron):
    return [(split, r) for split in ("explain", "calibration", "test") for r in neuron.split(split)]


# --- What was built --------------------------------------------------------------------------

def test_manifest_describes_the_build(built, full_pass, tiny_llama):
    m = built.manifest
    assert m["hash"] == built.hash == built.set.hash
    assert m["name"] == built.set.name == "tiny-llama-brown"
    assert m["format_version"] == 1
    assert m["subject"]["name"] == "tiny_llama"
    assert m["subject"]["weights_digest"] == tiny_llama.weights_digest
    assert (m["subject"]["architecture"], m["subject"]["activation_function"]) == ("gated", "silu")
    assert (m["subject"]["n_layers"], m["subject"]["neurons_per_layer"]) == (2, 64)
    assert m["corpus"]["digest"] == built.corpus.digest
    assert m["corpus"]["n_documents"] == 20
    assert m["corpus"]["n_windows"] == len(full_pass.keys)
    assert m["corpus"]["n_tokens"] == len(full_pass.keys) * WINDOW
    assert m["window"] == WINDOW
    assert m["tokenizer"]["vocab_size"] == len(tiny_llama.tokenizer)
    assert m["counts"] == dict(built.cfg.counts)
    assert m["selection"]["layers"] == [0, 1] and m["selection"]["neurons_per_layer"] == 3


def test_neurons_per_layer_and_fixed_order(built):
    neurons = built.set.neurons
    assert len(neurons) == 6
    assert Counter(n.layer for n in neurons) == {0: 3, 1: 3}
    assert len({(n.layer, n.neuron) for n in neurons}) == 6
    assert all(0 <= n.neuron < 64 for n in neurons)
    assert sorted(built.tables["neurons"].column("order").to_pylist()) == list(range(6))
    first = load_set(built.path, limit=2)
    assert [(n.layer, n.neuron) for n in first.neurons] == [(n.layer, n.neuron) for n in neurons[:2]]
    assert all(len(n.explain) == 30 for n in first.neurons)


def test_records_per_split_and_kind_follow_the_config(built):
    c = built.cfg.counts
    expected = {
        "explain": {"top": c.explain_top, "random": c.explain_random},
        "calibration": {"top": c.calibration_top, "random": c.calibration_random},
        "test": {"top": c.test_top, "random": c.test_random, "quantile": c.test_quantile},
    }
    assert expected == {"explain": {"top": 20, "random": 10}, "calibration": {"top": 5, "random": 5},
                        "test": {"top": 10, "random": 10, "quantile": 10}}
    for neuron in built.set.neurons:
        for split, kinds in expected.items():
            assert dict(Counter(r.kind for r in neuron.split(split))) == kinds, (neuron.neuron_id, split)
        for _, r in _records(neuron):
            assert len(r.tokens) == len(r.activations) == WINDOW


def test_no_window_appears_twice_within_a_neuron(built):
    for neuron in built.set.neurons:
        windows = [(r.doc_id, r.start) for _, r in _records(neuron)]
        assert len(windows) == 70
        assert len(set(windows)) == len(windows), neuron.neuron_id


def test_explain_and_scoring_documents_are_disjoint(built):
    pools = built.manifest["pools"]
    explain, scoring = set(pools["explain"]), set(pools["scoring"])
    assert not explain & scoring
    assert explain | scoring == {d.doc_id for d in built.corpus.documents}
    assert len(explain) == len(scoring) == 10  # explain_fraction 0.5
    for neuron in built.set.neurons:
        assert {r.doc_id for r in neuron.explain} <= explain
        assert {r.doc_id for r in neuron.calibration + neuron.test} <= scoring


def test_windows_point_at_their_text(built, full_pass, tiny_llama):
    w = built.tables["windows"].to_pydict()
    for doc_id, start, token_ids, tokens in zip(w["doc_id"], w["start"], w["token_ids"], w["tokens"]):
        assert start % WINDOW == 0
        assert token_ids == full_pass.ids[full_pass.index[(doc_id, start)]].tolist()
        assert tokens == [tiny_llama.tokenizer.decode([t]) for t in token_ids]
    assert len(set(w["window_id"])) == len(w["window_id"])


def test_activations_equal_a_fresh_recomputation(built, full_pass):
    n_checked = 0
    for neuron in built.set.neurons:
        for split, r in _records(neuron):
            fresh = full_pass.acts[full_pass.index[(r.doc_id, r.start)], :, _col(neuron)]
            got = torch.tensor(r.activations)
            assert torch.allclose(got, fresh, atol=1e-5), (neuron.neuron_id, split, r.kind, r.doc_id, r.start)
            n_checked += 1
    assert n_checked == 6 * 70


def test_top_records_are_the_top_windows_and_outrank_the_rest(built, full_pass):
    wmax = full_pass.acts.amax(1)  # [windows, neurons]
    for neuron in built.set.neurons:
        col = wmax[:, _col(neuron)].numpy()
        ex_top = [r.max_activation for r in neuron.explain if r.kind == "top"]
        assert ex_top == sorted(ex_top, reverse=True)
        # exactly the 20 largest window maxima of the explain pool (streaming top-k is exact)
        best = np.sort(col[full_pass.pool == "explain"])[::-1][:20]
        assert np.allclose(ex_top, best, atol=1e-5)
        ex_random = [r.max_activation for r in neuron.explain if r.kind == "random"]
        assert max(ex_random) <= min(ex_top) + 1e-6

        scoring = neuron.calibration + neuron.test
        sc_top = [r.max_activation for r in scoring if r.kind == "top"]
        best = np.sort(col[full_pass.pool == "scoring"])[::-1][:15]
        assert np.allclose(sorted(sc_top, reverse=True), best, atol=1e-5)
        assert max(r.max_activation for r in scoring if r.kind != "top") <= min(sc_top) + 1e-6
        # calibration takes scoring ranks 0, 3, 6, 9, 12; test the others
        ranks = sorted(sc_top, reverse=True)
        cal = sorted((r.max_activation for r in neuron.calibration if r.kind == "top"), reverse=True)
        assert np.allclose(cal, ranks[0::3], atol=0)


def test_quantile_records_and_statistics(built, full_pass):
    acts = full_pass.acts
    for neuron in built.set.neurons:
        col = acts[:, :, _col(neuron)].double()
        assert neuron.mean == pytest.approx(col.mean().item(), rel=1e-4, abs=1e-7)
        assert neuron.variance == pytest.approx(col.var(unbiased=False).item(), rel=1e-3, abs=1e-9)
        assert neuron.max_activation == pytest.approx(col.max().item(), abs=1e-6)
        # the neuron is alive: in each pool at least alive.min_windows windows peak above 0
        peaks = col.amax(1).numpy()
        for pool in ("explain", "scoring"):
            assert (peaks[full_pass.pool == pool] > 0.0).sum() >= 2
        q = neuron.quantile_boundaries
        assert len(q) == 11 and q == sorted(q)
        quantile = [r.max_activation for r in neuron.test if r.kind == "quantile"]
        assert all(a <= b + 1e-6 for a, b in zip(quantile, quantile[1:]))  # one per bin, low to high
        assert q[0] - 1e-6 <= min(quantile) and max(quantile) <= q[-1] + 1e-6


# --- Determinism -----------------------------------------------------------------------------

def test_building_twice_gives_the_same_set(built, tmp_path):
    out = tmp_path / "again"
    build(compose_cfg(BASE + [f"output_dir={out}", "name=tiny-llama-brown"]))
    for name, table in built.tables.items():
        assert pq.read_table(out / f"{name}.parquet").equals(table), name
    again = json.loads((out / "manifest.json").read_text())
    strip = lambda m: {k: v for k, v in m.items() if k not in ("hash", "build", "timing")}  # noqa: E731
    assert strip(again) == strip(built.manifest)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, built):
    """Eight short documents (~10 windows each), as a text folder."""
    root = tmp_path_factory.mktemp("small_corpus")
    for doc in built.corpus.documents[:8]:
        (root / f"{doc.doc_id.split('/')[1]}.txt").write_text(doc.text[:3000])
    return root


def _small(small_corpus, out, *extra):
    return compose_cfg(SMALL_COUNTS + ["corpus=text_dir", f"corpus.path={small_corpus}",
                                       f"output_dir={out}", "name=small", *extra])


def test_hash_does_not_depend_on_how_long_the_build_took(small_corpus, tmp_path, monkeypatch):
    hashes = []
    for step in (1.0, 2.0):  # a fake clock: the second build "takes" twice as long
        ticks = iter(np.arange(1000.0, 2000.0, step))
        clock = SimpleNamespace(time=lambda: float(next(ticks)))
        monkeypatch.setattr(build_set_mod, "time", clock)  # the build's wall time
        monkeypatch.setattr(pass1_mod, "time", clock)  # pass 1's own timing
        hashes.append(build(_small(small_corpus, tmp_path / f"s{step}")))
    tables = [pq.read_table(tmp_path / f"s{s}" / "records.parquet") for s in (1.0, 2.0)]
    assert tables[0].equals(tables[1])  # the content is the same ...
    assert hashes[0] == hashes[1]  # ... so the hash must be


# --- Tampering -------------------------------------------------------------------------------

@pytest.fixture
def copy_of_set(built, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(built.path, dst)
    return dst


def _rewrite(path: Path, column: str, change):
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    change(values)
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type)), path)


def test_untouched_copy_loads_and_hash_ignores_file_encoding(copy_of_set, built):
    table = pq.read_table(copy_of_set / "records.parquet")
    pq.write_table(table, copy_of_set / "records.parquet", compression="snappy", row_group_size=50)
    assert load_set(copy_of_set).hash == built.hash


@pytest.mark.parametrize("table, column, change", [
    ("records", "activations", lambda v: v[7].__setitem__(3, v[7][3] + 0.001)),
    ("records", "split", lambda v: v.__setitem__(0, "test")),
    ("windows", "tokens", lambda v: v[0].__setitem__(0, "X")),
    ("neurons", "mean", lambda v: v.__setitem__(0, v[0] + 1e-9)),
])
def test_changed_table_fails_the_hash(copy_of_set, table, column, change):
    _rewrite(copy_of_set / f"{table}.parquet", column, change)
    with pytest.raises(SetIntegrityError, match="fails its content hash"):
        load_set(copy_of_set)


@pytest.mark.parametrize("edit", [
    lambda m: m.__setitem__("name", "renamed"),
    lambda m: m["seeds"].__setitem__("neurons", 1),
    lambda m: m["pools"]["explain"].pop(),
    lambda m: m.__setitem__("hash", "0" * 64),
])
def test_edited_manifest_fails_the_hash(copy_of_set, edit):
    manifest = json.loads((copy_of_set / "manifest.json").read_text())
    edit(manifest)
    (copy_of_set / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with pytest.raises(SetIntegrityError, match="fails its content hash"):
        load_set(copy_of_set)


def test_missing_or_unreadable_parts(copy_of_set, tmp_path):
    with pytest.raises(SetIntegrityError, match="does not exist"):
        load_set(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SetIntegrityError, match="not a neuron set"):
        load_set(tmp_path / "empty")
    (copy_of_set / "neurons.parquet").write_bytes(b"truncated")
    with pytest.raises(SetIntegrityError, match="unreadable"):
        load_set(copy_of_set)
    (copy_of_set / "neurons.parquet").unlink()
    with pytest.raises(SetIntegrityError, match="unreadable") as err:
        load_set(copy_of_set)
    assert str(copy_of_set) in str(err.value)


def test_unreadable_message_names_the_path_to_restore(copy_of_set):
    (copy_of_set / "windows.parquet").unlink()
    with pytest.raises(SetIntegrityError) as err:
        load_set(copy_of_set)
    assert "{path}" not in str(err.value)
    assert f"git checkout -- {copy_of_set}" in str(err.value)


# --- Errors ----------------------------------------------------------------------------------

def _assert_nothing_written(out: Path):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary directory left


def test_empty_corpus_is_a_corpus_error(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.txt", "b.txt"):
        (docs / name).write_text("" if name == "a.txt" else "\n  \n")
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match="no non-empty documents"):
        build(compose_cfg(BASE + ["corpus=text_dir", f"corpus.path={docs}", f"output_dir={out}"]))
    _assert_nothing_written(out)


@pytest.mark.parametrize("texts, message", [
    ({"only.txt": "word " * 500}, "too few to split"),
    ({"a.txt": "Too short.", "b.txt": "Also short."}, "no document of at least 64 tokens"),
])
def test_corpus_too_small_to_build_from(tmp_path, texts, message):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in texts.items():
        (docs / name).write_text(text)
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match=message):
        build(compose_cfg(BASE + ["corpus=text_dir", f"corpus.path={docs}", f"output_dir={out}"]))
    _assert_nothing_written(out)


@pytest.mark.parametrize("override, message", [
    ("neurons_per_layer=65", r"neurons_per_layer=65 but tiny_llama has 64"),
    ("layers=[5]", r"layer index \[5\] out of range"),
    ("layers=[0,-1]", r"layer index \[-1\] out of range"),
])
def test_out_of_range_configs_are_config_errors(tmp_path, override, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        build(compose_cfg(BASE + [override, f"output_dir={out}"]))
    _assert_nothing_written(out)


def test_failed_fidelity_check_stops_the_build(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(REFERENCE_ACTIVATIONS, "silu", gelu_erf)
    out = tmp_path / "out"
    with pytest.raises(FidelityError, match="layer 0"):
        build(_small(small_corpus, out))
    _assert_nothing_written(out)


def test_small_build_succeeds(small_corpus, tmp_path):
    """The quick configuration used below builds a valid set (so the failures below are real)."""
    out = tmp_path / "out"
    build(_small(small_corpus, out))
    s = load_set(out)
    assert len(s.neurons) == 4
    for n in s.neurons:
        assert Counter(r.kind for r in n.explain) == {"top": 3, "random": 1}
        assert Counter(r.kind for r in n.calibration) == {"top": 1, "random": 1}
        assert Counter(r.kind for r in n.test) == {"top": 2, "random": 1, "quantile": 1}


def test_empty_layer_list_is_a_config_error(small_corpus, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError):
        build(_small(small_corpus, out, "layers=[]"))
    _assert_nothing_written(out)


def test_repeated_layers_are_a_config_error(small_corpus, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="layer"):
        build(_small(small_corpus, out, "layers=[0,0]"))


def test_calibration_and_test_top_counts_hold_for_other_ratios(small_corpus, tmp_path):
    out = tmp_path / "out"
    build(_small(small_corpus, out, "counts.calibration_top=3", "counts.test_top=1"))
    for n in load_set(out).neurons:
        assert sum(r.kind == "top" for r in n.calibration) == 3
        assert sum(r.kind == "top" for r in n.test) == 1


def test_top_k_larger_than_the_pool(small_corpus, tmp_path):
    out = tmp_path / "out"
    try:
        build(_small(small_corpus, out, "counts.explain_top=60", "counts.explain_random=0"))
    except HarnessError:
        return  # refusing the configuration is fine
    s = load_set(out)
    explain_pool = set(s.manifest["pools"]["explain"])
    for n in s.neurons:
        windows = [(r.doc_id, r.start) for r in n.explain]
        assert {d for d, _ in windows} <= explain_pool
        assert len(set(windows)) == len(windows)
    assert min(pq.read_table(out / "records.parquet").column("window_id").to_pylist()) >= 0


@pytest.mark.heavy
def test_cli_reports_a_config_error_without_traceback(tmp_path):
    out = tmp_path / "cli-set"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.build_set", "subject=tiny_llama", "corpus.max_documents=20",
         "layers=[7]", f"output_dir={out}", "name=cli-test"],
        cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "ConfigError" in proc.stderr and "layer index [7] out of range" in proc.stderr
    assert "0..1" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    _assert_nothing_written(out)


# --- Never deleting what is not a set it may replace --------------------------------------------

@pytest.mark.parametrize("name", ["../entries", "a/b", "..", ".", "", "x/../y", ".hidden"])
def test_name_must_be_a_plain_name(tmp_path, monkeypatch, name):
    sets = tmp_path / "leaderboard" / "sets"
    sets.mkdir(parents=True)
    (tmp_path / "leaderboard" / "entries").mkdir()
    (tmp_path / "leaderboard" / "entries" / "entry.json").write_text("{}")
    monkeypatch.setattr(setup_mod, "SETS_DIR", sets)  # with the defect, the real board is not at risk
    with pytest.raises(ConfigError, match="plain name"):
        build(compose_cfg(BASE + [f"name='{name}'"]))
    assert (tmp_path / "leaderboard" / "entries" / "entry.json").is_file()
    assert list(sets.iterdir()) == []


def test_existing_directory_that_is_not_a_set_is_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a neuron set"):
        build(compose_cfg(BASE + [f"output_dir={out}", "overwrite=true"]))
    assert (out / "notes.txt").read_text() == "precious"


def test_existing_set_is_replaced_only_with_overwrite(copy_of_set, built):
    with pytest.raises(ConfigError, match="overwrite=true"):
        build(compose_cfg(BASE + [f"output_dir={copy_of_set}"]))
    assert load_set(copy_of_set).hash == built.hash


def test_set_directory_with_foreign_files_is_not_replaced(copy_of_set, built):
    (copy_of_set / "analysis.ipynb").write_text("{}")
    with pytest.raises(ConfigError, match="analysis.ipynb"):
        build(compose_cfg(BASE + [f"output_dir={copy_of_set}", "overwrite=true"]))
    assert (copy_of_set / "analysis.ipynb").is_file() and load_set(copy_of_set).hash == built.hash


def test_overwrite_replaces_a_set(small_corpus, copy_of_set, built):
    digest = build(_small(small_corpus, copy_of_set, "overwrite=true"))
    assert digest != built.hash and load_set(copy_of_set).hash == digest
    assert sorted(p.name for p in copy_of_set.parent.iterdir()) == ["copy"]  # no temporary left behind


def test_interrupted_write_leaves_the_old_set_intact(copy_of_set, built, monkeypatch):
    from harness import records

    manifest, tables = records.read_tables(copy_of_set)
    real = records.pq.write_table
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(records.pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        records.write_set(copy_of_set, {**manifest, "name": "changed"}, tables, overwrite=True)
    assert load_set(copy_of_set).hash == built.hash
    assert sorted(p.name for p in copy_of_set.parent.iterdir()) == ["copy"]
