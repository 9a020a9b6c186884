"""Interleaved image-text pieces to one TokenSequence (KOSMOS-1 style documents, questions, few-shot episodes).

Array key: T = tokens, N = patches of one image, P = patch pixels.

A sequence is `<bos>`, then each piece in order, then `<eos>`:
- a text piece is its SentencePiece ids (Modality.TEXT, no local position), each piece encoded on its own,
  so an answer tokenizes the same after any question and a prompt plus `tokenize_continuation` equals
  the whole example token for token;
- an image piece is `<image>` patches `</image>`, exactly the image part of `episode.tokenize_caption`:
  boundaries SPECIAL, patches Modality.IMAGE with the `<image>` id as placeholder, local positions
  0..N-1 restarting in every image, patch intervals from `images.patch_intervals`.
The loss falls on text pieces marked `loss` and on the final `<eos>`; never on `<bos>`, boundaries or patches.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from gato_jax.tokenizers import images as images_lib
from gato_jax.tokenizers import sequence as seq_lib

# Private in episode.py, imported rather than copied: the one place a per-token TokenSequence is built.
from gato_jax.tokenizers.episode import _sequence
from gato_jax.tokenizers.sequence import MAX_LOCAL_POSITIONS, NO_LOCAL_POS, Modality, TokenSequence
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout


class TextPiece(NamedTuple):
    """Text between images; `loss` says whether the model is trained to write it."""

    text: str
    loss: bool = True


Piece = TextPiece | np.ndarray  # An image is uint8 [H, W, C].


class TokenizedPrompt(NamedTuple):
    """A multiple-choice item: the prompt, and candidate answers each scored as `answer <eos>` after it."""

    prompt: TokenSequence  # `<bos>` pieces, without the answer and `<eos>`.
    candidates: tuple[str, ...]
    answer: int  # Index of the right candidate.
    question_type: str  # Accuracy is reported per type.
    ideal: float | None = None  # A perfect reader's expected accuracy on this item (few-shot: Bayes-optimal).
    group: str | None = None  # Reported within its type (few-shot: the attribute the words name).


def _special(layout: VocabLayout, name: str, loss: bool, patch_size: int) -> TokenSequence:
    return _sequence([layout.special_id(name)], [Modality.SPECIAL], [NO_LOCAL_POS], [loss], patch_size)


def _text(tokenizer: TextTokenizer, piece: TextPiece, patch_size: int) -> TokenSequence:
    if not piece.text:
        raise ValueError("An interleaved text piece is empty; leave it out instead.")
    ids = tokenizer.encode(piece.text)
    k = len(ids)
    return _sequence(ids, [Modality.TEXT] * k, [NO_LOCAL_POS] * k, [piece.loss] * k, patch_size)


def tokenize_image(layout: VocabLayout, image: np.ndarray, patch_size: int = 16) -> TokenSequence:
    """`<image>` patches `</image>` with local positions 0..N-1 on the patches; no loss anywhere."""
    pixels_NxP = images_lib.image_to_patch_pixels(image, patch_size)
    n = len(pixels_NxP)
    if n > MAX_LOCAL_POSITIONS:
        raise ValueError(f"An image of {n} patches exceeds {MAX_LOCAL_POSITIONS} local positions; resize it.")
    image_id = layout.special_id("<image>")
    tokens = [image_id] * (n + 1) + [layout.special_id("</image>")]
    modality = [Modality.SPECIAL, *[Modality.IMAGE] * n, Modality.SPECIAL]
    local_pos = [NO_LOCAL_POS, *range(n), NO_LOCAL_POS]
    intervals_Nx4 = images_lib.patch_intervals(*np.shape(image)[:2], patch_size)
    return _sequence(tokens, modality, local_pos, [False] * (n + 2), patch_size, pixels_NxP, intervals_Nx4,
                     patch_start=1)


def _piece(tokenizer: TextTokenizer, layout: VocabLayout, piece: Piece, patch_size: int) -> TokenSequence:
    if isinstance(piece, TextPiece):
        return _text(tokenizer, piece, patch_size)
    if isinstance(piece, str):
        raise TypeError("Wrap text in TextPiece(text, loss) so its loss is stated, not assumed.")
    return tokenize_image(layout, piece, patch_size)


def tokenize_interleaved(tokenizer: TextTokenizer, layout: VocabLayout, pieces: Sequence[Piece],
                         patch_size: int = 16, *, eos: bool = True) -> TokenSequence:
    """`<bos>` pieces `<eos>` as one segment; `eos=False` leaves the end open (a prompt to continue)."""
    tokenizer.check_layout(layout)
    parts = [_special(layout, "<bos>", False, patch_size)]
    parts += [_piece(tokenizer, layout, piece, patch_size) for piece in pieces]
    if eos:
        parts.append(_special(layout, "<eos>", True, patch_size))
    return seq_lib.concat(parts)


def tokenize_continuation(tokenizer: TextTokenizer, layout: VocabLayout, text: str,
                          patch_size: int = 16) -> TokenSequence:
    """`text <eos>` with loss on all of it: what follows a prompt, as the training example ends."""
    return seq_lib.concat([_text(tokenizer, TextPiece(text, True), patch_size),
                           _special(layout, "<eos>", True, patch_size)])
