"""Tests for gato_jax.tokenizers.text and the text / caption sequences of gato_jax.tokenizers.episode."""
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2

from gato_jax.tokenizers import episode, images
from gato_jax.tokenizers.sequence import NO_LOCAL_POS, Modality
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

VOCAB = 160
SUBJECTS = ("the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "our robot", "the farmer",
            "a young girl", "the pilot", "her brother", "the baker", "a tired horse", "the children", "his mother",
            "the captain", "a quiet student", "the painter", "our neighbour", "the king")
VERBS = ("sees", "likes", "builds", "paints", "finds", "carries", "watches", "follows", "cleans", "opens",
         "throws", "catches", "reads", "writes", "moves", "pushes", "wants", "keeps", "drops", "brings")
OBJECTS = ("a red ball", "the green door", "three apples", "an empty box", "the blue sky", "some water",
           "a long road", "the quiet river", "two books", "a bright lamp", "seven stones", "the yellow kite",
           "a warm jacket", "the broken chair", "four letters", "a heavy bag", "the wooden bridge", "fresh bread",
           "a strange map", "the white cloud")
ADVERBS = ("today", "slowly", "at night", "every morning", "with care", "near the house", "quickly", "again",
           "in the park", "before lunch", "after school", "on Monday", "by the window", "under the tree",
           "without a word", "in winter", "at noon", "once more", "for an hour", "very gently")
WORDS = sorted({w for phrase in SUBJECTS + VERBS + OBJECTS + ADVERBS for w in phrase.split()})


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ADVERBS)}"
            f"{rng.choice('.!?')}" for _ in range(n)]


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(_sentences(400)) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(corpus_path, tmp_path_factory):
    return TextTokenizer.train(corpus_path, VOCAB, tmp_path_factory.mktemp("spm") / "tiny")


@pytest.fixture(scope="module")
def layout():
    return VocabLayout(text_size=VOCAB)


def _pieces(tok: TextTokenizer) -> list[tuple[str, float]]:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto_bytes())
    return [(p.piece, p.score) for p in proto.pieces]


def test_trained_vocab_is_all_pieces(tokenizer):
    assert tokenizer.vocab_size == VOCAB
    pieces = _pieces(tokenizer)
    assert pieces[0][0] == "<unk>"
    assert not {"<s>", "</s>", "<pad>"} & {p for p, _ in pieces}  # BOS/EOS/PAD disabled.


def test_training_is_deterministic(tokenizer, corpus_path, tmp_path):
    assert _pieces(TextTokenizer.train(corpus_path, VOCAB, tmp_path / "again")) == _pieces(tokenizer)


def test_whole_words_are_one_piece_at_a_word_start(tokenizer, corpus_path, tmp_path):
    made_up = ("dax", "blicket", "zorp")  # Absent from the corpus: the trainer alone would spell them out.
    tok = TextTokenizer.train(corpus_path, VOCAB, tmp_path / "words", whole_words=made_up)
    for word in made_up:
        assert len(tok.encode(word)) == 1 and len(tok.encode(f"the cat sees a {word}")) == \
            len(tok.encode("the cat sees a")) + 1
    assert tok.decode(tok.encode("a daxes zorp.")) == "a daxes zorp."
    assert all(len(tokenizer.encode(w)) > 1 for w in made_up), "without whole_words they are spelled out"


def test_model_proto_bytes_reload(tokenizer, tmp_path):
    reloaded = TextTokenizer.from_proto_bytes(tokenizer.model_proto_bytes())
    text = "The king reads two books at noon."
    assert reloaded.encode(text) == tokenizer.encode(text)
    path = tmp_path / "copy.model"
    path.write_bytes(tokenizer.model_proto_bytes())
    assert TextTokenizer(path).encode(text) == tokenizer.encode(text)


sentence = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)


@settings(max_examples=50, deadline=None)
@given(sentence, st.sampled_from(["", ".", "!", " ", "  "]))
def test_text_round_trip_exact(tokenizer, text, suffix):
    ids = tokenizer.encode(text + suffix)
    assert all(0 <= i < VOCAB for i in ids)
    assert tokenizer.decode(ids) == text + suffix


def test_encode_rejects_empty(tokenizer):
    with pytest.raises(ValueError, match="non-empty"):
        tokenizer.encode("")


def test_decode_rejects_non_text_ids(tokenizer):
    with pytest.raises(ValueError, match="text range"):
        tokenizer.decode([1, VOCAB])


def test_missing_model_and_corpus_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TextTokenizer(tmp_path / "nope.model")
    with pytest.raises(ValueError, match="does not exist"):
        TextTokenizer.train(tmp_path / "nope.txt", 100, tmp_path / "m")


def test_layout_mismatch_raises(tokenizer):
    with pytest.raises(ValueError, match="text_size"):
        episode.tokenize_text(tokenizer, VocabLayout(), "The cat sees a red ball.")


def test_tokenize_text_layout(tokenizer, layout):
    text = "The cat sees a red ball."
    seq = episode.tokenize_text(tokenizer, layout, text)
    ids = tokenizer.encode(text)
    k = len(ids)
    assert list(seq.tokens) == [layout.special_id("<bos>"), *ids, layout.special_id("<eos>")]
    assert list(seq.modality) == [Modality.SPECIAL] + [Modality.TEXT] * k + [Modality.SPECIAL]
    assert list(seq.loss_mask) == [False] + [True] * (k + 1)
    assert np.all(seq.local_pos == NO_LOCAL_POS) and np.all(seq.segment_ids == 1)
    assert seq.patches.shape == (k + 2, 768) and not seq.patches.any() and not seq.patch_pos.any()


def test_tokenize_caption_layout(tokenizer, layout):
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    caption = "A dog finds the yellow kite."
    seq = episode.tokenize_caption(tokenizer, layout, image, caption, 16)
    ids, n = tokenizer.encode(caption), 6
    k = len(ids)
    img, end_img = layout.special_id("<image>"), layout.special_id("</image>")
    bos, eos = layout.special_id("<bos>"), layout.special_id("<eos>")
    assert list(seq.tokens) == [img] * (n + 1) + [end_img, bos, *ids, eos]
    assert list(seq.modality) == ([Modality.SPECIAL] + [Modality.IMAGE] * n + [Modality.SPECIAL] * 2
                                  + [Modality.TEXT] * k + [Modality.SPECIAL])
    assert list(seq.loss_mask) == [False] * (n + 3) + [True] * (k + 1)
    assert list(seq.local_pos) == [-1, *range(n)] + [-1] * (k + 3)
    np.testing.assert_array_equal(seq.patches[1:n + 1], images.image_to_patch_pixels(image, 16))
    np.testing.assert_array_equal(seq.patch_pos[1:n + 1], images.patch_intervals(32, 48, 16))
    assert not seq.patches[n + 1:].any() and not seq.patch_pos[n + 1:].any() and not seq.patches[0].any()
    assert np.all(seq.segment_ids == 1)


def test_caption_rejects_bad_image_and_empty_caption(tokenizer, layout):
    with pytest.raises(ValueError, match="uint8"):
        episode.tokenize_caption(tokenizer, layout, np.zeros((16, 16, 3)), "A dog.", 16)
    with pytest.raises(ValueError, match="non-empty"):
        episode.tokenize_caption(tokenizer, layout, np.zeros((16, 16, 3), np.uint8), "", 16)
