"""The model's own episodes labelled by the expert (DAgger rounds), stored as task datasets.

Behaviour cloning sees the expert's states only; `make eval`'s on-policy agreement shows the model then
drifts into states where nobody showed it what to do (README "Results"). A DAgger round (Ross et al. 2011)
plays the model being trained and keeps every state it reaches with the *expert's* action for that state
as the label (`experts.ExpertLabels`); training on those rounds beside the expert's episodes teaches the
model what to do where its own errors take it.

The rollout itself needs the model, so the entry point runs it (`gato_jax.dagger`); this module is the
data side. A round of one task is written exactly as `episodes` writes an expert dataset (TFDS,
ArrayRecord, RLDS steps), at `<round dir>/<task>/1.0.0`, with a train split only: held-out figures stay
on the expert's test split. Each dataset is built in a temporary folder and renamed into place, so a
killed round leaves no half dataset and a rerun collects only the tasks still missing.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from data_pipelines import episodes, experts, published, tasks
from gato_jax.tokenizers.spec import TaskSpec

POLICY = "model, expert labels"  # Every round episode's `policy` in its metadata.
WrapEnv = Callable[[gymnasium.Env], gymnasium.Env]


class EpisodeSink:
    """`ExpertLabels`'s `on_episode`: saves each finished episode's steps (.npz) in `scratch`, as `episodes.play`
    saves a recorded one, and keeps its summary for the dataset writer."""

    def __init__(self, scratch: Path):
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.episodes: list[dict[str, Any]] = []

    def __call__(self, observations: Sequence[Mapping], labels: Sequence[Mapping], rewards: Sequence[float],
                 terminated: bool) -> None:
        index = len(self.episodes)
        steps = episodes.stack_steps(list(observations), list(labels), list(rewards), terminated, keep=True)
        path = self.scratch / f"{index}.npz"
        episodes.save_steps(path, steps)
        self.episodes.append({"path": str(path), "return": float(np.sum(rewards)), "length": len(rewards),
                              "terminated": bool(terminated), "policy": POLICY, "episode_id": index})


def has_round(root: str | os.PathLike, name: str) -> bool:
    """Whether `root` holds a finished round dataset of task `name`."""
    return (episodes.dataset_dir(root, name) / "dataset_info.json").exists()


def record_round(name: str, root: str | os.PathLike, spec: TaskSpec, play: Callable[[WrapEnv], Mapping[str, Any]],
                 metadata: Mapping[str, Any], beta: float = 0.0,
                 model_first: tuple[Sequence[int], int] = ((), 0)) -> Path:
    """Runs `play(wrap)` (the entry point's rollout of the model, every env it makes passed through `wrap`)
    with the task's expert labelling every step, and writes the episodes as `<root>/<name>/1.0.0`.

    On a share `beta` of steps the expert's action is executed instead of the model's (`ExpertLabels`);
    the metadata records beta and the share of steps that did. `model_first` (labels, steps): where the
    expert's label is one of these actions the mixing waits, up to that many steps in a row (the model
    acts alone there); the metadata records both and the share of such steps. `play` returns a summary (returns,
    settings) that joins `metadata` in the dataset's metadata.json.
    """
    if name not in experts.expert_factories():
        raise ValueError(f"Task {name!r} has no expert to label its states; drop it from config.dagger.tasks.")
    first_labels, first_steps = tuple(int(a) for a in model_first[0]), int(model_first[1])
    final = episodes.dataset_dir(root, name)
    with published.atomic_directory(final, replace=True) as tmp:
        sink = EpisodeSink(tmp / "_episodes")
        seeds = itertools.count()
        wrapped: list[experts.ExpertLabels] = []

        def wrap(env: gymnasium.Env) -> gymnasium.Env:
            wrapped.append(experts.ExpertLabels(env, experts.make_policy(name), sink, seed=next(seeds), beta=beta,
                                                to_env=lambda label: tasks.action_to_env(name, label),
                                                player_first_labels=first_labels, player_first_steps=first_steps))
            return wrapped[-1]

        summary = dict(play(wrap))
        if not sink.episodes:
            raise ValueError(f"The DAgger round of {name!r} finished no episode; raise config.dagger.episodes.")
        lengths = [ep["length"] for ep in sink.episodes]
        info = {**metadata, **summary, "task": name, "task_spec": spec.to_json(), "policies": {"recorded": POLICY},
                "labels": "the expert's action for the state the model reached (DAgger)", "beta": beta,
                "expert_executed_share": sum(w.expert_steps for w in wrapped) / max(1, sum(w.steps for w in wrapped)),
                "model_first_labels": list(first_labels), "model_first_steps": first_steps,
                "model_first_share": sum(w.player_first_taken for w in wrapped) / max(1, sum(w.steps for w in wrapped)),
                "splits": {"train": len(sink.episodes)}, "steps": {"train": int(sum(lengths))},
                "returns": [ep["return"] for ep in sink.episodes]}
        episodes.write_dataset(spec, tmp, {"train": sink.episodes}, info, progress=False,
                               description=f"The model's own states in {name}, labelled by its expert (DAgger).")
    return final
