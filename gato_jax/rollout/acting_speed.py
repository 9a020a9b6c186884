"""Acting throughput, for benchmarks: tokens/s and env steps/s with the agent in the loop, and the
raw speed of the vector environment under random actions (the ceiling the agent is measured against).
"""
from __future__ import annotations

import itertools
import time
from typing import Any, NamedTuple

import jax

from gato_jax.load import Loaded
from gato_jax.rollout.checkpoint_eval import TaskHooks, make_agent
from gato_jax.rollout.envs import EnvBatch, acting_steps

ENDLESS = 1 << 30  # Episodes: the timed loop stops by step count, never by running out.


class ActingSpeed(NamedTuple):
    tokens_per_s: float  # Tokens decoded (observation + action tokens of every row) per second.
    agent_env_steps_per_s: float  # Environment steps per second with the agent choosing every action.
    raw_env_steps_per_s: float  # Vector-env steps per second under random actions (no model).
    num_envs: int
    compile_s: float  # First act step (trace + compile), excluded from the rates.


def _agent_rates(agent, envs: EnvBatch, steps: int, key: jax.Array) -> tuple[float, float, float]:
    """(tokens/s, env steps/s, compile seconds) over `steps` steps of the evaluation's rollout loop
    (`envs.acting_steps`), after one warm-up step that compiles."""
    loop = acting_steps(agent, envs, key)
    start = time.perf_counter()
    next(loop)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    infos = list(itertools.islice(loop, steps))
    seconds = time.perf_counter() - start
    return sum(i.tokens for i in infos) / seconds, sum(i.env_steps for i in infos) / seconds, compile_s


def raw_env_rate(make_vector_env, num_envs: int, steps: int, seed: int) -> float:
    """Env steps/s of the vector env with random actions."""
    envs = make_vector_env(num_envs, seed)
    try:
        envs.reset(seed=seed)
        envs.action_space.seed(seed)
        start = time.perf_counter()
        for _ in range(steps):
            envs.step(envs.action_space.sample())
        return steps * num_envs / (time.perf_counter() - start)
    finally:
        envs.close()


def _vector_env_factory(name: str, hooks: TaskHooks, sticky_actions: float, max_steps: int):
    """The task's own vector env when data_pipelines.tasks has one, else gymnasium's SyncVectorEnv."""
    if hooks.make_vector_env is not None:
        return lambda n, seed: hooks.make_vector_env(name, n, sticky_actions=sticky_actions, max_steps=max_steps,
                                                     seed=seed)
    import gymnasium

    def make(n: int, seed: int) -> Any:
        fns = [lambda i=i: hooks.make_env(name, sticky_actions=sticky_actions, max_steps=max_steps, seed=seed + i)
               for i in range(n)]
        return gymnasium.vector.SyncVectorEnv(fns)

    return make


def measure_acting(loaded: Loaded, task: str, hooks: TaskHooks, *, num_envs: int = 8, steps: int = 100,
                   sticky_actions: float = 0.25, max_steps: int = 100_000, temperature: float = 1.0,
                   seed: int = 0) -> ActingSpeed:
    """Batched acting speed of `loaded`'s model on `task` (no prompt: a prompt only adds a one-off prefill);
    environments come from `hooks` (`gato_jax.evaluate.task_hooks` for the real ones)."""
    agent = make_agent(loaded, task, num_envs, temperature)
    make = lambda s: hooks.make_env(task, sticky_actions=sticky_actions, max_steps=max_steps, seed=s)
    envs = EnvBatch(make, lambda a: hooks.action_to_env(task, a), agent.spec, num_envs=num_envs,
                    num_episodes=ENDLESS, max_steps=max_steps, seed=seed)
    try:
        tokens_per_s, agent_steps_per_s, compile_s = _agent_rates(agent, envs, steps, jax.random.key(seed))
    finally:
        envs.close()
    raw = raw_env_rate(_vector_env_factory(task, hooks, sticky_actions, max_steps), num_envs,
                       max(steps, 200), seed)
    return ActingSpeed(float(tokens_per_s), float(agent_steps_per_s), float(raw), num_envs, float(compile_s))


__all__ = ["ActingSpeed", "measure_acting", "raw_env_rate"]
