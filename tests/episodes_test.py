"""Recorded datasets: TFDS/ArrayRecord round trip, metadata, idempotency, atomicity, filter, errors."""
import os
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import episodes, tasks
from gato_jax.tokenizers.spec import FieldKind, TaskSpec

SETTINGS = {"episodes": 2, "max_steps": 50, "frame_size": 80, "seed": 0, "min_return_fraction": 0.8,
            "progress": False, "workers": 1, "eval_episodes": 1,
            "noise": episodes.RecordingNoise(prob=0.2, hold=2, std=0.2)}
TASKS = ("atari_freeway", "control_reacher")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name in TASKS:
        episodes.prepare_task(name, root, **SETTINGS)
    return root


def _dtype(field) -> np.dtype:
    return {FieldKind.IMAGE: np.uint8, FieldKind.DISCRETE: np.int32, FieldKind.CONTINUOUS: np.float32}[field.kind]


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_episodes_round_trip_in_the_spec_format(data_dir, name, split):
    spec = tasks.task_spec(name)
    loaded = episodes.load_episodes(data_dir, name, split=split)
    assert len(loaded) == 1  # Two episodes: one for training, one held out.
    episode = loaded[0]
    steps, meta = episode["steps"], episode["episode_metadata"]
    n = meta["length"]
    assert 0 < n <= 50 and meta["task"] == name and isinstance(meta["policy"], str)
    for role, fields in (("observation", spec.observation), ("action", spec.action)):
        for field in fields:
            value = steps[role][field.name]
            assert value.shape == (n, *field.shape) and value.dtype == _dtype(field)
    assert steps["reward"].shape == (n,) and steps["reward"].dtype == np.float32
    assert meta["return"] == pytest.approx(float(steps["reward"].sum()), abs=1e-4)
    assert steps["is_first"].tolist() == [True] + [False] * (n - 1)
    assert steps["is_last"].tolist() == [False] * (n - 1) + [True]
    assert steps["is_terminal"].dtype == bool


def test_metadata_holds_scores_spec_and_references(data_dir):
    meta = episodes.load_metadata(data_dir, "atari_freeway")
    assert TaskSpec.from_json(meta["task_spec"]) == tasks.task_spec("atari_freeway")
    assert episodes.load_spec(data_dir, "atari_freeway") == tasks.task_spec("atari_freeway")
    assert {"expert_return", "random_return", "expert_returns", "random_returns"} <= set(meta)
    assert meta["reference_scores"] == {"random": 0.0, "human": 29.6}
    assert meta["evaluation"] == {"sticky_actions": 0.25, "episodes": 1, "max_steps": 50}
    assert meta["recording"]["sticky_actions"] == 0.0
    assert meta["recording"]["noise"] == {"prob": 0.2, "hold": 2, "std": 0.2}
    assert 0.1 < meta["recording"]["noise_step_fraction"] < 0.6  # Noise reached the recorded episodes.
    assert meta["expert_return_std"] >= 0 and meta["random_return_std"] >= 0
    assert meta["policies"]["expert"] == "freeway_watch" and meta["policies"]["random"] == "random"
    assert meta["splits"] == {"train": 1, "test": 1}
    assert meta["action_meanings"] == ["NOOP", "UP", "DOWN"]
    reacher = episodes.load_metadata(data_dir, "control_reacher")
    assert reacher["expert_return"] > reacher["random_return"] + 20  # Expert really is one.


def test_dataset_is_plain_tfds(data_dir):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(episodes.dataset_dir(data_dir, "control_reacher")))
    assert builder.info.splits["train"].num_examples == 1
    assert builder.info.metadata["task"] == "control_reacher"
    assert len(tfds.data_source("control_reacher", data_dir=str(data_dir), split="test")) == 1


def test_second_prepare_does_nothing(data_dir):
    folder = episodes.dataset_dir(data_dir, "atari_freeway")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert episodes.prepare_task("atari_freeway", data_dir, **SETTINGS) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_changed_settings_rebuild(tmp_path):
    episodes.prepare_task("control_reacher", tmp_path, **SETTINGS)
    episodes.prepare_task("control_reacher", tmp_path, **{**SETTINGS, "episodes": 3})
    assert episodes.load_metadata(tmp_path, "control_reacher")["settings"]["episodes"] == 3
    assert len(episodes.load_episodes(tmp_path, "control_reacher")) == 2
    assert sorted(os.listdir(tmp_path / "control_reacher")) == ["1.0.0"]  # No leftovers.


def test_failed_build_leaves_no_dataset(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # As if the run were killed while writing.

    monkeypatch.setattr(episodes, "write_dataset", boom)
    with pytest.raises(KeyboardInterrupt):
        episodes.prepare_task("control_reacher", tmp_path, **SETTINGS)
    assert os.listdir(tmp_path / "control_reacher") == []
    with pytest.raises(FileNotFoundError):
        episodes.load_metadata(tmp_path, "control_reacher")


def test_filter_uses_expert_normalised_score():
    # Pong-like negative returns: mean 5.67, random -20 -> normalised 0.58, 1.0, 1.4.
    mask, applied = episodes.keep_mask([-5.0, 10.0, 12.0], random_return=-20.0, min_fraction=0.8)
    assert applied and mask.tolist() == [False, True, True]
    mask, applied = episodes.keep_mask([1.0, 1.0], random_return=3.0, min_fraction=0.8)
    assert not applied and mask.tolist() == [True, True]  # Expert no better than random: keep all.


def test_filtered_episodes_are_dropped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(episodes, "keep_mask", lambda returns, *a: (np.array([True, False, True]), True))
    episodes.prepare_task("control_reacher", tmp_path, **{**SETTINGS, "episodes": 3})
    meta = episodes.load_metadata(tmp_path, "control_reacher")
    assert meta["filter"]["kept"] == 2 and meta["filter"]["dropped"] == 1
    ids = [ep["episode_metadata"]["episode_id"] for split in ("train", "test")
           for ep in episodes.load_episodes(tmp_path, "control_reacher", split)]
    assert ids == [0, 2]


def test_missing_dataset_names_the_command(tmp_path):
    for load in (episodes.load_episodes, episodes.load_metadata):
        with pytest.raises(FileNotFoundError, match=r"make data EXP=<name>"):
            load(tmp_path, "atari_pong")


def test_corrupt_record_names_file_and_record(data_dir, tmp_path):
    import shutil

    shutil.copytree(data_dir / "control_reacher", tmp_path / "control_reacher")
    (path,) = (tmp_path / "control_reacher" / "1.0.0").glob("*-train.array_record-*")
    with open(path, "r+b") as f:
        f.seek(200)
        f.write(b"\x07" * 64)
    loaded = episodes.load_episodes(tmp_path, "control_reacher")
    with pytest.raises(episodes.CorruptRecordError, match=rf"record 0 of {path}"):
        loaded[0]


def test_salient_filter_keeps_small_objects_at_full_contrast():
    field = np.full((160, 160), 87, np.uint8)  # Pong's ground.
    field[101:105, 61:63] = 236  # A bright 2x4 ball, straddling two output pixels in x.
    field[11:13, 21:23] = 0  # A dark 2x2 object (Boxing's black boxer, Freeway's cars on a light road).
    area, salient = (tasks.resize_frame(field, 80, (0, 160), f)[..., 0] for f in tasks.FRAME_FILTERS)
    assert area.max() < 236 and salient.max() == 236 and salient.min() == 0
    assert set(zip(*np.nonzero(salient == 236))) == {(50, 30), (50, 31), (51, 30), (51, 31), (52, 30), (52, 31)}
    assert set(zip(*np.nonzero(salient == 0))) == {(5, 10), (5, 11), (6, 10), (6, 11)}
    assert np.count_nonzero(salient != 87) == 10  # The ground stays the ground.


def test_salient_resize_takes_each_rectangles_pixel_furthest_from_the_background():
    rng = np.random.default_rng(0)
    field = np.where(rng.random((182, 160)) < 0.7, 120, rng.integers(0, 256, (182, 160))).astype(np.uint8)
    out = tasks.salient_resize(field, 80)  # Freeway's field: 182 rows, not a multiple of 80.
    edges = lambda n: (np.arange(81) * n) // 80
    rows, cols = edges(182), edges(160)

    def furthest(block: np.ndarray) -> int:
        hi, lo = int(block.max()), int(block.min())
        return hi if hi - 120 >= 120 - lo else lo

    expected = [[furthest(field[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]) for j in range(80)] for i in range(80)]
    np.testing.assert_array_equal(out, np.array(expected, np.uint8))


def test_the_config_check_knows_every_frame_filter_the_data_implements():
    from gato_jax import configs

    assert configs.FRAME_FILTERS == tasks.FRAME_FILTERS


def test_frame_filter_enters_atari_settings_only_when_it_changes_the_data():
    base = dict(episodes=2, max_steps=50, frame_size=80, seed=0, min_return_fraction=0.8)
    assert episodes.settings("atari_pong", **base, frame_filter="area") == episodes.settings("atari_pong", **base)
    assert "frame_filter" not in episodes.settings("atari_pong", **base)  # Datasets recorded before keep their key.
    assert episodes.settings("atari_pong", **base, frame_filter="salient")["frame_filter"] == "salient"
    assert "frame_filter" not in episodes.settings("control_reacher", **base, frame_filter="salient")


def test_env_and_recorded_frames_use_the_frame_filter(tmp_path):
    env = tasks.make_env("atari_freeway", sticky_actions=0.0, frame_filter="salient")
    observation, _ = env.reset(seed=0)
    top, bottom = tasks.get_task("atari_freeway").screen_rows
    screen = env.unwrapped.ale.getScreenGrayscale()[top:bottom]
    np.testing.assert_array_equal(observation["frame"][..., 0], tasks.salient_resize(screen, 80))
    palette = set(np.unique(screen))  # The salient filter only shows source pixel values; area averages them.
    for name in tasks.FRAME_FILTERS:
        episodes.prepare_task("atari_freeway", tmp_path / name, **{**SETTINGS, "episodes": 1, "frame_filter": name})
        frames = episodes.load_episodes(tmp_path / name, "atari_freeway", "train")[0]["steps"]["observation"]["frame"]
        assert set(np.unique(frames)) <= palette if name == "salient" else not set(np.unique(frames)) <= palette
    assert episodes.load_metadata(tmp_path / "salient", "atari_freeway")["settings"]["frame_filter"] == "salient"
