"""DAgger rounds inside `make train` (config.dagger; Ross, Gordon and Bagnell 2011).

Behaviour cloning on the expert's episodes leaves the model where its own errors take it with no
example of what to do there: `make eval` measured Breakout's model agreeing with its expert on 69% of
the expert's held-out steps but on 15% of its own (README "Results"). A round fixes the data, not the
model: at each step in `config.dagger.steps` training pauses (a checkpoint is written there anyway),
that checkpoint plays `config.dagger.episodes` episodes per task under the evaluation settings (sticky
actions, step cap, prompts from the expert's *training* episodes, sampling temperature; on a share
`config.dagger.beta` of steps, in `config.dagger.mixed_tasks`, the expert's action is executed instead:
DAgger's mixing), every state it
reaches is labelled with the expert's action (`data_pipelines.onpolicy`), and training resumes with
`config.dagger.share` of each such task's windows drawn from all rounds so far.

Rounds live in the run: WORKDIR/dagger/step_<N>/<task>/1.0.0. Everything is resumable: a killed round
is collected again from its checkpoint (seeded, so it is the same round), and a run killed later
rebuilds its stream with exactly the rounds before its checkpoint. Episodes are seeded apart from
`make eval`'s (which reset with seeds 0..episodes-1), so no evaluated episode is trained on.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from data_pipelines import episodes, experts, onpolicy, prepare, tasks
from gato_jax import cli, configs
from gato_jax.evaluate import checkpoint_task_hooks
from gato_jax.load import load_checkpoint
from gato_jax.rollout.checkpoint_eval import EvalSettings, TaskHooks, rollout_task
from gato_jax.tokenizers.vocab import VocabLayout

ROUNDS_DIR = "dagger"
# Round episodes reset with ROUND_SEED + 1000 * step + index (config.dagger.episodes < 1000, so rounds never
# share a seed) and `make eval`'s with config.seed + config.eval.seed_offset + index: apart while that sum
# stays under ROUND_SEED (cli caps the offset at 500,000).
ROUND_SEED = 1_000_000
_LOG = logging.getLogger(__name__)


def round_steps(config: ml_collections.ConfigDict) -> list[int]:
    """The training steps at which a round runs, ascending ([] when DAgger is off)."""
    dagger = config.get("dagger")
    return sorted(int(s) for s in dagger.steps) if dagger is not None else []


def round_tasks(config: ml_collections.ConfigDict) -> list[str]:
    """config.dagger.tasks, or every control task of the mixture that has an expert."""
    named = list(config.dagger.tasks)
    if named:
        return named
    return [n for n in prepare.control_tasks(config) if n in experts.expert_factories()]


def round_beta(config: ml_collections.ConfigDict, name: str) -> float:
    """The share of steps on which task `name`'s round executes the expert's action (config.dagger.beta in
    config.dagger.mixed_tasks, or in every round task when that is empty; else 0)."""
    mixed = list(config.dagger.get("mixed_tasks", ()))
    return float(config.dagger.get("beta", 0.0)) if not mixed or name in mixed else 0.0


def round_model_first(config: ml_collections.ConfigDict, name: str) -> tuple[tuple[int, ...], int]:
    """(labels, steps): where task `name`'s round mixing waits for the model (config.dagger.model_first_*);
    ((), 0) when it never does."""
    labels = tuple(int(a) for a in config.dagger.get("model_first_labels", {}).get(name, ()))
    steps = int(config.dagger.get("model_first_steps", 0))
    return (labels, steps) if labels and steps else ((), 0)


def check(config: ml_collections.ConfigDict, process_count: int) -> None:
    """UsageError for rounds that cannot run: a task outside the mixture or without an expert, or several
    processes (a round is one process's rollout)."""
    if not round_steps(config):
        return
    controls = prepare.control_tasks(config)
    for field in ("tasks", "mixed_tasks"):
        bad = [n for n in config.dagger.get(field, ()) if n not in controls or n not in experts.expert_factories()]
        if bad:
            raise cli.UsageError(f"config.dagger.{field} names {bad}, not control tasks of the mixture with an "
                                 f"expert ({[n for n in controls if n in experts.expert_factories()]}); drop them.")
    _check_model_first_labels(config, controls)
    if int(config.dagger.get("model_first_steps", 0)) < 0:
        raise cli.UsageError(f"config.dagger.model_first_steps={config.dagger.model_first_steps} counts steps; "
                             "set it to 0 (the mixing never waits) or more.")
    if not round_tasks(config):
        raise cli.UsageError("config.dagger.steps is set but the mixture has no control task with an expert; "
                             "set --config.dagger.steps='()'.")
    if float(config.dagger.share) == 0.0:
        raise cli.UsageError("config.dagger.share=0 draws nothing from the rounds it collects; set "
                             "--config.dagger.share above 0, or --config.dagger.steps='()' to skip the rounds.")
    if process_count > 1:
        raise cli.UsageError(f"DAgger rounds run in one process and this run has {process_count}; "
                             "set --config.dagger.steps='()' for a multi-process run.")


def _check_model_first_labels(config: ml_collections.ConfigDict, controls: Sequence[str]) -> None:
    """Discrete-action (Atari) control tasks only, each label one of the game's actions: a label outside
    the action set would never match, and the wait would silently never happen. A task outside
    config.dagger.tasks just goes unused."""
    waits = config.dagger.get("model_first_labels", {})
    atari = [n for n in controls if n in tasks.TASKS and tasks.TASKS[n].kind == "atari"]
    bad = [n for n in waits if n not in atari]
    if bad:
        raise cli.UsageError(f"config.dagger.model_first_labels names {bad}, not Atari tasks of the mixture "
                             f"({atari}); drop them.")
    for name, labels in waits.items():
        actions = tasks.get_task(name).action_meanings
        if isinstance(labels, (str, int, float)):
            raise cli.UsageError(f"config.dagger.model_first_labels.{name} is {labels!r}, not a tuple of action "
                                 f"indices; write it as ({labels!r},).")
        named = [a for a in labels if not _is_whole(a)]
        if named:
            raise cli.UsageError(f"config.dagger.model_first_labels.{name} has {named}, not action indices; use "
                                 f"indices of 0..{len(actions) - 1} ({', '.join(actions)}).")
        outside = [int(a) for a in labels if not 0 <= int(a) < len(actions)]
        if outside:
            raise cli.UsageError(f"config.dagger.model_first_labels.{name} has {outside}, not actions of the "
                                 f"game (0..{len(actions) - 1}: {', '.join(actions)}); use action indices.")


def _is_whole(value: object) -> bool:
    """An int (not a bool), a whole float, or a string of digits ("1" from a command-line override): what
    int() reads as an action index."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return value.strip().isdigit()
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def round_root(workdir: str | os.PathLike, step: int) -> Path:
    """Where the round collected at `step` lives in the run."""
    return Path(workdir) / ROUNDS_DIR / f"step_{step}"


def check_resumed_rounds(config: ml_collections.ConfigDict, trained_on: Sequence[str], step: int) -> None:
    """UsageError when the checkpoint at `step` trained on other rounds than this config puts before it
    (config.dagger.steps changed between runs): resuming would silently change the run's data."""
    had = sorted(Path(p).name for p in trained_on)
    wanted = sorted(round_root("", s).name for s in round_steps(config) if s < step)
    if had != wanted:
        raise cli.UsageError(f"The checkpoint at step {step} trained on DAgger rounds {had or 'none'}, but "
                             f"config.dagger.steps={tuple(round_steps(config))} puts {wanted or 'none'} before it; "
                             "resume with the config.dagger.steps it was trained with, or use a fresh --workdir.")


def rounds_before(config: ml_collections.ConfigDict, workdir: str | os.PathLike, step: int) -> list[Path]:
    """The round folders training after `step` reads (every round at or before it)."""
    return [round_root(workdir, s) for s in round_steps(config) if s <= step]


def next_stop(config: ml_collections.ConfigDict, step: int) -> int:
    """Where training from `step` pauses next: the next round, else the end."""
    return min([s for s in round_steps(config) if s > step] + [int(config.num_train_steps)])


def collect_due(config: ml_collections.ConfigDict, workdir: str, step: int, dirs: Mapping[str, Path],
                progress: bool = True) -> None:
    """Collects every round at or before `step` that is not complete (a fresh run: none; a resumed one: a
    round killed midway). A finished round collected with another beta than this config gives its task is
    refused: reusing it would silently change the run's data."""
    for s in round_steps(config):
        check_round_mixing(config, round_root(workdir, s))
        if s <= step and any(not onpolicy.has_round(round_root(workdir, s), n) for n in round_tasks(config)):
            collect_round(config, workdir, s, dirs, progress)


def check_round_mixing(config: ml_collections.ConfigDict, root: Path) -> None:
    """UsageError when a finished round in `root` was collected with another mixing (beta, or where the
    model goes first) than config gives it."""
    for name in round_tasks(config):
        if onpolicy.has_round(root, name):
            meta = episodes.load_metadata(root, name)
            had_first = (tuple(meta.get("model_first_labels", ())), int(meta.get("model_first_steps", 0)))
            if had_first != round_model_first(config, name):
                raise cli.UsageError(f"The DAgger round {root / name} was collected with model_first labels and "
                                     f"steps {had_first}, but this config gives {name} "
                                     f"{round_model_first(config, name)}; resume with the config.dagger."
                                     "model_first_labels and model_first_steps it was collected with, or use a "
                                     "fresh --workdir.")
            had = float(meta.get("beta", 0.0))
            if had != round_beta(config, name):
                raise cli.UsageError(f"The DAgger round {root / name} was collected with beta {had}, but this "
                                     f"config gives {name} beta {round_beta(config, name)}; resume with the "
                                     "config.dagger.beta and mixed_tasks it was collected with, or use a fresh "
                                     "--workdir.")


def round_settings(config: ml_collections.ConfigDict, step: int) -> EvalSettings:
    """The evaluation settings with the round's episode count and seeds."""
    return EvalSettings.from_config(config)._replace(
        episodes=int(config.dagger.episodes), seed=ROUND_SEED + 1000 * step, matched_error_episodes=0)


def labelled_hooks(hooks: TaskHooks, wrap: Callable[[Any], Any]) -> TaskHooks:
    """`hooks` whose environments are passed through `wrap` (the expert labelling every state)."""
    return hooks._replace(make_env=lambda *args, **kwargs: wrap(hooks.make_env(*args, **kwargs)), shadow_expert=None)


def collect_round(config: ml_collections.ConfigDict, workdir: str, step: int, dirs: Mapping[str, Path],
                  progress: bool = True) -> Path:
    """Plays the checkpoint of `step` on each round task still missing there; returns the round's folder."""
    root = round_root(workdir, step)
    loaded = load_checkpoint(workdir, step, expected_layout=VocabLayout.from_config(config))
    hooks = checkpoint_task_hooks(dirs, loaded.config)
    settings = round_settings(config, step)
    for index, name in enumerate(round_tasks(config)):
        if onpolicy.has_round(root, name):
            continue
        demos = episodes.load_episodes(dirs[name], name, "train")
        key = jax.random.fold_in(jax.random.key(ROUND_SEED + configs.train_seed(config)), step * 100 + index)

        def play(wrap, name=name, demos=demos, key=key) -> dict[str, Any]:
            result = rollout_task(loaded, name, settings, labelled_hooks(hooks, wrap), key, progress=progress,
                                  demos=demos)
            returns = [e.ret for e in result.episodes]
            # With beta > 0 the expert executed a share of the steps: these are the mixed policy's returns.
            beta = round_beta(config, name)
            played_by = "the model" if beta == 0 else f"the model, the expert's action executed with probability {beta}"
            return {"played_returns": returns, "played_return": float(np.mean(returns)), "played_by": played_by,
                    "rollout_seconds": round(result.seconds, 1)}

        where = onpolicy.record_round(name, root, loaded.task_specs[name], play,
                                      {"round_step": step, "checkpoint": str(workdir), "settings": settings._asdict()},
                                      beta=round_beta(config, name), model_first=round_model_first(config, name))
        meta = episodes.load_metadata(root, name)
        _LOG.info("DAgger round at step %d: %s, %d episodes (%d steps, the expert's action executed on %.2f, the "
                  "model first on %.3f), return %.1f (played by %s), in %s", step, name, meta["splits"]["train"],
                  meta["steps"]["train"], meta["expert_executed_share"], meta.get("model_first_share", 0.0),
                  meta["played_return"], meta["played_by"], where)
    return root
