"""What every scripted policy is: the action type, the `Policy` protocol, the random policy, the DART
action noise used while recording, and the evaluation's tools around an expert (`ActionErrors`: the expert
at a given error rate; `ExpertShadow`: the expert asked in the states another player reaches; `ExpertLabels`:
those states kept with the expert's actions as labels, DAgger's data). The experts
themselves are in `atari` and `control`."""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
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


class ExpertShadow(gymnasium.Wrapper):
    """Asks the expert what it would do in every state the wrapped env's player reaches, and reports whether
    the player did the same (`record(agrees)` once per step); the player's actions are executed unchanged.

    `make eval` wraps the model's discrete-action envs in this: agreement on the model's *own* states,
    next to teacher-forced accuracy on the expert's, measures the covariate shift of behaviour cloning
    (the states a cloner's errors lead to, where nobody showed it what to do). The expert runs exactly as
    when it plays (reset with the episode, called every step), so its velocity estimates see consecutive
    frames.
    """

    def __init__(self, env: gymnasium.Env, expert: Policy, record: Callable[[bool], None], seed: int = 0):
        super().__init__(env)
        self.expert, self.record, self._rng = expert, record, np.random.default_rng(seed)
        self._observation: Mapping[str, np.ndarray] = {}

    def reset(self, **kwargs) -> tuple[Mapping[str, np.ndarray], dict]:
        observation, info = self.env.reset(**kwargs)
        self.expert.reset(self.env, self._rng)
        self._observation = observation
        return observation, info

    def step(self, action: int) -> tuple[Mapping[str, np.ndarray], float, bool, bool, dict]:
        wanted = int(self.expert.act(self.env, self._observation)["action"])
        self.record(wanted == int(action))
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._observation = observation
        return observation, reward, terminated, truncated, info


class ExpertLabels(gymnasium.Wrapper):
    """Keeps every state the wrapped env's player reaches, labelled with the expert's action for it (DAgger):
    each episode (the steps between two resets, or a reset and `close`) goes to `on_episode(observations,
    labels, rewards, terminated)`. The player's actions are executed, except on a share `beta` of steps
    (drawn independently per step) where the expert's own action is executed instead.

    Behaviour cloning learns the expert's states; the states its own errors lead to are where it fails
    (`ExpertShadow` measures that). Labelling exactly those states with what the expert would have done
    and training on them is DAgger (Ross et al. 2011). The expert runs as when it plays: reset with the
    episode and asked every step, so its velocity estimates see consecutive frames.

    `beta` is DAgger's mixing (the rollout policy is the expert with probability beta, else the player):
    a weak player alone can stay in one situation for most of an episode (Breakout's model rarely serves,
    so 81% of its round's labels were FIRE on ball-less screens); the expert's share moves the episode on
    into the states the player would meet next, while every state is still one the player helped reach.

    `player_first_labels` / `player_first_steps`: while the expert's label is one of these discrete actions,
    the mixing waits, for up to `player_first_steps` consecutive such steps, so the player acts alone there.
    With beta 0.5 Breakout's expert served within ~2 steps of every lost ball, so FIRE was 2.5% of the
    round's labels and the model still seldom served; waiting lets the model meet (and be labelled on) the
    ball-less screens it stalls on, while the cap keeps a model that never serves from filling the round
    with them (81% of labels at beta 0).
    """

    def __init__(self, env: gymnasium.Env, expert: Policy, on_episode: Callable[..., None], seed: int = 0,
                 beta: float = 0.0, to_env: Callable[[Action], int | np.ndarray] = lambda label: label["action"],
                 player_first_labels: Collection[int] = (), player_first_steps: int = 0):
        super().__init__(env)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"ExpertLabels' beta is a probability; got {beta}.")
        if player_first_steps < 0:
            raise ValueError(f"ExpertLabels' player_first_steps counts steps; got {player_first_steps}.")
        self.player_first_labels = frozenset(int(a) for a in player_first_labels)
        self.player_first_steps, self._player_first_run = int(player_first_steps), 0
        # `to_env`: a label as the env takes it when the expert's action is executed (`tasks.action_to_env`
        # clips continuous actions to the bound, as the recorder and the rollout do).
        self.expert, self.on_episode, self.beta, self.to_env = expert, on_episode, float(beta), to_env
        self._rng, self._mix_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
        # Steps taken, of them those that executed the expert's action, and those where the mixing waited.
        self.steps = self.expert_steps = self.player_first_taken = 0
        self._observation: Mapping[str, np.ndarray] = {}
        self._clear()

    def _clear(self) -> None:
        self._observations: list[Mapping[str, np.ndarray]] = []
        self._labels: list[Action] = []
        self._rewards: list[float] = []
        self._terminated = False

    def _flush(self) -> None:
        if self._labels:
            self.on_episode(self._observations, self._labels, self._rewards, self._terminated)
        self._clear()

    def reset(self, **kwargs) -> tuple[Mapping[str, np.ndarray], dict]:
        self._flush()
        observation, info = self.env.reset(**kwargs)
        self.expert.reset(self.env, self._rng)
        self._observation, self._player_first_run = observation, 0
        return observation, info

    def _player_goes_first(self, label: Action) -> bool:
        """Whether this step's mixing waits (the label is a player-first action, within the run's cap)."""
        if not self.player_first_labels or int(label["action"]) not in self.player_first_labels:
            self._player_first_run = 0
            return False
        self._player_first_run += 1
        return self._player_first_run <= self.player_first_steps

    def step(self, action: int | np.ndarray) -> tuple[Mapping[str, np.ndarray], float, bool, bool, dict]:
        label = self.expert.act(self.env, self._observation)
        self._labels.append(label)
        self._observations.append(self._observation)
        self.steps += 1
        if self._player_goes_first(label):
            self.player_first_taken += 1
        elif self.beta and self._mix_rng.random() < self.beta:
            action, self.expert_steps = self.to_env(label), self.expert_steps + 1
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._rewards.append(float(reward))
        self._terminated = bool(terminated)
        self._observation = observation
        return observation, reward, terminated, truncated, info

    def close(self) -> None:
        self._flush()
        super().close()


class ActionErrors:
    """Replaces the expert's discrete action, with probability `rate` per step, by a uniformly random *other*
    action: an imitator that disagrees with the expert on that share of steps, at random steps.

    `make eval` plays the expert through this at a model's held-out error rate (1 - held-out action
    accuracy). Beside the model's own score it says whether the model's errors cost more than random
    errors would: a model far below this reference errs where it matters (late reactions, misses).
    """

    def __init__(self, rate: float):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"An action error rate must be in [0, 1]; got {rate}.")
        self.rate = rate

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def __call__(self, env: gymnasium.Env, clean: Action) -> tuple[Action, bool]:
        """(action to execute, whether it is an error rather than the expert's action)."""
        if not isinstance(env.action_space, gymnasium.spaces.Discrete):
            raise ValueError(f"Action errors need discrete actions; {env.spec.id if env.spec else 'this env'} has "
                             f"{env.action_space} (an error rate of continuous actions is not defined).")
        n = env.action_space.n
        if n < 2 or self._rng.random() >= self.rate:
            return clean, False
        other = (int(clean["action"]) + int(self._rng.integers(1, n))) % n  # Uniform over the other n - 1.
        return {"action": np.int32(other)}, True
