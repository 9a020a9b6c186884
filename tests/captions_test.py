"""Tests for data_pipelines.captions: scenes match their captions, held-out pairs stay out of train."""
import numpy as np
import pytest
from scipy import ndimage

from data_pipelines import captions
from data_pipelines.captions import COLOURS, Scene

SIZES = (32, 48)
# Fill ratio of an object in its bounding box: square 1, disc pi/4, triangle about 1/2.
FILL_RANGE = {"square": (0.99, 1.0), "circle": (0.68, 0.9), "triangle": (0.4, 0.67)}


def _objects(image, colour):
    """Connected components of exactly one palette colour: (bounding-box slices, pixel count)."""
    mask = np.all(image == np.array(COLOURS[colour], np.uint8), axis=-1)
    labels, _ = ndimage.label(mask)
    return [(box, int((labels[box] == i + 1).sum())) for i, box in enumerate(ndimage.find_objects(labels))]


def _centre(box):
    return (box[1].start + box[1].stop) / 2, (box[0].start + box[0].stop) / 2  # x, y


@pytest.mark.parametrize("size", SIZES)
def test_every_scene_draws_what_its_caption_says(size):
    rng = np.random.default_rng(0)
    for scene in captions.all_scenes():
        image = captions.draw_scene(scene, size, rng)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        objects = _objects(image, scene.colour)
        assert len(objects) == scene.count, captions.caption(scene)
        for box, pixels in objects:
            area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
            lo, hi = FILL_RANGE[scene.shape]
            assert lo <= pixels / area <= hi, (captions.caption(scene), pixels / area)
        _check_place(scene, [_centre(box) for box, _ in objects], size)
        other = np.any(image != 0, axis=-1) & ~np.all(image == COLOURS[scene.colour], axis=-1)
        assert not other.any(), "only the palette colour and black, no anti-aliasing"


def _check_place(scene: Scene, centres, size):
    xs, ys = np.array(centres).T
    half = size / 2
    if scene.place == "left":
        assert xs.max() < half
    elif scene.place == "right":
        assert xs.min() >= half
    elif scene.place == "top":
        assert ys.max() < half
    else:
        assert ys.min() >= half
    if scene.count == 1:  # A lone object sits mid-band, so 'left' and 'top' images never coincide.
        along = ys if scene.place in ("left", "right") else xs
        assert abs(along[0] - half) < size / 8


def test_captions_are_exact_and_parse_back():
    assert captions.caption(Scene(2, "red", "circle", "left")) == "two red circles on the left"
    assert captions.caption(Scene(1, "blue", "triangle", "top")) == "one blue triangle at the top"
    for scene in captions.all_scenes():
        assert captions.parse_caption(captions.caption(scene)) == scene
    assert captions.parse_caption("the digit seven") is None
    assert len(captions.all_scenes()) == len({captions.caption(s) for s in captions.all_scenes()}) == 216


def test_vocabulary_and_training_text_cover_all_captions():
    vocab = set(captions.caption_vocabulary())
    assert {"purple", "triangles", "digit", "seven", "bottom"} <= vocab
    lines = captions.caption_training_text(500)
    assert len(lines) == 500 and {w for line in lines for w in line.split()} == vocab


def test_render_digit_upscales_exactly():
    digit = np.arange(64, dtype=np.uint8).reshape(8, 8) % 17
    image = captions.render_digit(digit, 32)
    assert image.shape == (32, 32, 3) and image[4 * 3 + 1, 4 * 5 + 2, 0] == int(digit[3, 5]) * 255 // 16
    assert (image[..., 0] == image[..., 2]).all()


def _fake_digits(tmp_dir):
    rng = np.random.default_rng(1)
    return rng.integers(0, 17, (30, 8, 8)).astype(np.uint8), np.arange(30) % 10


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("captions")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(captions, "fetch_digits", _fake_digits)
        path = captions.prepare_captions(data_dir, num_train=80, num_test=20, image_size=32, seed=3,
                                         progress=False)
    return data_dir, path


def test_splits_hold_out_pairs_and_match_generation(prepared):
    data_dir, _ = prepared
    train, test = captions.load_captions(data_dir, "train"), captions.load_captions(data_dir, "test")
    assert (len(train), len(test)) == (80 + 27, 20 + 3)  # Digits: every tenth index is test.
    train_scenes = [captions.parse_caption(ex["caption"]) for ex in train if ex["source"] == "scene"]
    assert not any(s.novel for s in train_scenes)
    test_novel = [ex["novel"] for ex in test if ex["source"] == "scene"]
    assert sum(test_novel) == 10 and all(captions.parse_caption(ex["caption"]).novel == ex["novel"]
                                         for ex in test if ex["source"] == "scene")
    digits = _fake_digits(None)
    for index, item in enumerate(captions.split_plan("train", 80, 30, seed=3)):
        want = captions.render_example(item, index, "train", 32, 3, digits)
        assert train[index]["caption"] == want["caption"]
        np.testing.assert_array_equal(train[index]["image"], want["image"])
    sources = [ex["source"] for ex in train]
    assert "digit" in sources[:40] and "scene" in sources[-40:], "stored order is shuffled"


def test_no_test_image_equals_a_training_image(prepared):
    data_dir, _ = prepared
    train = {ex["image"].tobytes() for ex in captions.load_captions(data_dir, "train")}
    assert not [ex for ex in captions.load_captions(data_dir, "test") if ex["image"].tobytes() in train]


def test_pixel_disjoint_redraws_scenes_and_drops_digits():
    scene = captions.Scene(1, "red", "square", "left")
    draw = lambda attempt: captions.render_example(scene, 0, "test", 32, 0, None, attempt)
    train = [draw(0), {"image": np.full((32, 32, 3), 7, np.uint8)}]
    test = [{**draw(0), "_item": scene, "_index": 0},  # Equals a training image: redrawn.
            {"image": np.full((32, 32, 3), 7, np.uint8), "_item": 3, "_index": 1},  # A duplicate digit.
            {"image": np.zeros((32, 32, 3), np.uint8), "_item": 4, "_index": 2}]
    redraw = lambda ex, attempt: ({**draw(attempt), "_item": scene, "_index": 0}
                                  if isinstance(ex["_item"], captions.Scene) else None)
    out = list(captions.pixel_disjoint(iter(test), iter(train), redraw))
    assert [ex["_index"] for ex in out] == [0, 2]
    assert out[0]["caption"] == captions.caption(scene)
    assert not np.array_equal(out[0]["image"], train[0]["image"])


def test_prepare_is_idempotent_and_rebuilds_on_new_settings(prepared, monkeypatch):
    data_dir, path = prepared
    monkeypatch.setattr(captions, "_build", lambda *a, **k: pytest.fail("rebuilt unchanged data"))
    kwargs = {"num_train": 80, "num_test": 20, "image_size": 32, "seed": 3, "progress": False}
    assert captions.prepare_captions(data_dir, **kwargs) == path
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="Rebuilding"):
        captions.prepare_captions(data_dir, **{**kwargs, "num_train": 10}, digits=False)
    assert len(captions.load_captions(data_dir, "train")) == 10
    assert not [p for p in (data_dir / "..").iterdir() if ".tmp-" in p.name]


def test_bad_image_size_and_split_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        captions.prepare_captions(tmp_path, num_train=1, num_test=1, image_size=40, seed=0)
    with pytest.raises(FileNotFoundError, match="prepare_captions"):
        captions.load_captions(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        captions.load_captions(tmp_path, "validation")


@pytest.mark.slow
def test_real_digits_from_the_scikit_learn_wheel(tmp_path):
    images, labels = captions.fetch_digits(tmp_path)
    assert images.shape == (1797, 8, 8) and images.max() == 16 and sorted(set(labels)) == list(range(10))
