"""What every scripted policy is: the action type, the `Policy` protocol, the random policy and the DART
action noise used while recording (the experts themselves are in `atari` and `control`)."""
from __future__ import annotations

from collections.abc import Mapping
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
