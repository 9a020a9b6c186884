"""Tests for data_pipelines.published: conversions of rlu_atari and coco_captions examples, without TF.

TensorFlow is not installed in the fast suite, so `tfds.testing.mock_data` cannot build either dataset
(both builders import TF). Instead: rlu_atari examples come from TFDS's own random generator applied to
the real feature spec (`atari_utils.features_dict()`, which needs no TF), plus hand-made episodes with
known values; coco_captions examples are hand-made in the shape of its features (image uint8 [H,W,3],
captions {'text': bytes [n], 'id': int64 [n]}).
"""
import sys

import numpy as np
import pytest

from data_pipelines import published
from gato_jax.tokenizers.spec import FieldSpec, TaskSpec

PONG = TaskSpec(
    name="atari/pong",
    observation=(FieldSpec("frame", "image", (80, 80, 1)),),
    action=(FieldSpec("action", "discrete", num_values=6),),
)


def _episode(n: int, terminal: bool) -> dict:
    """An rlu_atari example as tfds.as_numpy yields it: steps as a list of per-step dicts."""
    rng = np.random.default_rng(0)
    steps = [{"observation": rng.integers(0, 256, (84, 84, 1), dtype=np.uint8), "action": np.int64(i % 6),
              "reward": np.float32(i == n - 2), "discount": np.float32(1.0), "is_first": i == 0,
              "is_last": i == n - 1, "is_terminal": terminal and i == n - 1} for i in range(n)]
    return {"steps": steps, "checkpoint_id": np.int64(3), "episode_id": np.int64(17),
            "episode_return": np.float32(1.0)}


def test_rlu_atari_feature_spec_examples_convert():
    from tensorflow_datasets.rl_unplugged import atari_utils
    from tensorflow_datasets.testing import mocking

    example = mocking.RandomFakeGenerator(atari_utils.features_dict(), num_examples=1)[0]
    for step in example["steps"]:
        step["action"] = np.int64(step["action"]) % 6  # Random int64s; Pong has 6 actions.
    episode = published.rlu_atari_to_episode(example, PONG)
    n = len(example["steps"])
    assert episode["steps"]["observation"]["frame"].shape == (n, 80, 80, 1)
    assert episode["steps"]["observation"]["frame"].dtype == np.uint8
    assert episode["steps"]["action"]["action"].dtype == np.int32


def test_rlu_atari_terminal_step_without_action_is_dropped():
    episode = published.rlu_atari_to_episode(_episode(5, terminal=True), PONG)
    steps = episode["steps"]
    assert len(steps["reward"]) == 4 and steps["is_last"].tolist() == [False, False, False, True]
    assert steps["is_first"][0] and steps["action"]["action"].tolist() == [0, 1, 2, 3]
    assert episode["episode_return"] == 1.0 and episode["episode_id"] == "3_17"
    truncated = published.rlu_atari_to_episode(_episode(5, terminal=False), PONG)
    assert len(truncated["steps"]["reward"]) == 5


def test_stacked_and_listed_steps_agree():
    example = _episode(4, terminal=False)
    stacked = dict(example, steps=published.stack_steps(example["steps"]))
    a, b = published.rlu_atari_to_episode(example, PONG), published.rlu_atari_to_episode(stacked, PONG)
    np.testing.assert_array_equal(a["steps"]["observation"]["frame"], b["steps"]["observation"]["frame"])


def test_rlu_atari_rejects_actions_outside_the_task():
    example = _episode(3, terminal=False)
    example["steps"][1]["action"] = np.int64(9)
    with pytest.raises(ValueError, match="minimal"):
        published.rlu_atari_to_episode(example, PONG)


def test_resize_frames_keeps_flat_frames_and_shapes():
    frames = np.full((2, 84, 84, 1), 77, np.uint8)
    out = published.resize_frames(frames, (80, 80))
    assert out.shape == (2, 80, 80, 1) and (out == 77).all()
    np.testing.assert_array_equal(published.resize_frames(frames, (84, 84)), frames)


def test_coco_example_gives_one_square_pair_per_caption():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 8:56] = 200  # The centre square survives the crop; the side bars do not.
    example = {"image": image, "image/filename": "COCO_val2014_000000000042.jpg", "image/id": np.int64(42),
               "captions": {"text": np.array([b"A grey square. ", b"Something grey.", b""], dtype=object),
                            "id": np.array([1, 2, 3], np.int64)}}
    pairs = published.coco_example_to_captions(example, image_size=32)
    assert [p["caption"] for p in pairs] == ["A grey square.", "Something grey."]
    assert pairs[0]["image"].shape == (32, 32, 3) and (pairs[0]["image"] == 200).all()
    with pytest.raises(ValueError, match="multiple of 16"):
        published.coco_example_to_captions(example, image_size=30)


@pytest.mark.parametrize("load", [
    lambda: next(published.load_rlu_atari("Pong", PONG)),
    lambda: next(published.load_coco_captions("train", image_size=32)),
])
def test_loaders_without_tensorflow_say_how_to_install_it(load, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # Import fails as if not installed.
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[tf\]\""):
        load()


def test_atomic_directory_publishes_only_on_success(tmp_path):
    final = tmp_path / "data"
    with pytest.raises(RuntimeError), published.atomic_directory(final) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with published.atomic_directory(final) as tmp:
        (tmp / "whole.txt").write_text("x")
    with published.atomic_directory(final, replace=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert [p.name for p in final.iterdir()] == ["new.txt"] and len(list(tmp_path.iterdir())) == 1


def test_rlu_atari_name():
    assert published.rlu_atari_name("Pong", 2) == "rlu_atari/Pong_run_2"
