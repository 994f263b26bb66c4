"""Sharded builds on the tiny random-init Llama: the merge is exact (a set built in K = 1, 2, 3
shards equals the single-pass set byte for byte), finished shards are kept and a missing one runs
alone, shard files of another configuration are refused, and the exact building blocks (integer
sums, top-k under a total order) do not depend on how the stream is split. Also: device and dtype
reach the subject and the manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.sets import shards as shards_mod
from harness.build_set import ExactSum, TopK, build, shard_dir, shard_ranges
from harness.errors import ConfigError
from harness.paths import CONF_DIR
from harness.records import load_set

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["subject=tiny_llama", "corpus.max_documents=12", "max_windows=null", "sample_windows=32",
        "alive.min_windows=2", "alive.min_activation=0.0", "neurons_per_layer=3", "batch_size=8", "name=shards"]
SET_FILES = ("manifest.json", "windows.parquet", "records.parquet", "neurons.parquet")


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("build_set", overrides=overrides)


def _files(path) -> dict[str, bytes]:
    """The set's files, with the manifest's unhashed `timing` (wall time, shard count) removed."""
    out = {name: (path / name).read_bytes() for name in SET_FILES}
    manifest = json.loads(out["manifest.json"])
    assert manifest.pop("timing")["shards"] >= 1
    out["manifest.json"] = json.dumps(manifest).encode()
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "set"
    build(compose_cfg(BASE + [f"output_dir={out}"]))
    return out


@pytest.mark.parametrize("shards", [1, 2, 3])
@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_sharded_build_equals_the_single_pass_byte_for_byte(single, tmp_path, shards):
    out = tmp_path / "set"
    digest = build(compose_cfg(BASE + [f"output_dir={out}", f"shards={shards}"]))
    assert digest == load_set(single).hash
    assert _files(out) == _files(single)
    assert json.loads((out / "manifest.json").read_text())["timing"]["shards"] == shards
    assert not shard_dir(out).exists()  # shard files are removed once the set is written


@pytest.mark.heavy
def test_a_killed_shard_reruns_alone(single, tmp_path, monkeypatch):
    out = tmp_path / "set"
    for j in (0, 2):  # jobs 0 and 2 of 3 finished; job 1 was killed (it left no file)
        assert build(compose_cfg(BASE + [f"output_dir={out}", "shards=3", f"shard={j}"])) is None
    assert sorted(p.name for p in shard_dir(out).iterdir()) == ["shard-0000-of-0003.pt", "shard-0002-of-0003.pt"]
    assert not out.exists()

    ran = []
    real = shards_mod.run_pass1

    def counting(subject, win, layers, batch_size, state, *args, **kwargs):
        ran.append((state.lo, state.hi))
        return real(subject, win, layers, batch_size, state, *args, **kwargs)

    monkeypatch.setattr(shards_mod, "run_pass1", counting)
    digest = build(compose_cfg(BASE + [f"output_dir={out}", "shards=3"]))
    n_windows = json.loads((out / "manifest.json").read_text())["corpus"]["n_windows"]
    assert ran == [shard_ranges(n_windows, 8, 3)[1]]
    assert digest == load_set(single).hash and _files(out) == _files(single)


@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_a_finished_shard_is_not_computed_again(tmp_path, monkeypatch):
    out = tmp_path / "set"
    build(compose_cfg(BASE + [f"output_dir={out}", "shards=2", "shard=1"]))
    monkeypatch.setattr(shards_mod, "run_pass1", lambda *a, **k: pytest.fail("shard 1 ran again"))
    build(compose_cfg(BASE + [f"output_dir={out}", "shards=2", "shard=1"]))


def test_shard_files_of_another_configuration_are_refused(tmp_path):
    out = tmp_path / "set"
    build(compose_cfg(BASE + [f"output_dir={out}", "shards=2", "shard=0"]))
    with pytest.raises(ConfigError, match="another configuration"):
        build(compose_cfg(BASE + [f"output_dir={out}", "shards=2", "alive.min_activation=0.5"]))
    assert not out.exists()


@pytest.mark.heavy  # a subprocess, a sweep or whole set builds: seconds on 2 cores
def test_an_unreadable_shard_file_is_computed_again(single, tmp_path):
    out = tmp_path / "set"
    build(compose_cfg(BASE + [f"output_dir={out}", "shards=2", "shard=0"]))
    (shard_dir(out) / "shard-0000-of-0002.pt").write_bytes(b"truncated")
    assert build(compose_cfg(BASE + [f"output_dir={out}", "shards=2"])) == load_set(single).hash


@pytest.mark.parametrize("override, message", [
    ("shards=0", "shards=0: must be between 1"),
    ("shards=100000", "shards=100000: must be between 1"),
    ("shard=2", r"shard=2: must be between 0 and shards-1=1"),
    ("dtype=float64", "dtype='float64' is not one of"),
    ("device=nonsense", "device='nonsense' is not a torch device"),
])
def test_bad_shard_device_and_dtype_settings_are_config_errors(tmp_path, override, message):
    out = tmp_path / "set"
    with pytest.raises(ConfigError, match=message):
        build(compose_cfg(BASE + [f"output_dir={out}", "shards=2", override]))
    assert not out.exists() and not shard_dir(out).exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no CUDA device"):
        build(compose_cfg(BASE + [f"output_dir={tmp_path / 'set'}", "device=cuda"]))


def test_dtype_reaches_the_subject_and_the_manifest(tmp_path, monkeypatch):
    seen = []
    real = shards_mod.run_pass1

    def spying(subject, *args, **kwargs):
        seen.append(next(subject.model.parameters()).dtype)
        return real(subject, *args, **kwargs)

    monkeypatch.setattr(shards_mod, "run_pass1", spying)
    out = tmp_path / "set"
    build(compose_cfg(BASE + [f"output_dir={out}", "dtype=bfloat16", "fidelity_tolerance=0.05"]))
    assert seen == [torch.bfloat16]
    assert json.loads((out / "manifest.json").read_text())["build"] == {
        "torch": torch.__version__, "device": "cpu", "dtype": "bfloat16"}
    s = load_set(out)
    assert all(np.isfinite(n.mean) and n.variance >= 0 for n in s.neurons)


# --- The exact building blocks ----------------------------------------------------------------

def test_exact_sums_do_not_depend_on_grouping():
    rng = np.random.default_rng(0)
    partials = torch.from_numpy((rng.standard_normal((40, 5)) * 10.0 ** rng.integers(-8, 6, (40, 5)))
                                .astype(np.float32))
    one = ExactSum(5, torch.device("cpu"))
    for p in partials:
        one.add(slice(None), p)
    for cuts in ([13], [1, 2, 30], [39]):
        parts = []
        for chunk in np.split(np.arange(40), cuts):
            acc = ExactSum(5, torch.device("cpu"))
            for i in chunk[::-1]:  # even backwards within a part
                acc.add(slice(None), partials[i])
            parts.append(acc)
        merged = parts[0]
        for acc in parts[1:]:
            merged.merge(acc)
        assert torch.equal(merged.value(), one.value())
    # and it is the sum (up to the 2**-32 rounding of each partial)
    exact = partials.double().sum(0)
    assert torch.allclose(one.value(), exact, rtol=1e-12, atol=40 * 2.0 ** -32)


def test_exact_sums_refuse_non_finite_partials():
    acc = ExactSum(2, torch.device("cpu"))
    acc.add(slice(None), torch.tensor([1.0, float("inf")]))
    with pytest.raises(Exception, match="non-finite or huge"):
        acc.value()


def test_top_k_with_ties_is_the_same_streamed_or_merged():
    """Many equal maxima: ties rank by window id, so every split keeps the same windows."""
    rng = np.random.default_rng(1)
    n, k, T, W = 6, 4, 3, 40
    wmax = torch.from_numpy(rng.integers(0, 3, (W, n)).astype(np.float32))  # values 0, 1, 2: many ties
    acts = torch.from_numpy(rng.standard_normal((W, T, n)).astype(np.float32))

    def streamed(lo, hi, step):
        top = TopK(n, k, T, torch.device("cpu"))
        for b in range(lo, hi, step):
            rows = torch.arange(0, min(step, hi - b))
            top.update(slice(0, n), wmax[b:b + step][rows], torch.arange(b, b + len(rows)), acts[b:b + step], rows)
        return top

    whole = streamed(0, W, 5)
    for cut in (5, 20, 35):
        merged = streamed(0, cut, 5)
        merged.merge(streamed(cut, W, 5))
        for name in ("values", "windows", "ranked_acts"):
            got, want = getattr(merged, name), getattr(whole, name)
            assert torch.equal(*(x() if callable(x) else x for x in (got, want))), (cut, name)
    # the kept windows are the k largest by (value descending, window ascending)
    for i in range(n):
        expected = sorted(range(W), key=lambda w: (-wmax[w, i].item(), w))[:k]
        assert whole.windows[i].tolist() == expected
        assert torch.equal(whole.ranked_acts()[i], acts[expected, :, i])
