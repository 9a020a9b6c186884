"""Tests for gato_jax.tokenizers.interleaved: images laid out as in captions, and layout properties of any
mix of text and images (hypothesis)."""
import numpy as np
import pytest
from documents_test import small_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from gato_jax.tokenizers import episode as episode_lib
from gato_jax.tokenizers import images as images_lib
from gato_jax.tokenizers import interleaved
from gato_jax.tokenizers.interleaved import TextPiece
from gato_jax.tokenizers.sequence import NO_LOCAL_POS, Modality
from gato_jax.tokenizers.vocab import VocabLayout

WORDS = ("dax", "red", "two", "circles", "on the left.", "which image has more shapes?", "yes")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return small_tokenizer(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def layout(tokenizer):
    return VocabLayout(tokenizer.vocab_size)


def image(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (16 * rows, 16 * cols, 3), dtype=np.uint8)


def test_image_piece_is_laid_out_as_in_captions(tokenizer, layout):
    picture = image(2, 3, 0)
    caption_seq = episode_lib.tokenize_caption(tokenizer, layout, picture, "two red circles")
    piece = interleaved.tokenize_image(layout, picture)
    assert piece.length == 6 + 2
    for got, want in zip(piece, caption_seq):
        np.testing.assert_array_equal(got, want[:piece.length])


PIECES = st.lists(st.one_of(
    st.tuples(st.sampled_from(WORDS), st.booleans()),
    st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(0, 99))), max_size=6)


@settings(max_examples=25, deadline=None)
@given(PIECES, st.booleans())
def test_any_mix_of_text_and_images(tokenizer, layout, spec, eos):
    pieces = [TextPiece(*p) if isinstance(p[0], str) else image(*p) for p in spec]
    seq = interleaved.tokenize_interleaved(tokenizer, layout, pieces, eos=eos)
    texts = [p for p in pieces if isinstance(p, TextPiece)]
    pictures = [p for p in pieces if not isinstance(p, TextPiece)]
    num_patches = sum(p.shape[0] * p.shape[1] // 256 for p in pictures)
    num_text = sum(len(tokenizer.encode(p.text)) for p in texts)
    assert seq.length == 1 + num_text + num_patches + 2 * len(pictures) + eos
    assert seq.tokens[0] == layout.special_id("<bos>") and (seq.segment_ids == 1).all()
    is_text = seq.modality == Modality.TEXT
    assert tokenizer.decode(seq.tokens[is_text]) == " ".join(p.text for p in texts)
    want_loss = [flag for p in texts for flag in [p.loss] * len(tokenizer.encode(p.text))]
    np.testing.assert_array_equal(seq.loss_mask[is_text], want_loss)
    assert (seq.tokens[-1] == layout.special_id("<eos>") and seq.loss_mask[-1]) == eos
    assert seq.loss_mask.sum() == sum(want_loss) + eos, "no loss on <bos>, boundaries or patches"
    is_patch = seq.modality == Modality.IMAGE
    assert is_patch.sum() == num_patches and (seq.local_pos[~is_patch] == NO_LOCAL_POS).all()
    want_pixels = [images_lib.image_to_patch_pixels(p) for p in pictures]
    if pictures:
        np.testing.assert_array_equal(seq.patches[is_patch], np.concatenate(want_pixels))
        np.testing.assert_array_equal(seq.local_pos[is_patch], np.concatenate([np.arange(len(w)) for w in want_pixels]))
    assert not seq.patches[~is_patch].any() and not seq.patch_pos[~is_patch].any()


def test_text_must_be_wrapped_and_non_empty(tokenizer, layout):
    with pytest.raises(TypeError, match="TextPiece"):
        interleaved.tokenize_interleaved(tokenizer, layout, ["dax"])
    with pytest.raises(ValueError, match="empty"):
        interleaved.tokenize_interleaved(tokenizer, layout, [TextPiece("")])
