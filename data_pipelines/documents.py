"""Interleaved image-text examples whose answers are known: documents, visual questions, few-shot episodes.

Built on the captions module's scenes (`captions.Scene`, `draw_scene`, palettes). Three kinds:
- `documents`: 2-3 images with text between them: an opening line, then after each image its caption
  and, from the second on, how it compares with the one before ("more shapes than before, the same
  colour"). The loss covers all text.
- `questions`: one or two images, a question, a one-word answer from a small closed set per type
  (`ANSWERS`): count, colour, shape, position of one scene; for two scenes which has more shapes
  (first/second/same) and whether they share colour or shape (yes/no). The target answer is drawn
  uniformly from its set first, so no type has a majority answer to fall back on. Loss on the answer only.
- `fewshot`: a header naming two nonsense words ("dax or wug?"), then `shots` demonstrations (image,
  word) and a query image whose word is the answer. Each episode picks an attribute (colour, shape,
  count or position), two of its values, and two words from `NONSENSE_WORDS`, all afresh: "dax" means
  squares in one episode and red things in the next, so only the demonstrations tell the answer and
  0-shot is chance (0.5) by construction. Demonstrations come in pairs of one of each class, so any
  even prefix shows both; the query's class alternates with the index (balanced). Loss on the answer
  (optionally also on the demonstrations' words, `label_loss`). Training reads fresh episodes made on
  demand (`FreshEpisodes`: 1 to N demonstrations, classes drawn independently, out of 2**31) unless
  `config.data.fewshot_train_max_shots` is 0; the held-out ones are always the stored test split.
Scenes use only the colour-shape pairs captions trains on (`Scene.novel` False), so mixing these
examples in never shows the captions' held-out pairs.

Held-out images by pixels. An image belongs to the train or the test half of image space by a hash of
its pixels (`image_split`, a quarter to test): a drawing that lands in the other half is redrawn
(new size and jitter). So no test image equals any training image whatever the split sizes. Checking
test images against the rendered training set (captions.pixel_disjoint) would not do here: at 32 px a
lone object has only ~34 distinct drawings, and a training set of a few thousand images holds them all,
so held-out one-object scenes could not be drawn at all.

Every example is a pure function of (seed, kind, split, index): scenes and drawings come from
`np.random.default_rng([seed, kind, split, index, ...])`.

Storage: a TFDS dataset written as ArrayRecord without TensorFlow, read with `as_data_source`:
data_dir/documents/scene_documents/1.0.0/, one TFDS split per kind and split ("questions_test").
Features: images Tensor uint8 [N, S, S, 3] (N varies), meta Text (JSON: kind, scenes, texts, question,
candidates, answer, ...). Parameters live in the dataset's metadata; a build is swapped in whole.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import captions, published, sources
from data_pipelines.captions import COLOURS, COUNT_WORDS, PLACES, SHAPES, TEST_SHARE, Scene, image_split
from gato_jax.tokenizers import interleaved
from gato_jax.tokenizers.interleaved import Piece, TextPiece, TokenizedPrompt
from gato_jax.tokenizers.sequence import TokenSequence
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

VERSION = "1.0.0"
_LOG = logging.getLogger(__name__)
BUILDER_NAME = "scene_documents"
SPLITS = ("train", "test")
KINDS = ("documents", "questions", "fewshot")  # Also the names of their training sources in a mixture.
SHOTS = 4  # Demonstrations stored per few-shot episode; evaluation uses prefixes of them.
EVAL_SHOTS = (0, 1, 2, 4)
MAX_REDRAWS = captions.MAX_REDRAWS  # Drawings of one scene tried before its example is re-drawn whole.

ATTRIBUTES = ("count", "colour", "shape", "position")
ANSWERS = {  # Closed answer set of each question type, in a fixed order.
    "count": tuple(COUNT_WORDS.values()),
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "position": tuple(PLACES),
    "more": ("first", "second", "same"),
    "same_colour": ("yes", "no"),
    "same_shape": ("yes", "no"),
}
QUESTIONS = {
    "count": "how many shapes are there?",
    "colour": "what colour are the shapes?",
    "shape": "what shape are they?",
    "position": "where are the shapes?",
    "more": "which image has more shapes?",
    "same_colour": "are both the same colour?",
    "same_shape": "are both the same shape?",
}
QUESTION_TYPES = tuple(ANSWERS)
PAIR_TYPES = ("more", "same_colour", "same_shape")  # Questions about two images.
NONSENSE_WORDS = ("dax", "blicket", "wug", "toma", "fep", "zorp", "kiki", "bouba", "glorp", "modi", "lorp", "tupa",
                  "jeck", "nefe", "voop", "gazzer", "mip", "sprock", "tulver", "pilk", "zib", "yeb", "frem", "quiv")
INTROS = ("some pictures.", "here are a few scenes.", "look at these pictures.")
COUNT_COMPARISONS = {1: "more shapes than before", -1: "fewer shapes than before", 0: "as many shapes as before"}
COLOUR_COMPARISONS = {True: "the same colour", False: "another colour"}


# ----------------------------------------------------------------------------------------------------
# What the scenes say.


def attribute_value(scene: Scene, attribute: str) -> str:
    """The word for one attribute of a scene: 'two', 'red', 'square', 'left'."""
    return {"count": COUNT_WORDS[scene.count], "colour": scene.colour, "shape": scene.shape,
            "position": scene.place}[attribute]


def true_answer(question_type: str, scenes: Sequence[Scene]) -> str:
    """The one right answer to a question about these scenes (one scene, or two for PAIR_TYPES)."""
    if question_type in ATTRIBUTES:
        return attribute_value(scenes[0], question_type)
    first, second = scenes
    if question_type == "more":
        return "same" if first.count == second.count else ("first" if first.count > second.count else "second")
    same = first.colour == second.colour if question_type == "same_colour" else first.shape == second.shape
    return "yes" if same else "no"


def describe(scene: Scene, previous: Scene | None) -> str:
    """A document's text after an image: its caption, and from the second image on a comparison."""
    text = captions.caption(scene)
    if previous is None:
        return f"{text}."
    more = int(np.sign(scene.count - previous.count))
    return f"{text}; {COUNT_COMPARISONS[more]}, {COLOUR_COMPARISONS[scene.colour == previous.colour]}."


def document_training_text(n: int) -> list[str]:
    """n lines (cycled) holding every word these examples use, for SentencePiece training.

    Questions with each answer, few-shot headers over all nonsense words, and document sentences, so
    "blicket" or "fewer" get pieces of their own rather than being spelled out letter by letter.
    """
    lines = [f"{QUESTIONS[q]} {a}" for q in QUESTION_TYPES for a in ANSWERS[q]] + list(INTROS)
    scenes = captions.all_scenes()
    lines += [describe(s, scenes[(i * 7) % len(scenes)]) for i, s in enumerate(scenes)]
    # Episode-like lines for every ordered pair of words: frequent enough to become whole pieces.
    lines += [f"{a} or {b}? {a} {b} {b} {a} {a}" for a in NONSENSE_WORDS for b in NONSENSE_WORDS if a != b]
    return [lines[i % len(lines)] for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# Drawing, held out by pixels.


def draw_for_split(scene: Scene, image_size: int, split: str, key: Sequence[int]) -> np.ndarray | None:
    """The scene drawn with the first size and jitter whose image is in `split`'s half; None if none is."""
    for attempt in range(MAX_REDRAWS):
        image = captions.draw_scene(scene, image_size, np.random.default_rng([*key, attempt]))
        if image_split(image) == split:
            return image
    return None


SCENES = tuple(s for s in captions.all_scenes() if not s.novel)  # The captions' training pairs only.


@functools.cache
def attribute_values(attribute: str) -> tuple[str, ...]:
    """The values an attribute takes over the training scenes, sorted: what few-shot classes are drawn from."""
    return tuple(sorted({attribute_value(s, attribute) for s in SCENES}))


@functools.cache
def scenes_with(attribute: str, value: str) -> tuple[Scene, ...]:
    return tuple(s for s in SCENES if attribute_value(s, attribute) == value)


def _pick(rng: np.random.Generator, pool: Sequence[Scene] = SCENES) -> Scene:
    return pool[int(rng.integers(len(pool)))]


# ----------------------------------------------------------------------------------------------------
# The three kinds, as (scenes, meta) from a Generator.


def document_plan(rng: np.random.Generator, index: int, shots: int, paired: bool = True,
                  one_difference: bool = False) -> tuple[list[Scene], dict[str, Any]]:
    """2-3 scenes; an opening line, then each image's caption (and comparison with the one before)."""
    del index, shots, paired, one_difference
    scenes = [_pick(rng) for _ in range(int(rng.integers(2, 4)))]
    texts = [INTROS[int(rng.integers(len(INTROS)))]]
    texts += [describe(s, scenes[i - 1] if i else None) for i, s in enumerate(scenes)]
    return scenes, {"texts": texts}


def question_plan(rng: np.random.Generator, index: int, shots: int, paired: bool = True,
                  one_difference: bool = False) -> tuple[list[Scene], dict[str, Any]]:
    """Types take turns by index; the answer is drawn first, then scenes that give it (rejection)."""
    del shots, paired, one_difference
    question_type = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    candidates = ANSWERS[question_type]
    target = candidates[int(rng.integers(len(candidates)))]
    count = 2 if question_type in PAIR_TYPES else 1
    while True:
        scenes = [_pick(rng) for _ in range(count)]
        if true_answer(question_type, scenes) == target:
            break
    return scenes, {"question_type": question_type, "question": QUESTIONS[question_type],
                    "candidates": list(candidates), "answer": candidates.index(target)}


def fewshot_plan(rng: np.random.Generator, index: int, shots: int, paired: bool = True,
                 one_difference: bool = False) -> tuple[list[Scene], dict[str, Any]]:
    """Fresh attribute, values and words; `shots` demonstrations, then the query.

    `paired` (the stored episodes): demonstrations in pairs, one per class in random order, and the query's
    class alternating with the index, so every even prefix shows both words and any prefix of episodes is
    balanced. Unpaired (training's fresh episodes): every class drawn independently, so no demonstration's
    word follows from its position (in pairs the second word is always the other one) and each word after
    the first must come from matching images, or from the header when one class has not been shown.

    `one_difference` (an easier training episode): every image shows one base scene with only the
    episode's attribute changed, so its images differ in nothing but what the words name and the query
    matches its class's demonstrations exactly up to drawing jitter. Otherwise (the held-out episodes)
    the other attributes are drawn afresh for every image.
    """
    attribute = ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]
    values = [str(v) for v in rng.choice(attribute_values(attribute), 2, replace=False)]
    words = [str(w) for w in rng.choice(NONSENSE_WORDS, 2, replace=False)]
    if paired:
        classes = [int(c) for _ in range(shots // 2) for c in rng.permutation(2)] + [index % 2]
    else:
        classes = [int(c) for c in rng.integers(2, size=shots + 1)]
    if one_difference:
        class_scenes = _one_difference_scenes(rng, attribute, values)
        scenes = [class_scenes[c] for c in classes]
    else:
        scenes = [_pick(rng, scenes_with(attribute, values[c])) for c in classes]
    header = [words[i] for i in rng.permutation(2)]
    return scenes, {"attribute": attribute, "values": values, "words": words, "header": header,
                    "classes": classes, "candidates": header, "answer": header.index(words[classes[-1]]),
                    "question_type": "fewshot"}


def _one_difference_scenes(rng: np.random.Generator, attribute: str, values: Sequence[str]) -> list[Scene]:
    """One scene per value: a random base scene with only `attribute` changed to it (all among SCENES)."""
    others = [a for a in ATTRIBUTES if a != attribute]
    while True:
        base = _pick(rng)
        scenes = [next((s for s in scenes_with(attribute, v)
                        if all(attribute_value(s, a) == attribute_value(base, a) for a in others)), None)
                  for v in values]
        if None not in scenes:  # A changed scene outside SCENES (a captions held-out pair): another base.
            return scenes


# (rng, index, shots, paired, one_difference) -> (scenes, meta) for each kind.
PLANS = {"documents": document_plan, "questions": question_plan, "fewshot": fewshot_plan}


def make_example(kind: str, split: str, index: int, image_size: int, seed: int, shots: int = SHOTS,
                 paired: bool = True, one_difference: bool = False, identical: bool = False,
                 text_keys: bool = False) -> dict[str, Any]:
    """Example `index` of a kind and split: {'images': uint8 [N, S, S, 3], 'meta': dict}.

    `shots`, `paired` and `one_difference` shape few-shot episodes (`fewshot_plan`); the other kinds
    ignore them. `identical` (few-shot): each class is one drawing, repeated pixel for pixel, so the query
    equals its class's demonstrations exactly (a lookup by exact match). `text_keys` (few-shot): the
    episode is tokenized with each image replaced by its class's value as text, "red :" (`_fewshot_pieces`).

    When a scene has no drawing in the split's half of image space (rare: a lone object at 32 px has
    ~34), the whole example is planned again from the next attempt's Generator.
    """
    base = [seed, KINDS.index(kind), SPLITS.index(split), index]
    for attempt in range(MAX_REDRAWS):
        rng = np.random.default_rng([*base, attempt])
        scenes, meta = PLANS[kind](rng, index, shots, paired, one_difference)
        images = [draw_for_split(s, image_size, split, [*base, attempt, slot]) for slot, s in enumerate(scenes)]
        if identical and kind == "fewshot":  # Each class's first scene and drawing, repeated.
            firsts = [meta["classes"].index(c) for c in meta["classes"]]
            scenes, images = [scenes[i] for i in firsts], [images[i] for i in firsts]
        if all(image is not None for image in images):
            scene_lists = [[s.count, s.colour, s.shape, s.place] for s in scenes]
            text = {"text_keys": True} if text_keys and kind == "fewshot" else {}
            return {"images": np.stack(images), "meta": {"kind": kind, "scenes": scene_lists, **meta, **text}}
    raise RuntimeError(f"No {split} drawing found for {kind} example {index} in {MAX_REDRAWS} attempts.")


def example_scenes(example: Mapping[str, Any]) -> list[Scene]:
    return [Scene(*s) for s in example["meta"]["scenes"]]


# ----------------------------------------------------------------------------------------------------
# Examples as interleaved pieces.


def example_pieces(example: Mapping[str, Any], *, shots: int | None = None,
                   label_loss: bool = False) -> list[Piece]:
    """The example as text pieces and images, ending (questions, few-shot) with the answer piece.

    `shots` keeps the first k demonstrations of a few-shot episode (None: all); `label_loss` trains on
    the demonstrations' words too.
    """
    meta, images = example["meta"], list(example["images"])
    if meta["kind"] == "documents":
        texts = meta["texts"]
        pieces: list[Piece] = [TextPiece(texts[0])]
        for image, text in zip(images, texts[1:]):
            pieces += [image, TextPiece(text)]
        return pieces
    if meta["kind"] == "questions":
        return [*images, TextPiece(meta["question"], False), TextPiece(meta["candidates"][meta["answer"]])]
    return _fewshot_pieces(meta, images, shots, label_loss)


def _fewshot_pieces(meta: Mapping[str, Any], images: list[np.ndarray], shots: int | None,
                    label_loss: bool) -> list[Piece]:
    demos = len(images) - 1 if shots is None else shots
    if not 0 <= demos <= len(images) - 1:
        raise ValueError(f"This episode stores {len(images) - 1} demonstrations; asked for {shots}.")
    words, classes = meta["words"], meta["classes"]
    if meta.get("text_keys"):  # Each image as its class's value and a separator, as `</image>` ends an image.
        images = [TextPiece(f"{meta['values'][c]} :", False) for c in classes]
    pieces: list[Piece] = [TextPiece(f"{meta['header'][0]} or {meta['header'][1]}?", False)]
    for image, c in zip(images[:demos], classes):
        pieces += [image, TextPiece(words[c], label_loss)]
    return [*pieces, images[-1], TextPiece(words[classes[-1]])]


def ideal_fewshot_accuracy(meta: Mapping[str, Any], shots: int) -> float:
    """Expected accuracy on the episode of the Bayes-optimal reader of its first `shots` demonstrations.

    The reader knows how episodes are made (an attribute, two distinct values of it, each image drawn
    uniformly among the scenes with its class's value) but not which attribute, values or words; it names
    the word of the likelier query class and scores 0.5 on a tie. The few-shot column it heads says how
    much the demonstrations can tell: 0.5 at 0 shots by construction, ~0.98 at 4.
    """
    scenes, classes = [Scene(*s) for s in meta["scenes"]], meta["classes"]
    evidence = np.zeros(2)  # Unnormalised posterior predictive of the query's class.
    for attribute in ATTRIBUTES:
        values = attribute_values(attribute)
        for pair in ((v0, v1) for v0 in values for v1 in values if v0 != v1):
            likelihood = 1.0 / (len(ATTRIBUTES) * len(values) * (len(values) - 1))
            for scene, c in zip(scenes[:shots], classes[:shots]):
                likelihood *= _scene_likelihood(scene, attribute, pair[c])
            for c in (0, 1):
                evidence[c] += likelihood * _scene_likelihood(scenes[-1], attribute, pair[c])
    if evidence[0] == evidence[1]:
        return 0.5
    return float(int(np.argmax(evidence)) == classes[-1])


def _scene_likelihood(scene: Scene, attribute: str, value: str) -> float:
    """P(scene | its class's value): uniform over the scenes showing that value."""
    return 1.0 / len(scenes_with(attribute, value)) if attribute_value(scene, attribute) == value else 0.0


def tokenize_example(example: Mapping[str, Any], tokenizer: TextTokenizer, layout: VocabLayout,
                     patch_size: int = 16, **kwargs) -> TokenSequence:
    """The whole example, `<bos>` ... `<eos>` (kwargs: `example_pieces`'s shots, label_loss)."""
    return interleaved.tokenize_interleaved(tokenizer, layout, example_pieces(example, **kwargs), patch_size)


def answer_prompt(example: Mapping[str, Any], tokenizer: TextTokenizer, layout: VocabLayout,
                  patch_size: int = 16, shots: int | None = None) -> TokenizedPrompt:
    """A question or few-shot episode as a multiple-choice prompt (everything before the answer)."""
    meta = example["meta"]
    if meta["kind"] == "documents":
        raise ValueError("Documents have no answer to score; use questions or fewshot examples.")
    pieces = example_pieces(example, shots=shots)[:-1]
    prompt = interleaved.tokenize_interleaved(tokenizer, layout, pieces, patch_size, eos=False)
    question_type = meta["question_type"] if shots is None else f"{meta['question_type']}_{shots}"
    ideal = None if meta["kind"] != "fewshot" else ideal_fewshot_accuracy(meta, len(example["images"]) - 1
                                                                          if shots is None else shots)
    group = meta["attribute"] if meta["kind"] == "fewshot" else None
    return TokenizedPrompt(prompt, tuple(meta["candidates"]), int(meta["answer"]), question_type, ideal, group)


def question_prompts(examples: Sequence[Mapping], tokenizer: TextTokenizer, layout: VocabLayout,
                     patch_size: int = 16, max_examples: int | None = None) -> list[TokenizedPrompt]:
    """Held-out questions (the `questions` test split) as prompts; types take turns, so any prefix is balanced."""
    count = len(examples) if max_examples is None else min(max_examples, len(examples))
    return [answer_prompt(examples[i], tokenizer, layout, patch_size) for i in range(count)]


def fewshot_prompts(examples: Sequence[Mapping], tokenizer: TextTokenizer, layout: VocabLayout,
                    patch_size: int = 16, shots: Sequence[int] = EVAL_SHOTS,
                    max_examples: int | None = None) -> list[TokenizedPrompt]:
    """Each held-out episode at every k in `shots`, typed 'fewshot_<k>'; the candidates are its two words."""
    count = len(examples) if max_examples is None else min(max_examples, len(examples))
    return [answer_prompt(examples[i], tokenizer, layout, patch_size, k) for k in shots for i in range(count)]


# ----------------------------------------------------------------------------------------------------
# The TFDS dataset.


def stored_drawing(data_dir: str | os.PathLike) -> tuple[int, int]:
    """(image_size, seed) of the stored documents dataset, for episodes made beside it as it made its own."""
    params = captions.stored_params(documents_path(data_dir)) or {}
    if "image_size" not in params:
        raise FileNotFoundError(f"No documents dataset at {documents_path(data_dir)}.")
    return int(params["image_size"]), int(params["seed"])


WORD_ROWS_FIRST_INDEX = 10**6  # Past every stored test index: these episodes are made, not stored.
# Kinds of word-loss episodes (`fewshot_word_rows`): the held-out kind evaluated for the target, and the
# easier kinds a run may train on (`config.data.fewshot_train_*`), each on held-out images.
WORD_ROW_KINDS = ("heldout", "one_difference", "identical", "text_keys")


def fewshot_word_rows(data_dir: str | os.PathLike, tokenizer: TextTokenizer, layout: VocabLayout,
                      patch_size: int, episodes: int, shots: int, kind: str = "heldout") -> list[TokenSequence]:
    """Unpaired few-shot episodes of `shots` demonstrations on held-out images, every word loss-masked.

    The loss of each demonstration's word says whether the model reads the ones before it: shaped like
    the fresh training episodes (`FreshEpisodes`: classes drawn independently, so no word follows from its
    position) but drawn from the test half of image space; a model that reads only the header ("dax or
    wug?") pays ~ln 2 on every word, one that looks words up by their images pays less the more it has seen.
    `kind` (WORD_ROW_KINDS) makes them like one of the easier training kinds instead, so a curriculum's
    progress on what it trains on shows beside the held-out kind; each index keeps its attribute, values,
    words and classes across kinds (`fewshot_plan` draws them before the scenes).
    """
    if kind not in WORD_ROW_KINDS:
        raise ValueError(f"Unknown word-loss episode kind {kind!r}; use one of {WORD_ROW_KINDS}.")
    size, seed = stored_drawing(data_dir)
    return [tokenize_example(make_example("fewshot", "test", WORD_ROWS_FIRST_INDEX + i, size, seed, shots=shots,
                                          paired=False, one_difference=kind == "one_difference",
                                          identical=kind == "identical", text_keys=kind == "text_keys"),
                             tokenizer, layout, patch_size, label_loss=True)
            for i in range(episodes)]


def tfds_split(kind: str, split: str) -> str:
    return f"{kind}_{split}"


class SceneDocuments(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """All three kinds as TFDS splits; built by `prepare_documents`, read from its directory."""

    VERSION = tfds.core.Version(VERSION)
    code_path = None  # As captions.SceneCaptions: no checksums, and no importlib_resources lookup.

    def __init__(self, *, params: dict[str, Any], **kwargs):
        self._params = params
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self._params["image_size"]
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "images": tfds.features.Tensor(shape=(None, s, s, 3), dtype=np.uint8),
                "meta": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(params=self._params),
            disable_shuffling=True,  # Keep the written order: question types take turns by index.
        )

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        del dl_manager
        return {tfds_split(k, s): self._generate_examples(k, s) for k in KINDS for s in SPLITS}

    def _generate_examples(self, kind: str, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        p = self._params
        for index in range(p["num_train"] if split == "train" else p["num_test"]):
            example = make_example(kind, split, index, p["image_size"], p["seed"], p["shots"])
            yield index, {"images": example["images"], "meta": json.dumps(example["meta"])}


def documents_path(data_dir: str | os.PathLike) -> Path:
    """Directory of the prepared dataset (the one `tfds.builder_from_directory` reads)."""
    return Path(data_dir) / "documents" / BUILDER_NAME / VERSION


def prepare_documents(data_dir: str | os.PathLike, *, num_train: int, num_test: int, image_size: int,
                      seed: int, shots: int = SHOTS, progress: bool = True) -> Path:
    """Builds the dataset under data_dir/documents/ once: num_train / num_test examples of each kind.

    A second call with the same settings does nothing; other settings rebuild it (with a warning). The
    build happens in a temporary folder swapped in whole, so an interrupted build never reads as done.
    """
    captions.check_image_size(image_size)
    if shots < 2 or shots % 2:
        raise ValueError(f"shots must be even and >= 2 (demonstrations come in pairs), got {shots}.")
    params = {"num_train": num_train, "num_test": num_test, "image_size": image_size, "seed": seed,
              "shots": shots, "test_share": TEST_SHARE}
    path = documents_path(data_dir)
    stored = captions.stored_params(path)  # The same TFDS metadata layout as captions.
    if stored is not None and {k: stored.get(k) for k in params} == params:
        return path
    if stored is not None:
        warnings.warn(f"Rebuilding {path}: it was made with {stored}, now asked for {params}.")
    root = Path(data_dir) / "documents"
    with tempfile.TemporaryDirectory() as scratch, published.atomic_directory(root, replace=True) as tmp:
        _build(tmp, params, Path(scratch), progress)
    _LOG.info("Documents ready in %s", path)
    return path


def _build(root: Path, params: dict[str, Any], scratch: Path, progress: bool) -> None:
    tfds.display_progress_bar(progress)
    builder = SceneDocuments(params=params, data_dir=str(root), file_format="array_record")
    builder.download_and_prepare(download_dir=str(scratch / "downloads"))


class DocumentSplit(Sequence):
    """Random access over one kind and split: {'images': uint8 [N, S, S, 3], 'meta': dict}."""

    def __init__(self, data_dir: str | os.PathLike, split: str, kind: str):
        if split not in SPLITS or kind not in KINDS:
            raise ValueError(f"Unknown documents split {split!r} or kind {kind!r}; choose from {SPLITS} and {KINDS}.")
        path = documents_path(data_dir)
        if not (path / "dataset_info.json").exists():
            raise FileNotFoundError(f"No documents dataset at {path}; run prepare_documents first.")
        self._source = tfds.builder_from_directory(path).as_data_source(split=tfds_split(kind, split))

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        ex = self._source[range(len(self))[index]]
        return {"images": np.asarray(ex["images"]), "meta": json.loads(published.to_str(ex["meta"]))}


def load_documents(data_dir: str | os.PathLike, split: str, kind: str) -> DocumentSplit:
    """The prepared examples of one kind ('documents', 'questions', 'fewshot') and split ('train', 'test')."""
    return DocumentSplit(data_dir, split, kind)


# ----------------------------------------------------------------------------------------------------
# Training source.


class InterleavedSource(sources.PackedExamples):
    """Interleaved examples packed whole (`tokenize_example`); `label_loss` also trains on the few-shot
    demonstrations' words."""

    what = "documents"

    def __init__(self, examples: Sequence[Mapping], tokenizer: TextTokenizer, layout: VocabLayout, seq_len: int,
                 patch_size: int = 16, *, label_loss: bool = False, cache_size: int = 20_000):
        super().__init__(examples, tokenizer, layout, seq_len, patch_size, cache_size)
        self.label_loss = label_loss

    def tokenize(self, index: int) -> TokenSequence:
        return tokenize_example(self.examples[index], self.tokenizer, self.layout, self.patch_size,
                                label_loss=self.label_loss)


class FreshEpisodes(Sequence):
    """Few-shot training episodes made on demand, never stored: episode i is `make_example("fewshot", "train",
    i, ...)` unpaired, with 1 + i % max_shots demonstrations, for i in [0, 2**31 - 1).

    Training on a stored few thousand episodes lets a model learn those episodes (their images recur with
    the same words) rather than reading words off the demonstrations; drawn from two billion, an episode
    practically never recurs (about one repeat in 75k draws, a 2500-step run's worth), so only in-context
    learning lowers the loss on the words. Images stay in the training half of image space (pixel hash),
    as every training image does; a draw costs ~1 ms.

    A share `one_difference` of them (drawn per index) are the easier kind whose images differ only in the
    attribute the words name (`fewshot_plan`): there the query matches its class's demonstrations whole.
    A share `identical` of them (drawn independently) repeat one drawing per class (`make_example`), so the
    query's image equals its class's demonstrations pixel for pixel. A share `text_keys` (independently
    again) show each class's value as text instead of an image: the same lookup on keys the model reads
    as tokens, where it forms fast (README "Where the lookup stalls"), in the hope that the circuit that
    forms there also serves images.
    """

    def __init__(self, image_size: int, seed: int, max_shots: int, one_difference: float = 0.0,
                 identical: float = 0.0, text_keys: float = 0.0):
        if max_shots < 1:
            raise ValueError(f"config.data.fewshot_train_max_shots must be >= 1, got {max_shots}.")
        self.image_size, self.seed, self.max_shots = image_size, seed, max_shots
        self.one_difference, self.identical, self.text_keys = one_difference, identical, text_keys

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        # random(3) starts with random(2)'s draws: adding the third left the first two shares' episodes as they were.
        easy_draw, identical_draw, text_draw = np.random.default_rng([self.seed, index]).random(3)
        easy = bool(easy_draw < self.one_difference)
        return make_example("fewshot", "train", index, self.image_size, self.seed, shots=1 + index % self.max_shots,
                            paired=False, one_difference=easy, identical=bool(identical_draw < self.identical),
                            text_keys=bool(text_draw < self.text_keys))


def training_sources(data_dir: str | os.PathLike, kinds: Sequence[str], tokenizer: TextTokenizer,
                     layout: VocabLayout, seq_len: int, patch_size: int = 16, label_loss: bool = False,
                     fresh_fewshot_shots: int = 0, one_difference: float = 0.0, identical: float = 0.0,
                     text_keys: float = 0.0) -> tuple[dict[str, InterleavedSource], dict[str, InterleavedSource]]:
    """(train, test) sources named by kind, for the stream's mixture.

    `fresh_fewshot_shots` > 0: training few-shot episodes are `FreshEpisodes` with up to that many
    demonstrations, drawn with the stored dataset's image size and seed (the stored train split is unused);
    held-out episodes are always the stored test split. `one_difference`: the share of them whose images
    differ only in the named attribute, `identical` the share that repeat one drawing per class,
    `text_keys` the share shown as text (`FreshEpisodes`).
    """
    def make(kind: str, split: str) -> InterleavedSource:
        if kind == "fewshot" and split == "train" and fresh_fewshot_shots > 0:
            examples = FreshEpisodes(*stored_drawing(data_dir), fresh_fewshot_shots, one_difference, identical,
                                     text_keys)
            source = InterleavedSource(examples, tokenizer, layout, seq_len, patch_size, label_loss=label_loss,
                                       cache_size=0)  # Each is drawn about once: keeping them would only cost memory.
            longest = source.tokenize(fresh_fewshot_shots - 1).length  # Episode i has 1 + i % max demonstrations.
            if longest > seq_len:
                raise ValueError(f"A fresh few-shot episode of {fresh_fewshot_shots} demonstrations is {longest} "
                                 f"tokens, longer than seq_len {seq_len}: lower config.data.fewshot_train_max_shots "
                                 "or raise config.seq_len.")
            return source
        return InterleavedSource(load_documents(data_dir, split, kind), tokenizer, layout, seq_len, patch_size,
                                 label_loss=label_loss)

    return {k: make(k, "train") for k in kinds}, {k: make(k, "test") for k in kinds}
