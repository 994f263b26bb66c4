"""The corpus as fixed-length windows, and its documents split by seed into an explain pool and a
scoring pool (explain records come from the first, calibration and test records from the second,
so no document is shared)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from harness.corpus import Corpus
from harness.errors import CorpusError
from harness.subject import Subject

POOLS = ("explain", "scoring")


@dataclass
class Windows:
    """Every full window of the corpus: document index, start token and token ids."""

    doc: np.ndarray  # [W] index into corpus.documents
    start: np.ndarray  # [W]
    ids: np.ndarray  # [W, T] int64
    pool: np.ndarray  # [W] 0 = explain, 1 = scoring


def make_windows(corpus: Corpus, tokenizer, window: int, explain_fraction: float, seed: int,
                 max_windows: int | None) -> tuple[Windows, dict[str, list[str]], int]:
    """All full windows (or a seeded subset of `max_windows`), the document pools, and the
    number of full windows in the corpus."""
    rng = np.random.default_rng(seed)
    n_docs = len(corpus.documents)
    order = rng.permutation(n_docs)
    n_explain = int(round(explain_fraction * n_docs))
    if n_explain == 0 or n_explain == n_docs:
        raise CorpusError(f"corpus {corpus.name} has {n_docs} documents: too few to split into an explain "
                          "and a scoring pool; use a corpus with at least 2 documents.")
    pool_of = np.zeros(n_docs, dtype=np.int64)
    pool_of[order[n_explain:]] = 1
    docs, starts, ids = [], [], []
    for d, document in enumerate(tqdm(corpus.documents, desc="tokenizing", unit="doc")):
        tokens = tokenizer(document.text, add_special_tokens=False).input_ids
        for start in range(0, len(tokens) - window + 1, window):
            docs.append(d)
            starts.append(start)
            ids.append(tokens[start:start + window])
    if not ids:
        raise CorpusError(f"corpus {corpus.name} has no document of at least {window} tokens.")
    w = Windows(np.array(docs), np.array(starts), np.array(ids, dtype=np.int64), pool_of[np.array(docs)])
    n_all = len(w.doc)
    if max_windows:  # a quick build: a seeded subset of windows, in corpus order
        keep = np.sort(rng.choice(len(w.doc), size=min(max_windows, len(w.doc)), replace=False))
        w = Windows(w.doc[keep], w.start[keep], w.ids[keep], w.pool[keep])
    for p, name in enumerate(POOLS):
        if not (w.pool == p).any():
            raise CorpusError(f"the {name} pool has no windows; use more documents or a shorter window.")
    pools = {name: sorted(corpus.documents[d].doc_id for d in range(n_docs) if pool_of[d] == p)
             for p, name in enumerate(POOLS)}
    return w, pools, n_all


def forward_batches(subject: Subject, ids: np.ndarray, layers: list[int], batch_size: int, desc: str):
    """Yield (batch slice, activations [b, T, len(layers) * n_neurons] on the CPU) with a progress bar."""
    with tqdm(total=len(ids) * ids.shape[1], desc=desc, unit="tok", unit_scale=True) as bar:
        for lo in range(0, len(ids), batch_size):
            batch = torch.from_numpy(ids[lo:lo + batch_size])
            acts = subject.record(batch, layers)
            yield slice(lo, lo + len(batch)), torch.cat([acts[layer] for layer in layers], -1).float().cpu()
            bar.update(batch.numel())
