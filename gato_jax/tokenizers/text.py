"""Text <-> ids with SentencePiece (docs/TOKEN_FORMAT.md, "One id space": text owns ids [0, text_size)).

Every id in [0, vocab_size) is a real piece: SentencePiece's own BOS/EOS/PAD are disabled because the
layout's specials (`<bos>`, `<eos>`, `<pad>`) live after the value ranges; only `<unk>` keeps id 0.
Normalisation defaults to "identity" without whitespace folding, so decode(encode(t)) == t for any text
whose characters the model has seen. The serialized model travels inside checkpoints
(`model_proto_bytes`), like the VocabLayout, so a checkpoint can never be read with another vocabulary.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from gato_jax.tokenizers.vocab import VocabLayout


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both.
        return False


class TextTokenizer:
    """A thin wrapper over a SentencePiece unigram model."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, model_proto: bytes | None = None):
        if (model_path is None) == (model_proto is None):
            raise ValueError("TextTokenizer needs exactly one of model_path or model_proto.")
        if model_path is not None and not os.path.exists(model_path):
            raise ValueError(f"SentencePiece model {str(model_path)!r} does not exist; train one first.")
        self._sp = spm.SentencePieceProcessor()
        if model_path is not None:
            self._sp.Load(str(model_path))
        else:
            self._sp.LoadFromSerializedProto(model_proto)

    @classmethod
    def from_proto_bytes(cls, model_proto: bytes) -> TextTokenizer:
        """Rebuilds the tokenizer a checkpoint embedded with `model_proto_bytes`."""
        return cls(model_proto=model_proto)

    @classmethod
    def train(
        cls,
        corpus_path: str | os.PathLike,
        vocab_size: int,
        model_prefix: str | os.PathLike,
        *,
        input_sentence_size: int = 200_000,  # Lines sampled from the corpus; keeps training to seconds.
        normalization: str = "identity",  # "nmt_nfkc" folds Unicode variants; identity keeps round trips exact.
        seed: int = 0,
        whole_words: Sequence[str] = (),
    ) -> TextTokenizer:
        """Trains a unigram model on a one-sentence-per-line file; writes `<model_prefix>.model`.

        Deterministic for a given corpus and seed: the sentence sampler's seed is fixed and training runs
        single-threaded (multi-threaded EM sums in a varying order). Each of `whole_words` becomes one
        piece when it starts a word ("▁dax"): made-up words too rare in the corpus for the unigram model to
        keep would otherwise be spelled out, and a label that is one token is one step to copy.
        """
        if not os.path.exists(corpus_path):
            raise ValueError(f"Corpus {str(corpus_path)!r} does not exist.")
        spm.set_random_generator_seed(seed)
        with open(os.devnull, "w") as quiet:  # The trainer logs every EM step to stderr.
            # sentencepiece redirects through sys.stderr's file descriptor; a captured stderr (pytest's capsys,
            # some notebooks) has none, and then the log goes to the process's stderr instead.
            logs = {"logstream": quiet} if _has_fileno(sys.stderr) else {}
            spm.SentencePieceTrainer.train(
                input=str(corpus_path), model_prefix=str(model_prefix), vocab_size=vocab_size,
                model_type="unigram", character_coverage=1.0, input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True, num_threads=1, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                normalization_rule_name=normalization, remove_extra_whitespaces=False, byte_fallback=False,
                user_defined_symbols=[f"▁{w}" for w in whole_words], **logs,
            )
        return cls(f"{model_prefix}.model")

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def check_layout(self, layout: VocabLayout) -> None:
        """Text ids must fill the layout's text range exactly, or later offsets would alias pieces."""
        if self.vocab_size != layout.text_size:
            raise ValueError(
                f"Tokenizer has {self.vocab_size} pieces but the layout reserves text_size={layout.text_size}; "
                "build the VocabLayout with text_size=tokenizer.vocab_size."
            )

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids in [0, vocab_size)."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"encode needs a non-empty string, got {text!r}.")
        return list(self._sp.EncodeAsIds(text))

    def decode(self, ids) -> str:
        """Piece ids -> text; ids outside [0, vocab_size) (values, specials) raise."""
        ids = [int(i) for i in np.asarray(ids).ravel()]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode got id {bad[0]}, outside the text range [0, {self.vocab_size}).")
        return self._sp.DecodeIds(ids)

    def model_proto_bytes(self) -> bytes:
        """The serialized model, so a checkpoint can embed the exact vocabulary it trained with."""
        return self._sp.serialized_model_proto()
