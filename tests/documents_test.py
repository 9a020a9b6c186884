"""Tests for data_pipelines.documents and gato_jax.tokenizers.interleaved: right answers, fresh few-shot
words, pixel-disjoint splits, determinism, atomic builds, and the token layout of interleaved examples."""
import collections
import os

import numpy as np
import pytest
from scipy import ndimage

from data_pipelines import captions, documents
from data_pipelines.captions import COLOURS, Scene
from gato_jax.tokenizers import interleaved
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.interleaved import TextPiece
from gato_jax.tokenizers.sequence import NO_LOCAL_POS, Modality
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

SIZE, SEED = 32, 3
PATCHES = (SIZE // 16) ** 2
NUM_TRAIN, NUM_TEST = 28, 14


def small_tokenizer(folder) -> TextTokenizer:
    """100 pieces trained on `document_training_text`: the tiny model's text_size (model_test.LAYOUT)."""
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(documents.document_training_text(3000)) + "\n")
    return TextTokenizer.train(corpus, 100, os.path.join(folder, "spm_100"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> TextTokenizer:
    return small_tokenizer(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="module")
def layout(tokenizer) -> VocabLayout:
    return VocabLayout(tokenizer.vocab_size)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("documents")
    path = documents.prepare_documents(data_dir, num_train=NUM_TRAIN, num_test=NUM_TEST, image_size=SIZE, seed=SEED,
                                       progress=False)
    return data_dir, path


def generated(kind: str, split: str = "train", n: int = 70) -> list[dict]:
    return [documents.make_example(kind, split, i, SIZE, SEED) for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# Right by construction.


def expected_answer(question_type: str, scenes: list[Scene]) -> str:
    """Written out again here, independently of `documents.true_answer`."""
    a = scenes[0]
    single = {"count": ["one", "two", "three"][a.count - 1], "colour": a.colour, "shape": a.shape,
              "position": a.place}
    if question_type in single:
        return single[question_type]
    b = scenes[1]
    if question_type == "more":
        return "same" if a.count == b.count else ("first" if a.count > b.count else "second")
    key = "colour" if question_type == "same_colour" else "shape"
    return "yes" if getattr(a, key) == getattr(b, key) else "no"


def check_image_shows(image: np.ndarray, scene: Scene) -> None:
    """Only the scene's palette colour on black, in as many solid objects as the scene counts."""
    colours = {tuple(c) for c in image.reshape(-1, 3)} - {(0, 0, 0)}
    assert colours == {COLOURS[scene.colour]}
    assert ndimage.label(np.any(image != 0, axis=-1))[1] == scene.count


def test_question_answers_are_right_and_types_take_turns():
    examples = generated("questions")
    for index, ex in enumerate(examples):
        meta, scenes = ex["meta"], documents.example_scenes(ex)
        assert meta["question_type"] == documents.QUESTION_TYPES[index % len(documents.QUESTION_TYPES)]
        assert tuple(meta["candidates"]) == documents.ANSWERS[meta["question_type"]]
        assert meta["candidates"][meta["answer"]] == expected_answer(meta["question_type"], scenes)
        assert len(scenes) == (2 if meta["question_type"] in documents.PAIR_TYPES else 1) == len(ex["images"])
        for image, scene in zip(ex["images"], scenes):
            check_image_shows(image, scene)
        assert not any(s.novel for s in scenes), "captions' held-out pairs stay out"
    assert all(len(a) <= 6 and all(" " not in w for w in a) for a in documents.ANSWERS.values())


def test_documents_describe_and_compare_their_scenes():
    for ex in generated("documents", n=30):
        texts, scenes = ex["meta"]["texts"], documents.example_scenes(ex)
        assert 2 <= len(scenes) <= 3 and len(texts) == len(scenes) + 1 and texts[0] in documents.INTROS
        for i, (text, scene) in enumerate(zip(texts[1:], scenes)):
            assert text.startswith(captions.caption(scene))
            check_image_shows(ex["images"][i], scene)
            if i:
                prev = scenes[i - 1]
                more = "more" if scene.count > prev.count else "fewer" if scene.count < prev.count else "as many"
                assert f"; {more} shapes" in text
                assert text.endswith("the same colour." if scene.colour == prev.colour else "another colour.")


def test_fewshot_demonstrations_match_their_words():
    for index, ex in enumerate(generated("fewshot")):
        meta, scenes = ex["meta"], documents.example_scenes(ex)
        words, classes = meta["words"], meta["classes"]
        assert len(scenes) == documents.SHOTS + 1 == len(classes) and classes[-1] == index % 2
        for scene, c in zip(scenes, classes):
            assert expected_answer(meta["attribute"], [scene]) == meta["values"][c]
        assert meta["values"][0] != meta["values"][1] and words[0] != words[1]
        assert sorted(meta["header"]) == sorted(words) and meta["candidates"] == meta["header"]
        assert meta["candidates"][meta["answer"]] == words[classes[-1]]
        for pair in range(documents.SHOTS // 2):  # Any even prefix shows both classes.
            assert sorted(classes[2 * pair:2 * pair + 2]) == [0, 1]


def test_fewshot_words_are_assigned_afresh_every_episode():
    meanings = collections.defaultdict(set)
    attributes, query_classes = collections.Counter(), []
    for ex in generated("fewshot", n=120):
        meta = ex["meta"]
        attributes[meta["attribute"]] += 1
        query_classes.append(meta["classes"][-1])
        for word, value in zip(meta["words"], meta["values"]):
            meanings[word].add((meta["attribute"], value))
    assert set(attributes) == set(documents.ATTRIBUTES)
    assert np.mean(query_classes) == 0.5, "the query's class is balanced"
    many = [w for w, m in meanings.items() if len(m) >= 3]
    assert len(many) >= len(documents.NONSENSE_WORDS) // 2, "the same word means different things"
    assert any(len({a for a, _ in meanings[w]}) >= 3 for w in many), "...even different attributes"
    header_first = [ex["meta"]["header"][0] == ex["meta"]["words"][0] for ex in generated("fewshot", n=120)]
    assert 0.3 < np.mean(header_first) < 0.7, "the header's order says nothing about the classes"


def test_fresh_episodes_are_unpaired_varied_and_from_training_images():
    fresh = documents.FreshEpisodes(SIZE, SEED, max_shots=5)
    episodes = [fresh[i] for i in range(40)]
    assert [len(ex["images"]) for ex in episodes] == [2 + i % 5 for i in range(40)], "1 to 5 demonstrations"
    assert fresh[-1]["meta"] == fresh[len(fresh) - 1]["meta"] and fresh[7]["meta"] == episodes[7]["meta"]
    demo_classes = [c for ex in episodes for c in ex["meta"]["classes"][:-1]]
    assert 0.3 < np.mean(demo_classes) < 0.7
    unpaired = [ex["meta"]["classes"][:2] for ex in episodes if len(ex["images"]) >= 3]
    assert [0, 0] in unpaired or [1, 1] in unpaired, "no pair structure: a word's position says nothing"
    for ex in episodes:
        meta = ex["meta"]
        for scene, c in zip(documents.example_scenes(ex), meta["classes"]):
            assert expected_answer(meta["attribute"], [scene]) == meta["values"][c]
        assert all(captions.image_split(image) == "train" for image in ex["images"])
    with pytest.raises(ValueError, match="fewshot_train_max_shots"):
        documents.FreshEpisodes(SIZE, SEED, max_shots=0)


def test_one_difference_episodes_vary_only_the_named_attribute():
    fresh = documents.FreshEpisodes(SIZE, SEED, max_shots=4, one_difference=0.5)
    episodes = [fresh[i] for i in range(60)]
    easy = 0
    for ex in episodes:
        meta, scenes = ex["meta"], documents.example_scenes(ex)
        for scene, c in zip(scenes, meta["classes"]):
            assert expected_answer(meta["attribute"], [scene]) == meta["values"][c]
        others = [a for a in documents.ATTRIBUTES if a != meta["attribute"]]
        fixed = all(len({documents.attribute_value(s, a) for s in scenes}) == 1 for a in others)
        easy += fixed and len({documents.attribute_value(s, meta["attribute"]) for s in scenes}) == 2
        assert not any(s.novel for s in scenes)
    assert 15 < easy < 45, f"about half the episodes vary one attribute only, got {easy} of 60"
    assert all(documents.FreshEpisodes(SIZE, SEED, 4)[i]["meta"] == documents.make_example(
        "fewshot", "train", i, SIZE, SEED, shots=1 + i % 4, paired=False)["meta"] for i in range(5))


def test_ideal_reader_is_at_chance_without_demonstrations_and_near_perfect_with_four():
    episodes = generated("fewshot", split="test", n=60)
    ideal = {k: np.mean([documents.ideal_fewshot_accuracy(ex["meta"], k) for ex in episodes]) for k in (0, 1, 4)}
    assert ideal[0] == 0.5, "no demonstrations: every word equally likely"
    assert 0.5 < ideal[1] < ideal[4] and ideal[4] >= 0.9


def test_ideal_reader_on_a_hand_made_episode():
    red, blue, query = [1, "red", "square", "left"], [2, "blue", "circle", "right"], [3, "red", "triangle", "top"]
    meta = {"scenes": [red, blue, query], "classes": [0, 1, 0]}
    assert documents.ideal_fewshot_accuracy(meta, 2) == 1.0, "only colour agrees with both demonstrations"
    assert documents.ideal_fewshot_accuracy({**meta, "classes": [0, 1, 1]}, 2) == 0.0
    assert documents.ideal_fewshot_accuracy(meta, 0) == 0.5


def test_training_text_covers_every_word():
    text_words = {w for line in documents.document_training_text(2000) for w in line.replace("?", " ").split()}
    used = set()
    for kind in documents.KINDS:
        for ex in generated(kind, n=40):
            for piece in documents.example_pieces(ex):
                if isinstance(piece, TextPiece):
                    used |= set(piece.text.replace("?", " ").replace(".", " ").replace(",", " ")
                                .replace(";", " ").split())
    text_words = {w.strip(".,;") for w in text_words}
    assert used <= text_words and set(documents.NONSENSE_WORDS) <= text_words


# ----------------------------------------------------------------------------------------------------
# Held out by pixels, deterministic, atomic.


def test_image_split_holds_out_a_quarter_of_image_space():
    rng = np.random.default_rng(0)
    images = [captions.draw_scene(documents.SCENES[i % len(documents.SCENES)], SIZE, rng) for i in range(800)]
    share = np.mean([documents.image_split(im) == "test" for im in images])
    assert 0.18 < share < 0.32
    lone = Scene(1, "red", "square", "left")  # ~34 drawings at 32 px: both halves still have some.
    for split in documents.SPLITS:
        image = documents.draw_for_split(lone, SIZE, split, [0, 1])
        assert image is not None and documents.image_split(image) == split


def test_no_held_out_image_equals_a_training_image(prepared):
    data_dir, _ = prepared
    train = {im.tobytes() for kind in documents.KINDS
             for ex in documents.load_documents(data_dir, "train", kind) for im in ex["images"]}
    for kind in documents.KINDS:
        for ex in documents.load_documents(data_dir, "test", kind):
            assert not [im for im in ex["images"] if im.tobytes() in train]
            assert all(documents.image_split(im) == "test" for im in ex["images"])


def test_stored_examples_equal_generation(prepared):
    data_dir, _ = prepared
    for kind in documents.KINDS:
        for split, num in (("train", NUM_TRAIN), ("test", NUM_TEST)):
            stored = documents.load_documents(data_dir, split, kind)
            assert len(stored) == num
            for index in (0, num - 1):
                want = documents.make_example(kind, split, index, SIZE, SEED)
                assert stored[index]["meta"] == want["meta"]
                np.testing.assert_array_equal(stored[index]["images"], want["images"])
    other_seed = documents.make_example("fewshot", "test", 5, SIZE, SEED + 1)
    assert other_seed["meta"] != documents.make_example("fewshot", "test", 5, SIZE, SEED)["meta"], "the seed matters"


def test_prepare_is_idempotent_and_an_interrupted_build_never_reads_as_done(prepared, monkeypatch, tmp_path):
    data_dir, path = prepared
    kwargs = {"num_train": NUM_TRAIN, "num_test": NUM_TEST, "image_size": SIZE, "seed": SEED, "progress": False}
    monkeypatch.setattr(documents, "_build", lambda *a, **k: pytest.fail("rebuilt unchanged data"))
    assert documents.prepare_documents(data_dir, **kwargs) == path

    def interrupted(root, *args):
        (root / "scene_documents" / "1.0.0").mkdir(parents=True)
        (root / "scene_documents" / "1.0.0" / "dataset_info.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(documents, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        documents.prepare_documents(tmp_path, **kwargs)
    assert not documents.documents_path(tmp_path).exists() and not list(tmp_path.glob("**/dataset_info.json"))
    with pytest.raises(FileNotFoundError, match="prepare_documents"):
        documents.load_documents(tmp_path, "train", "questions")
    with pytest.raises(ValueError, match="kind"):
        documents.load_documents(data_dir, "train", "essays")


# ----------------------------------------------------------------------------------------------------
# Tokenization.


def image_spans(seq, layout) -> list[tuple[int, int]]:
    """(start, stop) of each `<image>` ... `</image>` span, boundaries included."""
    opens = np.flatnonzero((seq.tokens == layout.special_id("<image>")) & (seq.modality == Modality.SPECIAL))
    closes = np.flatnonzero(seq.tokens == layout.special_id("</image>"))
    assert len(opens) == len(closes)
    return [(int(a), int(b) + 1) for a, b in zip(opens, closes)]


def check_layout(seq, layout, num_images: int) -> None:
    assert seq.tokens[0] == layout.special_id("<bos>") and seq.tokens[-1] == layout.special_id("<eos>")
    assert seq.loss_mask[-1] and not seq.loss_mask[0]
    spans = image_spans(seq, layout)
    assert len(spans) == num_images and (seq.modality == Modality.IMAGE).sum() == num_images * PATCHES
    for start, stop in spans:
        assert stop - start == PATCHES + 2
        np.testing.assert_array_equal(seq.local_pos[start:stop], [NO_LOCAL_POS, *range(PATCHES), NO_LOCAL_POS])
        assert (seq.modality[start + 1:stop - 1] == Modality.IMAGE).all() and not seq.loss_mask[start:stop].any()
    is_text = seq.modality == Modality.TEXT
    assert (seq.local_pos[~np.isin(seq.modality, [Modality.IMAGE])] == NO_LOCAL_POS).all()
    assert (seq.tokens[is_text] < layout.text_size).all() and (seq.segment_ids == 1).all()


def test_question_loss_falls_on_the_answer_and_eos_only(tokenizer, layout):
    for ex in generated("questions", n=7):
        seq = documents.tokenize_example(ex, tokenizer, layout)
        check_layout(seq, layout, len(ex["images"]))
        answer = ex["meta"]["candidates"][ex["meta"]["answer"]]
        assert tokenizer.decode(seq.tokens[seq.loss_mask][:-1]) == answer
        question = seq.tokens[(seq.modality == Modality.TEXT) & ~seq.loss_mask]
        assert tokenizer.decode(question) == ex["meta"]["question"]


def test_document_loss_covers_all_text(tokenizer, layout):
    ex = generated("documents", n=1)[0]
    seq = documents.tokenize_example(ex, tokenizer, layout)
    check_layout(seq, layout, len(ex["images"]))
    is_text = seq.modality == Modality.TEXT
    np.testing.assert_array_equal(seq.loss_mask, is_text | (np.arange(seq.length) == seq.length - 1))
    assert tokenizer.decode(seq.tokens[is_text]) == " ".join(ex["meta"]["texts"])


def test_fewshot_loss_and_label_loss(tokenizer, layout):
    ex = generated("fewshot", n=1)[0]
    words = ex["meta"]["words"]
    plain = documents.tokenize_example(ex, tokenizer, layout)
    check_layout(plain, layout, documents.SHOTS + 1)
    assert tokenizer.decode(plain.tokens[plain.loss_mask][:-1]) == words[ex["meta"]["classes"][-1]]
    labelled = documents.tokenize_example(ex, tokenizer, layout, label_loss=True)
    targets = tokenizer.decode(labelled.tokens[labelled.loss_mask][:-1])
    assert targets == " ".join(words[c] for c in ex["meta"]["classes"])


def test_prompt_plus_continuation_is_the_training_example(tokenizer, layout):
    for ex in generated("questions", n=7) + generated("fewshot", n=2):
        item = documents.answer_prompt(ex, tokenizer, layout)
        whole = documents.tokenize_example(ex, tokenizer, layout)
        joined = seq_lib.concat([item.prompt, interleaved.tokenize_continuation(
            tokenizer, layout, item.candidates[item.answer])])
        for got, want in zip(joined, whole):
            np.testing.assert_array_equal(got, want)


def test_fewshot_prompts_at_every_k(prepared, tokenizer, layout):
    data_dir, _ = prepared
    episodes = documents.load_documents(data_dir, "test", "fewshot")
    items = documents.fewshot_prompts(episodes, tokenizer, layout, max_examples=5)
    assert [it.question_type for it in items] == [f"fewshot_{k}" for k in documents.EVAL_SHOTS for _ in range(5)]
    for position, item in enumerate(items):
        k = int(item.question_type.split("_")[1])
        assert len(image_spans(item.prompt, layout)) == k + 1 and len(item.candidates) == 2
        assert not item.prompt.loss_mask.any()
        assert item.prompt.tokens[-1] == layout.special_id("</image>"), "the answer follows the query image"
        assert item.ideal == documents.ideal_fewshot_accuracy(episodes[position % 5]["meta"], k)
        assert item.group == episodes[position % 5]["meta"]["attribute"], "grouped by the attribute the words name"
        assert item.group in documents.ATTRIBUTES
    rows = documents.fewshot_word_rows(data_dir, tokenizer, layout, 16, episodes=3, shots=5)
    for i, row in enumerate(rows):
        assert len(image_spans(row, layout)) == 5 + 1 and int(row.loss_mask.sum()) == 5 + 1 + 1, "words, <eos>"
        episode = documents.make_example("fewshot", "test", documents.WORD_ROWS_FIRST_INDEX + i, SIZE, SEED,
                                         shots=5, paired=False)
        assert all(captions.image_split(image) == "test" for image in episode["images"]), "held-out pixels"
        np.testing.assert_array_equal(row.patches, documents.tokenize_example(episode, tokenizer, layout,
                                                                              label_loss=True).patches)
    by_kind = {kind: documents.fewshot_word_rows(data_dir, tokenizer, layout, 16, episodes=2, shots=5, kind=kind)
               for kind in documents.WORD_ROW_KINDS}
    assert all(len(rows) == 2 for rows in by_kind.values())
    for i, heldout in enumerate(by_kind["heldout"]):
        np.testing.assert_array_equal(heldout.tokens, rows[i].tokens)
        text = by_kind["text_keys"][i]
        assert not image_spans(text, layout) and int(text.loss_mask.sum()) == 5 + 1 + 1, "keys as text, same words"
        np.testing.assert_array_equal(heldout.tokens[heldout.loss_mask], text.tokens[text.loss_mask])
        identical = by_kind["identical"][i]
        assert len(image_spans(identical, layout)) == 5 + 1
        assert not np.array_equal(identical.patches, heldout.patches), "each class's first drawing, repeated"
    with pytest.raises(ValueError, match="kind"):
        documents.fewshot_word_rows(data_dir, tokenizer, layout, 16, episodes=1, shots=2, kind="easy")
    questions = documents.question_prompts(documents.load_documents(data_dir, "test", "questions"), tokenizer, layout)
    assert len(questions) == NUM_TEST and {q.question_type for q in questions} == set(documents.QUESTION_TYPES)
    with pytest.raises(ValueError, match="demonstrations"):
        documents.answer_prompt(episodes[0], tokenizer, layout, shots=documents.SHOTS + 2)


@pytest.mark.parametrize("fresh_shots", [0, 4])
def test_training_source_packs_whole_examples(prepared, tokenizer, layout, fresh_shots):
    data_dir, _ = prepared
    train, test = documents.training_sources(data_dir, documents.KINDS, tokenizer, layout, seq_len=128,
                                             fresh_fewshot_shots=fresh_shots)
    assert set(train) == set(test) == set(documents.KINDS)
    fresh = isinstance(train["fewshot"].examples, documents.FreshEpisodes)
    assert fresh == bool(fresh_shots) and len(test["fewshot"].examples) == NUM_TEST, "held out: always stored"
    if fresh_shots:
        with pytest.raises(ValueError, match="lower config.data.fewshot_train_max_shots or raise config.seq_len"):
            documents.training_sources(data_dir, ["fewshot"], tokenizer, layout, seq_len=40, fresh_fewshot_shots=8)
    for source in train.values():
        a, b = source(np.random.default_rng(0)), source(np.random.default_rng(0))
        assert a.length == 128 and all(np.array_equal(x, y) for x, y in zip(a, b))
        bos = np.flatnonzero(a.tokens == layout.special_id("<bos>"))
        assert len(bos) >= 1 and list(np.unique(a.segment_ids[a.segment_ids > 0])) == list(range(1, len(bos) + 1))
        eos = np.flatnonzero(a.tokens == layout.special_id("<eos>"))
        assert len(eos) == len(bos), "examples are packed whole"


def test_text_key_episodes_show_each_class_value_as_text_and_change_nothing_else():
    """A text-key episode is the same episode with each image replaced by "value :" (no image left); the
    share is drawn independently, so the image episodes of the other shares are unchanged."""
    plain = documents.FreshEpisodes(SIZE, SEED, max_shots=4, identical=0.5)
    text = documents.FreshEpisodes(SIZE, SEED, max_shots=4, identical=0.5, text_keys=1.0)
    for i in range(1, 9):
        ex, meta = text[i], text[i]["meta"]
        assert meta.pop("text_keys") and meta == plain[i]["meta"]
        np.testing.assert_array_equal(ex["images"], plain[i]["images"])
        pieces = documents.example_pieces(ex, label_loss=True)
        assert all(isinstance(p, TextPiece) for p in pieces)
        keys, words = pieces[1::2], pieces[2::2]
        assert [k.text for k in keys] == [f"{meta['values'][c]} :" for c in meta["classes"]]
        assert [w.text for w in words] == [meta["words"][c] for c in meta["classes"]]
    half = documents.FreshEpisodes(SIZE, SEED, 4, text_keys=0.5)
    assert 10 < sum("text_keys" in half[i]["meta"] for i in range(40)) < 30


def test_identical_episodes_repeat_one_drawing_per_class():
    fresh = documents.FreshEpisodes(SIZE, SEED, max_shots=4, one_difference=1.0, identical=1.0)
    for ex in [*(fresh[i] for i in range(1, 12)), documents.FreshEpisodes(SIZE, SEED, 4, identical=1.0)[3]]:
        images, classes, scenes = ex["images"], ex["meta"]["classes"], documents.example_scenes(ex)
        assert all(scenes[i] == scenes[classes.index(c)] for i, c in enumerate(classes))
        for c in set(classes):
            same = [images[i] for i, k in enumerate(classes) if k == c]
            assert all(np.array_equal(same[0], image) for image in same)
        if len(set(classes)) == 2:
            assert not np.array_equal(images[classes.index(0)], images[classes.index(1)])
        assert all(captions.image_split(image) == "train" for image in images)
    jittered = documents.FreshEpisodes(SIZE, SEED, max_shots=4, one_difference=1.0)[3]  # Same plan, fresh drawings.
    assert jittered["meta"] == fresh[3]["meta"]
