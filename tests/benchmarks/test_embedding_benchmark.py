"""The embedding scorer on all-MiniLM-L6-v2, with the test windows of the first `N_NEURONS` neurons
of the committed set smollm2-135m-brown-v2 (one thread):
- the one-time window embedding: windows per second of `window_embeddings` with an empty cache
  (tokenize, forward, mean pooling, normalisation, writing the cache file) against the model's bare
  forward over the same texts (tokenize + forward in the same length-sorted batches of the same
  size, no pooling, no cache); goal ≥ 0.8×. Both are timed alternately, best of `REPEATS`, each
  repeat of `window_embeddings` under its own set key so that it finds no cached window;
- scoring with the windows cached: neurons per second of `embedding_scores_batch` (one query
  embedding per neuron, then the AUROCs), best of `REPEATS`; that only the queries are embedded
  is asserted.
Timings are printed, not asserted. Runs once under the default `--benchmark-disable`; `pytest
tests/benchmarks/test_embedding_benchmark.py -s` shows the report.
"""

import time

import numpy as np
import pytest
import torch

from harness.embedding import Embedder, embedding_scores_batch, window_embeddings, window_key
from harness.records import load_set

N_NEURONS, REPEATS = 20, 2


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_window_embedding_against_the_bare_forward_and_scoring_rate(benchmark, tmp_path, monkeypatch):
    neuron_set = load_set("smollm2-135m-brown-v2", limit=N_NEURONS)
    neurons = neuron_set.neurons
    records = [r for n in neurons for r in n.test]
    texts = list({window_key(r): "".join(r.tokens) for r in records}.values())  # the windows it embeds, once each
    embedder = Embedder()
    embedder.embed(texts[:embedder.batch_size])  # load (from the shared model cache) and warm up
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))  # window caches from here on go to an empty directory

    # the bare forward: the Embedder's own model and tokenizer, its batches (texts sorted by length)
    model, tokenizer = embedder._model, embedder._tokenizer
    ordered = sorted(texts, key=len)

    @torch.no_grad()
    def bare():
        for lo in range(0, len(ordered), embedder.batch_size):
            batch = tokenizer(ordered[lo:lo + embedder.batch_size], padding=True, truncation=True,
                              max_length=embedder._max_length, return_tensors="pt").to(embedder.device)
            model(**batch)

    set_keys = [f"{neuron_set.hash}.r{r}" for r in range(REPEATS)]
    t_bare = t_cached = float("inf")

    def timed():
        nonlocal t_bare, t_cached
        for key in set_keys:  # alternating, so load changes hit both alike
            t0 = time.perf_counter()
            bare()
            t1 = time.perf_counter()
            window_embeddings(key, records, embedder)
            t2 = time.perf_counter()
            t_bare, t_cached = min(t_bare, t1 - t0), min(t_cached, t2 - t1)

    benchmark.pedantic(timed, rounds=1, iterations=1)
    assert {p.name for p in (tmp_path / "embeddings").iterdir()} == {f"{k}-{embedder.identity}.npz" for k in set_keys}

    # scoring once the windows are cached: only the explanations are embedded
    explanations = [f'the word "{n.test[0].tokens[int(np.argmax(n.test[0].activations))].strip()}"' for n in neurons]
    embedded: list[int] = []
    embed = embedder.embed
    monkeypatch.setattr(embedder, "embed", lambda batch: (embedded.append(len(batch)), embed(batch))[1])
    t_score = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        rows = embedding_scores_batch(neurons, explanations, embedder, set_keys[-1])
        t_score = min(t_score, time.perf_counter() - t0)
    assert embedded == [N_NEURONS] * REPEATS
    aurocs = np.array([r["auroc"] for r in rows])
    assert len(rows) == N_NEURONS and np.isfinite(aurocs).any()
    assert np.all((aurocs[np.isfinite(aurocs)] >= 0) & (aurocs[np.isfinite(aurocs)] <= 1))

    report = {"windows": len(texts), "test_records": len(records), "bare_forward_windows_s": len(texts) / t_bare,
              "window_embeddings_windows_s": len(texts) / t_cached, "window_embeddings_vs_bare": t_bare / t_cached,
              "scoring_neurons_s": N_NEURONS / t_score}
    benchmark.extra_info.update(report)
    print(f"\nembedding scorer, {embedder.identity}, {len(texts)} distinct test windows of {N_NEURONS} neurons of "
          f"smollm2-135m-brown-v2 ({len(records)} records), batch {embedder.batch_size}, 1 thread, best of "
          f"{REPEATS}:\n"
          f"  bare forward (tokenize + forward)      {report['bare_forward_windows_s']:7.1f} windows/s\n"
          f"  window_embeddings, empty cache          {report['window_embeddings_windows_s']:7.1f} windows/s "
          f"= {report['window_embeddings_vs_bare']:.2f}x bare (goal >= 0.8x)\n"
          f"  embedding_scores_batch, windows cached  {report['scoring_neurons_s']:7.1f} neurons/s "
          f"({N_NEURONS} queries + AUROCs in {t_score:.3f} s; a 300-neuron entry ~{300 * t_score / N_NEURONS:.1f} s)")
