"""Image captions whose right answer is known: drawn scenes, plus scikit-learn's handwritten digits.

Scenes. One group of 1-3 identical shapes (circle, square, triangle) in one of six colours, placed
in a band of the image: a column on the left or right half, or a row in the top or bottom half. The
caption is written from those parameters, e.g. "two red circles on the left", so it is exactly right
and can be scored by exact match. Drawing is without anti-aliasing on black, so every object is a
solid patch of one palette colour, separated from its neighbours by at least one background pixel.
Images are RGB uint8, image_size x image_size with image_size a multiple of 16 (the patch size). 32 is
the CPU default (4 patches, one per quadrant; objects 7-8 px); 48 gives 9 patches and 10-12 px objects.

Held-out combinations. The colour-shape pairs in `HELDOUT_PAIRS` never appear in train. The test
split is half scenes with those pairs (`novel` True: does the model compose words it knows?) and
half fresh scenes with seen pairs (`novel` False: the in-distribution score). Held-out means disjoint
by pixels: a test scene whose image equals a training image is redrawn (new size and jitter), and a
test digit identical to a training digit is left out, so no test image was ever trained on.

Digits. The 1,797 8x8 digits that ship inside scikit-learn's wheel, upscaled (nearest) to image_size,
grey on black, captioned "the digit seven". Every tenth digit (index % 10 == 0) is test. The wheel is
fetched with `pip download` and read as a zip; scikit-learn is not installed. If the download fails
the captions are built without digits and a warning says so.

Storage: a TFDS dataset written as ArrayRecord without TensorFlow, read with `as_data_source`:
data_dir/captions/scene_captions/1.0.0/. Features: image Tensor uint8 [S,S,3], caption Text,
source Text ('scene' | 'digit'), novel bool. Parameters live in the dataset's metadata.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import itertools
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from data_pipelines import published

VERSION = "1.0.0"
_LOG = logging.getLogger(__name__)
BUILDER_NAME = "scene_captions"
SPLITS = ("train", "test")

COLOURS = {  # Exact palette: tests find objects by colour.
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
# One pair per shape, each with a different colour, so every word still occurs in train.
HELDOUT_PAIRS = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square")})
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_REQUIREMENT = "scikit-learn"  # The digits CSV has not changed since 2011; any wheel will do.
DIGITS_MEMBER = "sklearn/datasets/data/digits.csv.gz"


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a scene shows; the caption and the drawing are both functions of it."""

    count: int
    colour: str
    shape: str
    place: str

    @property
    def novel(self) -> bool:
        return (self.colour, self.shape) in HELDOUT_PAIRS


def caption(scene: Scene) -> str:
    """The one true caption of a scene, e.g. 'three white squares at the top'."""
    noun = scene.shape + ("s" if scene.count > 1 else "")
    return f"{COUNT_WORDS[scene.count]} {scene.colour} {noun} {PLACES[scene.place]}"


def parse_caption(text: str) -> Scene | None:
    """Inverse of `caption`, for per-attribute scores at evaluation; None when it is not a scene caption."""
    return _CAPTION_TO_SCENE.get(text.strip())


def all_scenes() -> list[Scene]:
    """Every scene the generator can draw (216), in a fixed order."""
    return [Scene(n, c, s, p) for n, c, s, p in
            itertools.product(COUNT_WORDS, COLOURS, SHAPES, PLACES)]


_CAPTION_TO_SCENE = {caption(s): s for s in all_scenes()}


def digit_caption(label: int) -> str:
    return f"the digit {DIGIT_WORDS[label]}"


def caption_vocabulary() -> list[str]:
    """Every word any caption uses, sorted; the text tokenizer must encode them without <unk>."""
    words = {w for s in all_scenes() for w in caption(s).split()}
    words |= {w for d in range(10) for w in digit_caption(d).split()}
    return sorted(words)


def caption_training_text(n: int) -> list[str]:
    """n caption lines (all captions, cycled) to mix into SentencePiece training.

    Shakespeare rarely says "circles" or "purple", so a tokenizer trained on it alone spells them out
    letter by letter; a little caption text gives those words pieces of their own. Held-out captions
    are included: they only teach spelling, not which image goes with which words.
    """
    lines = [caption(s) for s in all_scenes()] + [digit_caption(d) for d in range(10)]
    return [lines[i % len(lines)] for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# Drawing.


def _object_size(image_size: int, rng: np.random.Generator) -> int:
    """Side of each object: 7/32 to 1/4 of the image (7-8 px at 32), so three fit in a row with gaps.

    Much smaller and a circle is hard to tell from a square at this resolution.
    """
    return int(rng.integers(image_size * 7 // 32, image_size // 4 + 1))


def _layout(scene: Scene, image_size: int, size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners: objects spread evenly along the band, jittered but never touching.

    A left/right group is a column at x = S/4 or 3S/4; a top/bottom group is a row at y = S/4 or
    3S/4. A single object sits mid-way along its band. Jitter stays under S/16 each way, so a lone
    object on the left (x near S/4, y near S/2) can never sit where a lone object at the bottom
    (x near S/2, y near 3S/4) would: every image has exactly one true caption.
    """
    s = image_size
    slot = s / scene.count
    along_jitter = min(s // 16, max(0, int((slot - size - 2) // 2)))
    across_jitter = min(s // 16, max(0, (s // 2 - size) // 2 - 1))
    across = {"left": s / 4, "right": 3 * s / 4, "top": s / 4, "bottom": 3 * s / 4}[scene.place]
    corners = []
    for i in range(scene.count):
        a = slot * (i + 0.5) + rng.integers(-along_jitter, along_jitter + 1)
        b = across + rng.integers(-across_jitter, across_jitter + 1)
        x, y = (b, a) if scene.place in ("left", "right") else (a, b)
        corners.append((round(x - size / 2), round(y - size / 2)))
    return corners


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, size: int, fill) -> None:
    box = (x, y, x + size - 1, y + size - 1)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # An upright triangle filling the box.
        draw.polygon([(x + (size - 1) / 2, y), (x, y + size - 1), (x + size - 1, y + size - 1)], fill=fill)


def draw_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The scene as an RGB uint8 [S, S, 3] image; object size and jitter come from rng."""
    check_image_size(image_size)
    img = Image.new("RGB", (image_size, image_size))
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"  # No anti-aliasing anywhere: objects stay pure palette colours.
    size = _object_size(image_size, rng)
    for x, y in _layout(scene, image_size, size, rng):
        _draw_shape(draw, scene.shape, x, y, size, COLOURS[scene.colour])
    return np.asarray(img, np.uint8)


def check_image_size(image_size: int) -> None:
    if image_size % 16 or image_size < 32:
        raise ValueError(f"image_size must be a multiple of 16 and >= 32, got {image_size}.")


def sample_scenes(num: int, rng: np.random.Generator, *, novel: bool) -> list[Scene]:
    """num scenes drawn uniformly from the held-out pairs (novel) or from the others."""
    pool = [s for s in all_scenes() if s.novel == novel]
    return [pool[i] for i in rng.integers(0, len(pool), size=num)]


# ----------------------------------------------------------------------------------------------------
# Digits.


def fetch_digits(tmp_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits from its wheel: images uint8 [1797, 8, 8] in 0..16, labels int [1797]."""
    wheel = published.pip_download(DIGITS_REQUIREMENT, tmp_dir, binary_only=True)
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(DIGITS_MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 8, 8).astype(np.uint8), table[:, -1]


def render_digit(digit_8x8: np.ndarray, image_size: int) -> np.ndarray:
    """A 0..16 digit as grey-on-black RGB uint8 [S, S, 3], upscaled by repeating pixels."""
    factor = image_size // 8
    grey = (np.asarray(digit_8x8, np.uint16) * 255 // 16).astype(np.uint8)
    grey = np.kron(grey, np.ones((factor, factor), np.uint8))
    return np.repeat(grey[..., None], 3, axis=-1)


def _load_digits_or_warn(tmp_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return fetch_digits(tmp_dir)
    except Exception as e:  # noqa: BLE001 - any failure (network, format) only loses the digits.
        warnings.warn(f"Captions are built without scikit-learn's digits: fetching them failed ({e}).")
        return None


# ----------------------------------------------------------------------------------------------------
# The TFDS dataset.


def split_plan(split: str, num_scenes: int, num_digits: int, seed: int) -> list[Scene | int]:
    """What each example of a split shows, in stored order: a Scene, or the index of a digit.

    Train: scenes with seen pairs only. Test: half novel-pair scenes, half seen-pair scenes. Digits
    with index % 10 == 0 are test. The order is shuffled, so any prefix (an evaluation reading the
    first N) mixes novel scenes, seen scenes and digits in proportion.
    """
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    if split == "train":
        plan: list[Scene | int] = sample_scenes(num_scenes, rng, novel=False)
    else:
        half = num_scenes // 2
        plan = sample_scenes(half, rng, novel=True) + sample_scenes(num_scenes - half, rng, novel=False)
    plan += [i for i in range(num_digits) if (i % 10 == 0) == (split == "test")]
    return [plan[i] for i in rng.permutation(len(plan))]


TEST_SHARE = 4  # `image_split`: 1 in TEST_SHARE of image space (by pixel hash) is held out.


def image_split(image: np.ndarray) -> str:
    """'test' for a quarter of all possible images, 'train' for the rest: a fixed hash of the pixels.

    Datasets drawn from the same scenes (captions beside documents, data_pipelines/documents.py) that all
    draw a split's images from its half can never share an image across splits, whatever their sizes.
    """
    digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "little") % TEST_SHARE == 0 else "train"


def render_example(item: Scene | int, index: int, split: str, image_size: int, seed: int,
                   digits: tuple[np.ndarray, np.ndarray] | None, attempt: int = 0,
                   split_by_hash: bool = False) -> dict[str, Any]:
    """One stored example; a scene's size and jitter come from (seed, split, index, attempt), not order.

    `split_by_hash` redraws a scene (later attempts) until its image lies in `split`'s half of image
    space (`image_split`); after MAX_REDRAWS tries it keeps the last drawing, which `pixel_disjoint` still
    checks against this dataset's training images.
    """
    if isinstance(item, Scene):
        for extra in range(MAX_REDRAWS if split_by_hash else 1):
            tries = attempt * MAX_REDRAWS + extra
            rng = np.random.default_rng([seed, SPLITS.index(split), index] + ([tries] if tries else []))
            image = draw_scene(item, image_size, rng)
            if not split_by_hash or image_split(image) == split:
                break
        return {"image": image, "caption": caption(item), "source": "scene", "novel": item.novel}
    images, labels = digits
    return {"image": render_digit(images[item], image_size), "caption": digit_caption(int(labels[item])),
            "source": "digit", "novel": False}


class SceneCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Scenes and digits as a TFDS dataset; built by `prepare_captions`, read from its directory."""

    VERSION = tfds.core.Version(VERSION)
    # No download checksums to find; also sidesteps TFDS reading its own code path, which needs the
    # missing `importlib_resources` on Python >= 3.9 (tensorflow/datasets#11212).
    code_path = None

    def __init__(self, *, params: dict[str, Any], digits: tuple[np.ndarray, np.ndarray] | None, **kwargs):
        self._params = params
        self._digits = digits
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self._params["image_size"]
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
                "caption": tfds.features.Text(),
                "source": tfds.features.Text(),
                "novel": tfds.features.Scalar(dtype=np.bool_),
            }),
            metadata=tfds.core.MetadataDict(params=self._params),
            disable_shuffling=True,  # Keep the written order: the data are already random.
        )

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        examples = self._examples(split)
        if split == "test":  # Rendering the training images again is cheap (~1 s for 4000).
            examples = pixel_disjoint(examples, self._examples("train"), self._redraw)
        for index, example in enumerate(examples):
            yield index, {k: v for k, v in example.items() if not k.startswith("_")}

    def _examples(self, split: str) -> Iterator[dict[str, Any]]:
        p = self._params
        num = p["num_train"] if split == "train" else p["num_test"]
        num_digits = 0 if self._digits is None else len(self._digits[1])
        for index, item in enumerate(split_plan(split, num, num_digits, p["seed"])):
            example = render_example(item, index, split, p["image_size"], p["seed"], self._digits,
                                     split_by_hash=p.get("split_by_hash", False))
            yield {**example, "_item": item, "_index": index}

    def _redraw(self, example: dict[str, Any], attempt: int) -> dict[str, Any] | None:
        """The same test scene drawn again (another size and jitter); None for a digit (it is dropped)."""
        if not isinstance(example["_item"], Scene):
            return None
        p = self._params
        return {**render_example(example["_item"], example["_index"], "test", p["image_size"], p["seed"],
                                 self._digits, attempt, split_by_hash=p.get("split_by_hash", False)),
                "_item": example["_item"], "_index": example["_index"]}


MAX_REDRAWS = 50  # Attempts to draw a test scene unlike every training image before giving up.


def _image_key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image).tobytes()


def pixel_disjoint(test: Iterator[dict], train: Iterator[dict], redraw) -> Iterator[dict[str, Any]]:
    """Test examples none of whose images equals a training image (redrawn, or dropped when redraw is None)."""
    seen = {_image_key(ex["image"]) for ex in train}
    for example in test:
        attempt = 0
        while example is not None and _image_key(example["image"]) in seen:
            attempt += 1
            example = redraw(example, attempt) if attempt <= MAX_REDRAWS else None
        if example is not None:
            yield example


def captions_path(data_dir: str | os.PathLike) -> Path:
    """Directory of the prepared dataset (the one `tfds.builder_from_directory` reads)."""
    return Path(data_dir) / "captions" / BUILDER_NAME / VERSION


def stored_params(path: Path) -> dict[str, Any] | None:
    """The settings a prepared captions dataset was made with; None when there is none at `path`."""
    if not (path / "dataset_info.json").exists():
        return None
    return dict(tfds.builder_from_directory(path).info.metadata.get("params", {}))


def prepare_captions(data_dir: str | os.PathLike, *, num_train: int, num_test: int, image_size: int,
                     seed: int, progress: bool = True, digits: bool = True, split_by_hash: bool = False) -> Path:
    """Builds the captions dataset under data_dir/captions/ once; returns its directory.

    A second call with the same settings does nothing (also when the digits could not be fetched the
    first time: delete the folder to retry). Other settings rebuild it (with a warning) and swap the
    new dataset in atomically, so readers never see a half-written one.
    """
    check_image_size(image_size)
    params = {"num_train": num_train, "num_test": num_test, "image_size": image_size, "seed": seed,
              "digits": digits, "pixel_disjoint": True}
    if split_by_hash:  # Recorded only when on, so datasets made before the option keep their key.
        params["split_by_hash"] = True
    path = captions_path(data_dir)
    stored = stored_params(path)
    if stored is not None and {k: stored.get(k) for k in params} == params:
        return path
    if stored is not None:
        warnings.warn(f"Rebuilding {path}: it was made with {stored}, now asked for {params}.")
    root = Path(data_dir) / "captions"
    with tempfile.TemporaryDirectory() as scratch, published.atomic_directory(root, replace=True) as tmp:
        digit_data = _load_digits_or_warn(Path(scratch)) if digits else None
        params["num_digits"] = 0 if digit_data is None else len(digit_data[1])
        _build(tmp, params, digit_data, Path(scratch), progress)
    _LOG.info("Captions ready in %s", path)
    return path


def _build(root: Path, params: dict[str, Any], digit_data, scratch: Path, progress: bool) -> None:
    tfds.display_progress_bar(progress)  # Global in TFDS; it has no per-call switch.
    builder = SceneCaptions(params=params, digits=digit_data, data_dir=str(root), file_format="array_record")
    builder.download_and_prepare(download_dir=str(scratch / "downloads"))


class CaptionSplit(Sequence):
    """Random access over one split: {'image': uint8 [S,S,3], 'caption': str, 'source': str, 'novel': bool}.

    A thin view over TFDS's ArrayRecord data source, so grain can index and shard it directly.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str):
        if split not in SPLITS:
            raise ValueError(f"Unknown captions split {split!r}; choose one of {SPLITS}.")
        path = captions_path(data_dir)
        if not (path / "dataset_info.json").exists():
            raise FileNotFoundError(f"No captions dataset at {path}; run prepare_captions first.")
        self._source = tfds.builder_from_directory(path).as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        ex = self._source[range(len(self))[index]]  # Negative indices and bounds, as for a list.
        return {"image": ex["image"], "caption": published.to_str(ex["caption"]),
                "source": published.to_str(ex["source"]), "novel": bool(ex["novel"])}


def load_captions(data_dir: str | os.PathLike, split: str) -> CaptionSplit:
    """The prepared split ('train' or 'test') as a random-access sequence of caption examples."""
    return CaptionSplit(data_dir, split)
