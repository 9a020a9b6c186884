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

from collections.abc import Callable

from data_pipelines.experts import atari, control
from data_pipelines.experts.policy import (
    Action,
    ActionErrors,
    ActionNoise,
    ExpertLabels,
    ExpertShadow,
    Policy,
    RandomPolicy,
)

__all__ = ["Action", "ActionErrors", "ActionNoise", "ExpertLabels", "ExpertShadow", "Policy", "RandomPolicy",
           "expert_factories", "make_policy"]


def expert_factories() -> dict[str, Callable[[], Policy]]:
    """Task name -> expert constructor."""
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
