"""Environments on the host: a batch of gymnasium envs stepped in lockstep, and the rollout loop.

Decisions:
- `EnvBatch` owns plain single environments rather than a gymnasium VectorEnv: it resets a finished
  environment in the same step (so every row always holds a live observation for the fixed-shape act
  step), gives every episode its own seed (episode j of an evaluation is reset with seed + j, whatever
  row runs it), and stops starting episodes once the requested number is under way. Environment steps
  are microseconds next to a model step, so the Python loop costs nothing that matters.
- An environment's observation is expected as a dict keyed by the task spec's field names; an env
  with a single observation field may return the bare array.
- Video frames: the env's RGB render when it was made with render_mode="rgb_array", else the task's
  first image observation, upscaled (nearest) so a 80x80 frame is watchable.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import tqdm

from gato_jax.rollout.agent import Agent
from gato_jax.tokenizers.spec import FieldKind, TaskSpec

MakeEnv = Callable[[int], Any]  # seed -> gymnasium.Env
ToEnv = Callable[[Mapping[str, np.ndarray]], Any]  # decoded action dict -> the env's action
MIN_VIDEO_SIDE = 160  # Observation frames are upscaled to at least this many pixels a side.
MAX_VIDEO_FRAMES = 1000  # Frames kept of the recorded episode (its start): bounds host memory.


class Transition(NamedTuple):
    """One lockstep step of the batch (host numpy arrays, [B] each)."""

    reward: np.ndarray  # float64
    terminated: np.ndarray  # bool: the episode ended in the environment.
    truncated: np.ndarray  # bool: cut by the step cap (or the env's own time limit).
    active: np.ndarray  # bool: the row was running an episode that counts.


class Episode(NamedTuple):
    """A finished episode."""

    index: int  # 0..num_episodes-1; its reset seed is seed + index.
    ret: float
    length: int


def as_observation(obs: Any, spec: TaskSpec) -> Mapping[str, np.ndarray]:
    """The env's observation as {field name: array}."""
    if isinstance(obs, Mapping):
        return obs
    if len(spec.observation) == 1:
        return {spec.observation[0].name: np.asarray(obs)}
    raise TypeError(f"Task {spec.name!r} has {len(spec.observation)} observation fields; its env must return a dict.")


def observation_frame(obs: Mapping[str, np.ndarray], spec: TaskSpec) -> np.ndarray | None:
    """RGB uint8 frame of the first image field, upscaled by an integer factor; None without images."""
    images = [f for f in spec.ordered_observation() if f.kind == FieldKind.IMAGE]
    if not images:
        return None
    frame = np.asarray(obs[images[0].name], np.uint8)
    frame = np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame
    factor = max(1, -(-MIN_VIDEO_SIDE // max(frame.shape[:2])))
    return np.kron(frame, np.ones((factor, factor, 1), np.uint8))


def env_frame(env: Any, obs: Mapping[str, np.ndarray], spec: TaskSpec) -> np.ndarray | None:
    """The env's RGB render when it renders arrays, else the observation image."""
    if getattr(env, "render_mode", None) == "rgb_array":
        frame = env.render()
        if frame is not None:
            return np.asarray(frame, np.uint8)
    return observation_frame(obs, spec)


class EnvBatch:
    """`num_envs` environments running `num_episodes` seeded episodes between them, with a step cap."""

    def __init__(self, make_env: MakeEnv, to_env: ToEnv, spec: TaskSpec, *, num_envs: int, num_episodes: int,
                 max_steps: int, seed: int, record_first: bool = False):
        self.spec, self.to_env, self.max_steps, self.seed = spec, to_env, max_steps, seed
        self.num_episodes = num_episodes
        self.envs = [make_env(seed + 1000 * i) for i in range(num_envs)]
        self.episode_B = np.full(num_envs, -1)  # Episode index run by each row; -1 = idle.
        self.returns_B = np.zeros(num_envs)
        self.lengths_B = np.zeros(num_envs, np.int64)
        self.obs: list[Mapping[str, np.ndarray]] = [{}] * num_envs
        self.started = 0
        self.finished: list[Episode] = []
        self.record_first, self.frames = record_first, []

    def reset(self) -> tuple[list[Mapping[str, np.ndarray]], np.ndarray]:
        """Starts an episode in every row (those beyond num_episodes stay idle); (observations, new rows)."""
        for i in range(len(self.envs)):
            self._start(i)
        return list(self.obs), np.ones(len(self.envs), bool)

    def _start(self, i: int) -> None:
        if self.started >= self.num_episodes:
            self.episode_B[i] = -1
            return
        obs, _ = self.envs[i].reset(seed=self.seed + self.started)
        self.obs[i] = as_observation(obs, self.spec)
        self.episode_B[i], self.returns_B[i], self.lengths_B[i] = self.started, 0.0, 0
        self.started += 1
        self._record(i)

    def _record(self, i: int) -> None:
        if self.record_first and self.episode_B[i] == 0 and len(self.frames) < MAX_VIDEO_FRAMES:
            frame = env_frame(self.envs[i], self.obs[i], self.spec)
            if frame is not None:
                self.frames.append(frame)

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.num_episodes

    @property
    def active(self) -> np.ndarray:
        return self.episode_B >= 0

    def step(self, actions: list[Mapping[str, np.ndarray]]) -> tuple[list[Mapping], np.ndarray, Transition]:
        """Steps the active rows; finished rows start their next episode at once (new rows flagged)."""
        b = len(self.envs)
        reward, terminated, truncated = np.zeros(b), np.zeros(b, bool), np.zeros(b, bool)
        active, new_B = self.active.copy(), np.zeros(b, bool)
        for i in np.flatnonzero(active):
            obs, r, term, trunc, _ = self.envs[i].step(self.to_env(actions[i]))
            self.obs[i] = as_observation(obs, self.spec)
            self.returns_B[i] += float(r)
            self.lengths_B[i] += 1
            reward[i], terminated[i] = float(r), bool(term)
            truncated[i] = bool(trunc) or self.lengths_B[i] >= self.max_steps
            self._record(i)
            if terminated[i] or truncated[i]:
                self.finished.append(Episode(int(self.episode_B[i]), float(self.returns_B[i]), int(self.lengths_B[i])))
                self.record_first = self.record_first and self.episode_B[i] != 0
                self._start(i)
                new_B[i] = True
        return list(self.obs), new_B, Transition(reward, terminated, truncated, active)

    def close(self) -> None:
        for env in self.envs:
            env.close()


class RolloutResult(NamedTuple):
    episodes: list[Episode]  # In episode-index order.
    frames: list[np.ndarray]  # Episode 0, when recorded.
    agent_steps: int  # Act steps taken (each for the whole batch).
    env_steps: int  # Environment steps taken by active rows.
    tokens: int  # Tokens decoded (batch rows x (observation + action tokens) per act step).
    seconds: float


class StepInfo(NamedTuple):
    """What one act step of the whole batch did."""

    tokens: int  # Tokens decoded: rows x (observation + action tokens).
    env_steps: int  # Environment steps taken by active rows.
    finished: int  # Episodes that ended.


def acting_steps(agent: Agent, envs: EnvBatch, key: jax.Array, prompt=None) -> Iterator[StepInfo]:
    """The rollout loop: one jitted act step for the whole batch per item, until `envs` is done.

    `run_episodes` runs it to the end; `bench.measure_acting` times its first steps, so the benchmark
    times the loop `make eval` runs (`make eval` also asks each step's expert when it shadows the model).
    """
    state = agent.initial_state(prompt)
    observations, reset_B = envs.reset()
    while not envs.done:
        key, act_key = jax.random.split(key)
        obs = agent.observe(observations, reset_B)
        state, out = agent.act(state, obs, reset_B, act_key)
        before = len(envs.finished)
        observations, reset_B, transition = envs.step(agent.decode_actions(out.action_ids_BxA))
        yield StepInfo(obs.tokens.size + out.action_ids_BxA.size, int(transition.active.sum()),
                       len(envs.finished) - before)


def run_episodes(agent: Agent, envs: EnvBatch, key: jax.Array, prompt=None, progress: bool = True,
                 desc: str = "") -> RolloutResult:
    """Acts in `envs` until their episodes are done; one jitted act step per lockstep timestep."""
    steps = env_steps = tokens = 0
    bar = tqdm.tqdm(total=envs.num_episodes, desc=desc or agent.spec.name, unit="ep", disable=not progress,
                    leave=False, position=1)
    start = time.perf_counter()
    for info in acting_steps(agent, envs, key, prompt):
        bar.update(info.finished)
        steps, env_steps, tokens = steps + 1, env_steps + info.env_steps, tokens + info.tokens
    bar.close()
    episodes = sorted(envs.finished, key=lambda e: e.index)
    return RolloutResult(episodes, envs.frames, steps, env_steps, tokens, time.perf_counter() - start)
