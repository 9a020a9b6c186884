"""Control tasks by name: their gymnasium environments, token specs, and reference scores.

Decisions [D] (docs/TOKEN_FORMAT.md leaves them open):
- Atari uses ALE v5 (frameskip 4, no frame max-pooling) with the game's *minimal* action set (Pong 6,
  Breakout 4, Boxing 18, Freeway 3 actions): fewer invalid actions for a small model to learn, and the
  set is recorded in the spec (num_values) and in each dataset's metadata (action meanings).
- Atari observations: ALE grayscale (210x160), cropped to the game's play field (`Task.screen_rows`:
  the score bar and logos carry nothing the policy needs, and dropping them makes the resize factor ~2,
  so Pong's 2x4-pixel ball stays a full-intensity pixel), resized with PIL's area filter to
  frame_size x frame_size, one uint8 channel, no frame stacking (the transformer sees earlier frames in
  context). None of these games flicker, so frames are not max-pooled over time.
- `frame_filter` (`config.data.frame_filter`): "area" (PIL's box filter) averages each output pixel's
  source rectangle, so a ball smaller than one output pixel, or straddling two, is drawn at a fraction of
  its contrast (Breakout's 2x4 ball comes out at ~1/3 of its level). "salient" keeps, per output pixel, the
  source pixel furthest from the frame's background (its commonest value): every object, bright or dark,
  keeps its full contrast and shows where it is to the nearest output pixel. (A plain maximum would do
  for Pong's and Breakout's bright balls but erodes dark objects on a light ground: Boxing's black boxer,
  Freeway's cars.)
- Recording uses sticky actions 0 (repeat_action_probability); evaluation uses 0.25 (ALE v5 default).
- MuJoCo tasks observe the raw state vector ('state', mu-law companded) and act with 'action' scaled
  by the action bound, so tokenized actions live in [-1, 1].
- A task's episode ends at the step cap `max_steps` (truncation) or at its native limit when shorter
  (Reacher-v5 episodes are 50 steps: one target per episode).

Every env returned here emits observations already in the spec's format ({'frame': uint8 [H, W, 1]} or
{'state': float32 [D]}) and takes what `action_to_env` returns.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium
import numpy as np
from PIL import Image

from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec

# `config.data.frame_filter` values (module docstring); gato_jax.configs.FRAME_FILTERS, which the config
# check reads, holds the same names (tests/episodes_test.py keeps them equal).
FRAME_FILTERS = ("area", "salient")
RECORD_STICKY_ACTIONS = 0.0  # repeat_action_probability when recording demonstrations.
EVAL_STICKY_ACTIONS = 0.25  # repeat_action_probability when scoring (ALE v5 default).


@dataclasses.dataclass(frozen=True)
class Task:
    """One registered control task."""

    name: str  # Registry key, also the TaskSpec name and the dataset directory name.
    env_id: str  # gymnasium id.
    kind: str  # "atari" or "mujoco".
    action_meanings: tuple[str, ...] = ()  # Atari minimal action set, in index order.
    random_score: float | None = None  # Published random-agent score (full game), Atari only.
    human_score: float | None = None  # Published human score (full game), Atari only.
    native_max_steps: int | None = None  # The env's own step limit, kept when shorter than the cap.
    screen_rows: tuple[int, int] = (0, 210)  # Atari: [top, bottom) rows of the play field kept.


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("atari_pong", "ALE/Pong-v5", "atari",
         ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"), -20.7, 14.6, screen_rows=(34, 194)),
    Task("atari_breakout", "ALE/Breakout-v5", "atari", ("NOOP", "FIRE", "RIGHT", "LEFT"), 1.7, 30.5,
         screen_rows=(36, 196)),
    Task("atari_boxing", "ALE/Boxing-v5", "atari",
         ("NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
          "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE",
          "DOWNLEFTFIRE"), 0.1, 12.1, screen_rows=(26, 186)),
    Task("atari_freeway", "ALE/Freeway-v5", "atari", ("NOOP", "UP", "DOWN"), 0.0, 29.6, screen_rows=(14, 196)),
    Task("control_pendulum", "InvertedPendulum-v5", "mujoco", native_max_steps=1000),
    Task("control_reacher", "Reacher-v5", "mujoco", native_max_steps=50),
)}

# MuJoCo shapes, so specs need no simulator: (observation dim, action dim, action bound).
_MUJOCO_SHAPES = {"control_pendulum": (4, 1, 3.0), "control_reacher": (10, 2, 1.0)}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"Unknown control task {name!r}; registered tasks: {task_names()}.")
    return TASKS[name]


def reference_scores(name: str) -> dict[str, float]:
    """Published full-game random and human scores (Atari); empty for tasks without them."""
    task = get_task(name)
    if task.human_score is None:
        return {}
    return {"random": task.random_score, "human": task.human_score}


def task_spec(name: str, frame_size: int = 80, patch_size: int = 16, frame_history: int = 1) -> TaskSpec:
    """The token spec of a task's observations and actions (see the module docstring); `frame_history`
    (Atari only) is how many frames each image's channels show (`TaskSpec.frame_history`)."""
    task = get_task(name)
    if task.kind == "atari":
        observation = (FieldSpec("frame", FieldKind.IMAGE, (frame_size, frame_size, 1)),)
        action = (FieldSpec("action", FieldKind.DISCRETE, (), num_values=len(task.action_meanings)),)
    else:
        obs_dim, act_dim, bound = _MUJOCO_SHAPES[name]
        observation = (FieldSpec("state", FieldKind.CONTINUOUS, (obs_dim,), companded=True),)
        action = (FieldSpec("action", FieldKind.CONTINUOUS, (act_dim,), companded=False, scale=bound),)
    history = frame_history if task.kind == "atari" else 1
    return TaskSpec(name=name, observation=observation, action=action, patch_size=patch_size, frame_history=history)


def task_spec_for(config, name: str) -> TaskSpec:
    """`task_spec` with the experiment config's frame size, patch size and frame history."""
    return task_spec(name, frame_size=config.data.frame_size, patch_size=config.model.patch_size,
                     frame_history=config.data.frame_history)


def episode_limit(name: str, max_steps: int) -> int:
    """Steps after which an episode is truncated: the cap, or the env's own limit when shorter."""
    native = get_task(name).native_max_steps
    return min(max_steps, native) if native else max_steps


# ---------------------------------------------------------------------------------------------------------
# Environments.


class AtariFrame(gymnasium.ObservationWrapper):
    """ALE grayscale screen -> {'frame': uint8 [size, size, 1]}: the one frame preprocessing there is.

    Recording and evaluation both get their frames here (through `make_env`), so the model acts on
    exactly the pixels it was trained on.
    """

    def __init__(self, env: gymnasium.Env, size: int, rows: tuple[int, int] = (0, 210), frame_filter: str = "area"):
        super().__init__(env)
        self.size, self.rows, self.frame_filter = size, rows, frame_filter
        self.observation_space = gymnasium.spaces.Dict(
            {"frame": gymnasium.spaces.Box(0, 255, (size, size, 1), np.uint8)})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {"frame": resize_frame(observation, self.size, self.rows, self.frame_filter)}


def resize_frame(screen_HxW: np.ndarray, size: int, rows: tuple[int, int] = (0, 210),
                 frame_filter: str = "area") -> np.ndarray:
    """One grayscale screen, cropped to rows [top, bottom), resized to uint8 [size, size, 1] by `frame_filter`."""
    top, bottom = rows
    field = np.asarray(screen_HxW, np.uint8)[top:bottom]
    if frame_filter == "salient":
        return salient_resize(field, size)[:, :, None]
    if frame_filter != "area":
        raise ValueError(f"Unknown frame filter {frame_filter!r}; set config.data.frame_filter to one of "
                         f"{FRAME_FILTERS}.")
    image = Image.fromarray(field).resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, np.uint8)[:, :, None]


def salient_resize(field_HxW: np.ndarray, size: int) -> np.ndarray:
    """[size, size]: each output pixel is the pixel of its source rectangle furthest from the background.

    The background is the field's commonest value. Output row i covers source rows
    [floor(i H / size), floor((i + 1) H / size)) (the same for columns), so the rectangles tile the field;
    where the field is smaller than `size` a rectangle is one source pixel. Ties keep the brighter pixel.
    """
    h, w = field_HxW.shape
    rows, cols = (np.arange(size) * h) // size, (np.arange(size) * w) // size
    brightest = np.maximum.reduceat(np.maximum.reduceat(field_HxW, rows, axis=0), cols, axis=1)
    darkest = np.minimum.reduceat(np.minimum.reduceat(field_HxW, rows, axis=0), cols, axis=1)
    background = np.bincount(field_HxW.ravel(), minlength=256).argmax()
    keep_bright = brightest.astype(np.int32) - background >= background - darkest.astype(np.int32)
    return np.where(keep_bright, brightest, darkest).astype(np.uint8)


class StateVector(gymnasium.ObservationWrapper):
    """MuJoCo float64 state -> {'state': float32 [D]}."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        dim = env.observation_space.shape[0]
        self.observation_space = gymnasium.spaces.Dict(
            {"state": gymnasium.spaces.Box(-np.inf, np.inf, (dim,), np.float32)})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        return {"state": np.asarray(observation, np.float32)}


class SeededReset(gymnasium.Wrapper):
    """Uses `seed` on the first reset that names none, so `make_env(seed=...)` alone is reproducible."""

    def __init__(self, env: gymnasium.Env, seed: int | None):
        super().__init__(env)
        self._seed = seed
        if seed is not None:
            env.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None
        return self.env.reset(seed=seed, options=options)


def make_env(name: str, *, sticky_actions: float = EVAL_STICKY_ACTIONS, max_steps: int = 1000,
             seed: int | None = None, frame_size: int = 80, frame_filter: str = "area") -> gymnasium.Env:
    """A task's env, observations in the spec's format, truncated at `episode_limit(name, max_steps)`.

    sticky_actions only applies to Atari (ALE repeat_action_probability).
    """
    task = get_task(name)
    limit = episode_limit(name, max_steps)
    if task.kind == "atari":
        import ale_py

        gymnasium.register_envs(ale_py)
        env = gymnasium.make(task.env_id, obs_type="grayscale", frameskip=4, full_action_space=False,
                             repeat_action_probability=sticky_actions, max_episode_steps=limit)
        env = AtariFrame(env, frame_size, task.screen_rows, frame_filter)
    else:
        env = StateVector(gymnasium.make(task.env_id, max_episode_steps=limit))
    return SeededReset(env, seed)


def make_vector_env(name: str, num_envs: int, *, sticky_actions: float = EVAL_STICKY_ACTIONS,
                    max_steps: int = 1000, seed: int = 0, frame_size: int = 80, frame_filter: str = "area",
                    asynchronous: bool = False) -> gymnasium.vector.VectorEnv:
    """num_envs copies of `make_env` (env i seeded seed + i), autoreset on the step after an episode ends.

    Not ale_py's AtariVectorEnv: even at 80x80, one frame, no max-pooling, its C++ resize differs from
    the PIL frames the datasets hold (measured on Pong: 4% of pixels, by up to 21 levels), and rollouts
    must see exactly the training frames. Environments are cheap next to the model's forward pass.
    """
    makers: list[Callable[[], gymnasium.Env]] = [
        (lambda i=i: make_env(name, sticky_actions=sticky_actions, max_steps=max_steps, seed=seed + i,
                              frame_size=frame_size, frame_filter=frame_filter)) for i in range(num_envs)]
    cls = gymnasium.vector.AsyncVectorEnv if asynchronous else gymnasium.vector.SyncVectorEnv
    return cls(makers)


def action_to_env(name: str, action: Mapping[str, Any]) -> int | np.ndarray:
    """A spec-format action dict -> what `make_env(name).step` takes (index, or clipped float32 vector)."""
    task = get_task(name)
    value = action["action"]
    if task.kind == "atari":
        index = int(np.asarray(value).reshape(()))
        if not 0 <= index < len(task.action_meanings):
            raise ValueError(f"Action {index} is outside {name}'s {len(task.action_meanings)} actions.")
        return index
    _, act_dim, bound = _MUJOCO_SHAPES[name]
    return np.clip(np.asarray(value, np.float32).reshape(act_dim), -bound, bound)


def vector_action_to_env(name: str, actions: Mapping[str, Any]) -> np.ndarray:
    """Batched `action_to_env` for `make_vector_env`: {'action': [B] or [B, D]} -> [B] or [B, D]."""
    values = np.asarray(actions["action"])
    return np.stack([np.asarray(action_to_env(name, {"action": v})) for v in values])
