"""Scripted experts and random policies for every task in `data_pipelines.tasks`.

Nothing ships Atari demonstrations or expert weights offline, so demonstrations come from scripted
policies that read emulator RAM (Atari) or simulator state (MuJoCo) and, where reacting is not enough,
look ahead over cloned emulator states. A policy acts in the task spec's action format (a dict of
fields), exactly what a dataset stores and what `tasks.action_to_env` turns into an env action.
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


class EpsilonPolicy:
    """Replaces an expert's action by a uniform one with probability epsilon.

    Recording runs without sticky actions, where Atari is deterministic: without some randomness every
    recorded episode of a deterministic expert would be the same game. The expert still sees every
    step (its own bookkeeping stays right) and recovers from the random actions, which also shows the
    model how to recover.
    """

    def __init__(self, expert: Policy, epsilon: float):
        self.expert, self.epsilon = expert, epsilon
        self.name = f"{expert.name}+eps{epsilon:g}"

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        self._rng = rng
        self.expert.reset(env, rng)

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        action = self.expert.act(env, observation)
        if self.epsilon > 0 and self._rng.random() < self.epsilon:
            return RandomPolicy.act(self, env, observation)
        return action


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


def make_policy(task: str, kind: str = "expert", *, epsilon: float = 0.0) -> Policy:
    """'expert' (optionally epsilon-perturbed) or 'random' policy for a registered task."""
    if kind == "random":
        return RandomPolicy()
    if kind != "expert":
        raise ValueError(f"Unknown policy kind {kind!r}; use 'expert' or 'random'.")
    factories = expert_factories()
    if task not in factories:
        raise ValueError(f"No expert for task {task!r}; experts exist for {sorted(factories)}.")
    expert = factories[task]()
    return EpsilonPolicy(expert, epsilon) if epsilon > 0 else expert
