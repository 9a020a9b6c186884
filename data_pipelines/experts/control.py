"""Scripted experts for the MuJoCo control tasks, reading only the observation (no simulator state).

Both are textbook controllers: a linear state-feedback law balances the inverted pendulum, and a
Jacobian-transpose PD law drives the reacher's fingertip to the target.
"""
from __future__ import annotations

from collections.abc import Mapping

import gymnasium
import numpy as np

from data_pipelines.experts.policy import Action

# u = -K @ [cart x, pole angle, cart velocity, pole angular velocity], hand-tuned (LQR-like) gains.
PENDULUM_GAINS = np.array([-1.0, -30.0, -1.5, -3.0], np.float64)

REACHER_LINKS = (0.1, 0.11)  # Upper arm and forearm-to-fingertip lengths (reacher.xml).


class InvertedPendulumExpert:
    """Linear state feedback: push the cart under the pole, and back towards the centre."""

    name = "pendulum_linear"

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        pass

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        bound = float(env.action_space.high[0])
        force = -PENDULUM_GAINS @ np.asarray(observation["state"], np.float64)
        return {"action": np.clip([force], -bound, bound).astype(np.float32)}


class ReacherExpert:
    """Jacobian-transpose PD: torques that pull the fingertip along the error, damped by joint speed."""

    name = "reacher_jacobian_pd"

    def __init__(self, kp: float = 12.0, kd: float = 0.03):  # Tuned: larger torques cost more than they gain.
        self.kp, self.kd = kp, kd

    def reset(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        pass

    def act(self, env: gymnasium.Env, observation: Mapping[str, np.ndarray]) -> Action:
        s = np.asarray(observation["state"], np.float64)
        cos, sin, qdot, tip_minus_target = s[0:2], s[2:4], s[6:8], s[8:10]
        q1, q12 = np.arctan2(sin[0], cos[0]), np.arctan2(sin[0], cos[0]) + np.arctan2(sin[1], cos[1])
        l1, l2 = REACHER_LINKS
        jacobian = np.array([[-l1 * np.sin(q1) - l2 * np.sin(q12), -l2 * np.sin(q12)],
                             [l1 * np.cos(q1) + l2 * np.cos(q12), l2 * np.cos(q12)]])
        torque = self.kp * jacobian.T @ (-tip_minus_target) - self.kd * qdot
        bound = env.action_space.high
        return {"action": np.clip(torque, -bound, bound).astype(np.float32)}
