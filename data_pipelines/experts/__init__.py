"""Scripted experts and random policies for every task in `data_pipelines.tasks`.

Nothing ships Atari demonstrations or expert weights offline, so demonstrations come from scripted
policies. Each acts on what its observation shows: Atari experts read on-screen object positions from
RAM (a shortcut for parsing the frame) and velocities from the previous frames, re-deciding every step
without look-ahead, hidden timers or held plans; MuJoCo experts read the observed state vector. So a
model that sees only the observations can, in principle, copy them. A policy acts in the task spec's
action format (a dict of fields), exactly what a dataset stores and what `tasks.action_to_env` turns
into an env action.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import gymnasium
import numpy as np

Action = dict[str, np.ndarray]


class Policy(Protocol):
    """What the episode recorder needs: a name for the metadata, a per-episode reset, an action."""

    name: str

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None: ...

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action: ...


class RandomPolicy:
    """Uniform actions: the 'random' reference of the expert-normalised score."""

    name = "random"

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._rng = rng

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        space = env.action_space
        if isinstance(space, gymnasium.spaces.Discrete):
            return {"action": np.int32(self._rng.integers(space.n))}
        return {"action": self._rng.uniform(space.low, space.high).astype(np.float32)}


class ActionNoise:
    """DART-style perturbation of the *executed* action; the recorded label stays the expert's.

    Behaviour cloning trained only on an expert's own states fails in the states its small errors lead
    to (covariate shift). Recording with noise in the executed actions visits those states, and since
    every step's label is the expert's clean action for the state actually reached, the data show how to
    recover without ever teaching a noise action (Laskey et al. 2017, DART).

    Discrete actions: with probability `prob` per step (outside a burst) a uniform random action starts
    a burst held for 1..`hold` steps (uniform), the way a cloned policy's mistake tends to persist.
    Continuous actions: Gaussian noise with std `std` times the action bound, clipped to the bounds.
    """

    def __init__(self, prob: float = 0.0, hold: int = 1, std: float = 0.0):
        if not 0.0 <= prob <= 1.0 or hold < 1 or std < 0.0:
            raise ValueError(f"Action noise needs 0 <= prob <= 1, hold >= 1 and std >= 0; got prob={prob}, "
                             f"hold={hold}, std={std} (config.data.record_noise_*).")
        self.prob, self.hold, self.std = prob, hold, std

    def reset(self, rng: np.random.Generator) -> None:
        self._rng, self._held, self._left = rng, None, 0

    def __call__(self, env: gymnasium.Env, clean: Action) -> tuple[Action, bool]:
        """(action to execute, whether it is noise rather than the clean action)."""
        space = env.action_space
        if isinstance(space, gymnasium.spaces.Discrete):
            if self._left == 0 and self.prob > 0 and self._rng.random() < self.prob:
                self._held = {"action": np.int32(self._rng.integers(space.n))}
                self._left = int(self._rng.integers(1, self.hold + 1))
            if self._left > 0:
                self._left -= 1
                return self._held, True
            return clean, False
        if self.std == 0.0:
            return clean, False
        value = np.asarray(clean["action"], np.float32)
        noisy = value + self._rng.normal(0.0, self.std, value.shape) * space.high
        return {"action": np.clip(noisy, space.low, space.high).astype(np.float32)}, True


def expert_factories() -> dict[str, Callable[[], Policy]]:
    """Task name -> expert constructor (imported lazily: MuJoCo experts need no ALE and vice versa)."""
    from data_pipelines.experts import atari, control

    return {
        "atari_pong": atari.PongExpert,
        "atari_breakout": atari.BreakoutExpert,
        "atari_boxing": atari.BoxingExpert,
        "atari_freeway": atari.FreewayExpert,
        "control_pendulum": control.InvertedPendulumExpert,
        "control_reacher": control.ReacherExpert,
    }


def make_policy(task: str, kind: str = "expert") -> Policy:
    """The 'expert' or the 'random' policy of a registered task."""
    if kind == "random":
        return RandomPolicy()
    if kind != "expert":
        raise ValueError(f"Unknown policy kind {kind!r}; use 'expert' or 'random'.")
    factories = expert_factories()
    if task not in factories:
        raise ValueError(f"No expert for task {task!r}; experts exist for {sorted(factories)}.")
    return factories[task]()
