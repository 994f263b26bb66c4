"""The embedding scorer's core (harness/embedding.py) on the real all-MiniLM-L6-v2 (`make minilm`).

Tests that load the model are marked `slow`, as the tests of the other models that only `make test`
installs (Gemma, Qwen) are: `make test-fast` needs only what `make demo` installs."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import harness.embedding as emb
from harness.embedding import (Embedder, embedding_scores, embedding_scores_batch, extract_minilm, minilm_zip,
                               window_cache_path, window_embeddings)
from harness.errors import AssetError, ConfigError
from harness.records import ActivationRecord, NeuronRecord

slow = pytest.mark.slow

TIME = ["He waited three hours and ten minutes.", "The concert lasted two days and a night.",
        "It took five seconds to boil over."]
OTHER = ["The red car was parked by the gate.", "She painted the fence green.", "Cats like to sleep on warm rugs."]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def record(text: str, peak: float, doc: str, start: int = 0) -> ActivationRecord:
    """A window whose tokens join back to `text`, with its maximum activation `peak`."""
    tokens = re.findall(r"\s*\S+", text)
    acts = [0.0] * len(tokens)
    acts[-1] = peak
    return ActivationRecord(tokens=tokens, activations=acts, doc_id=doc, start=start, kind="top" if peak else "random")


def neuron(texts_peaks: list[tuple[str, float]], prefix: str = "d") -> NeuronRecord:
    """max_activation 10, so max50 labels a window active when its peak is above 5."""
    return NeuronRecord(layer=0, neuron=0, max_activation=10.0,
                        test=[record(t, p, f"{prefix}{i}") for i, (t, p) in enumerate(texts_peaks)])


def count_embeds(monkeypatch, e: Embedder) -> list[int]:
    """The number of texts of each `embed` call on `e` from now on."""
    calls: list[int] = []
    original = Embedder.embed
    monkeypatch.setattr(e, "embed", lambda texts: (calls.append(len(texts)), original(e, texts))[1])
    return calls


# --- The offline model ------------------------------------------------------------------------

@slow
def test_zip_sha256_is_checked_before_extraction(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "good.zip"
    shutil.copyfile(minilm_zip(), good)
    bad = tmp_path / "bad.zip"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the weights
    bad.write_bytes(bytes(data))
    with pytest.raises(AssetError, match=r"sha256 .*make minilm"):
        extract_minilm(bad)
    assert not list((tmp_path / "cache" / "models").iterdir())  # nothing half-extracted is left
    target = extract_minilm(good)
    assert (target / "COMPLETE").is_file() and (target / "model.safetensors").is_file()
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".partial")]


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(emb, "MINILM_PACKAGE", "no_such_package_for_neuronbench")
    with pytest.raises(AssetError, match="make minilm"):
        minilm_zip()


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "batch_size"), ({"device": "gpu!"}, "device"),
                                             ({"path": " "}, "path")])
def test_bad_embedder_arguments_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Embedder(**kwargs)


# --- Embeddings -------------------------------------------------------------------------------

@slow
def test_embeddings_are_normalised_and_deterministic(embedder):
    texts = TIME + OTHER + [""]
    first = embedder.embed(texts)
    assert first.dtype == np.float32 and first.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embedder.embed(texts), first)
    # another batching pads differently: the same vectors up to float32 rounding
    np.testing.assert_allclose(Embedder(batch_size=2).embed(texts), first, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    assert re.fullmatch(r"all-MiniLM-L6-v2-[0-9a-f]{16}", embedder.identity)


@slow
@pytest.mark.parametrize("query, near, far", [
    ("units of time", "He waited three hours and ten minutes.", "The red car was parked by the gate."),
    ("colours", "She painted the fence green and the door blue.", "He waited three hours and ten minutes."),
    ("animals", "The dog chased a cat up the tree.", "The bank raised its interest rates."),
    ("money and finance", "The bank raised its interest rates.", "The dog chased a cat up the tree."),
])
def test_similarity_follows_meaning(embedder, query, near, far):
    q, n, f = embedder.embed([query, near, far])
    assert q @ n > q @ f + 0.1


@slow
def test_a_model_by_directory_gives_the_same_embeddings(embedder):
    """Any Hugging Face model directory loads the same way; the extracted MiniLM is one."""
    other = Embedder(path=str(extract_minilm(minilm_zip())))
    np.testing.assert_allclose(other.embed(TIME), embedder.embed(TIME), atol=1e-5)
    assert other.identity != embedder.identity and other.identity.startswith(other.name + "-")


# --- The window cache -------------------------------------------------------------------------

@slow
def test_windows_are_embedded_once_per_set_and_model(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    records = [record(t, 0.0, f"doc{i}") for i, t in enumerate(TIME + OTHER)]
    calls = count_embeds(monkeypatch, embedder)
    first = window_embeddings("set-a", records, embedder)
    assert calls == [6]
    np.testing.assert_allclose(first, Embedder.embed(embedder, ["".join(r.tokens) for r in records]), atol=1e-5)
    # the same windows again, a repeat within one call, and one new window: only the new one is embedded
    again = window_embeddings("set-a", records + records[:1] + [record("A new window.", 0.0, "doc9")], embedder)
    assert calls == [6, 1]
    np.testing.assert_array_equal(again[:6], first)
    np.testing.assert_array_equal(again[6], first[0])
    # a fresh process (memory dropped) reads the file: nothing embedded
    embedder._window_memo.clear()
    np.testing.assert_array_equal(window_embeddings("set-a", records, embedder), first)
    assert calls == [6, 1]
    # another set is another cache
    window_embeddings("set-b", records[:2], embedder)
    assert calls == [6, 1, 2]
    assert window_cache_path("set-a", embedder) != window_cache_path("set-b", embedder)


@slow
@pytest.mark.parametrize("damage", [b"", b"not an npz file", "truncated"])
def test_a_corrupt_cache_file_is_recomputed(embedder, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    records = [record(t, 0.0, f"doc{i}") for i, t in enumerate(TIME)]
    embedder._window_memo.clear()
    first = window_embeddings("set-c", records, embedder)
    path = window_cache_path("set-c", embedder)
    path.write_bytes(path.read_bytes()[:200] if damage == "truncated" else damage)
    embedder._window_memo.clear()
    calls = count_embeds(monkeypatch, embedder)
    np.testing.assert_allclose(window_embeddings("set-c", records, embedder), first, atol=1e-5)
    assert calls == [3]
    embedder._window_memo.clear()
    window_embeddings("set-c", records, embedder)  # the rewritten file is whole again
    assert calls == [3]


def test_a_set_hash_that_is_no_file_name_is_refused():
    with pytest.raises(ConfigError, match="set hash"):
        window_cache_path("../elsewhere", Embedder())


# --- Scores -----------------------------------------------------------------------------------

@slow
def test_auroc_is_the_share_of_ordered_pairs(embedder, tmp_path, monkeypatch):
    """AUROC = P(an active window is more similar to the explanation than an inactive one), counted
    pair by pair from similarities computed apart from the scorer."""
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    # active: two time windows and a colour one; inactive: a time window among unrelated ones
    windows = [(TIME[0], 8.0), (TIME[1], 6.0), ("The walls were yellow.", 9.0),
               (TIME[2], 1.0), (OTHER[0], 0.0), (OTHER[1], 5.0)]  # 5.0 is not above half of 10
    n = neuron(windows)
    explanation = "units of time"
    q, *w = embedder.embed([explanation] + [t for t, _ in windows])
    sims = [float(q @ v) for v in w]
    active = [s for s, (_, p) in zip(sims, windows) if p > 5]
    inactive = [s for s, (_, p) in zip(sims, windows) if p <= 5]
    by_hand = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in active for b in inactive) / (3 * 3)
    scores = embedding_scores(n, explanation, embedder, "set-d")
    assert 0 < by_hand < 1  # the colour window ranks low: not a trivial 1
    assert scores["auroc"] == pytest.approx(by_hand)
    assert scores["similarity_gap"] == pytest.approx(np.mean(active) - np.mean(inactive), abs=1e-5)


@slow
def test_a_true_explanation_separates_and_a_blank_one_is_undefined(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    n = neuron([(t, 9.0) for t in TIME] + [(t, 0.0) for t in OTHER])
    good = embedding_scores(n, "durations, units of time", embedder, "set-e")
    assert good["auroc"] == 1.0 and good["similarity_gap"] > 0.1
    assert embedding_scores(n, "paint and cars", embedder, "set-e")["auroc"] < 0.5
    assert all(np.isnan(v) for v in embedding_scores(n, "  ", embedder, "set-e").values())
    one_class = neuron([(t, 9.0) for t in TIME])
    assert all(np.isnan(v) for v in embedding_scores(one_class, "time", embedder, "set-e").values())


@slow
def test_the_batch_form_embeds_explanations_in_one_call(embedder, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    time_neuron = neuron([(t, 9.0) for t in TIME] + [(t, 0.0) for t in OTHER])
    # the same windows (same doc_id and start) with the other labelling: embedded once
    other_neuron = neuron([(t, 0.0) for t in TIME] + [(t, 9.0) for t in OTHER])
    explanations = ["units of time", "colours, cars and animals", ""]
    embedder._window_memo.clear()
    calls = count_embeds(monkeypatch, embedder)
    rows = embedding_scores_batch([time_neuron, other_neuron, time_neuron], explanations, embedder, "set-f")
    assert calls == [2, 6]  # the non-blank explanations, then each distinct window once
    assert rows[0]["auroc"] == 1.0 and rows[1]["auroc"] == 1.0 and np.isnan(rows[2]["auroc"])
    for n, e, row in zip([time_neuron, other_neuron], explanations, rows):
        single = embedding_scores(n, e, embedder, "set-f")
        assert single == pytest.approx(row, abs=1e-5)


def test_bad_scoring_arguments_are_config_errors():
    n = neuron([(TIME[0], 9.0)])
    with pytest.raises(ConfigError, match="active"):
        embedding_scores(n, "time", Embedder(), "set-g", active="half")
    with pytest.raises(ConfigError, match="2 explanations"):
        embedding_scores_batch([n], ["a", "b"], Embedder(), "set-g")
