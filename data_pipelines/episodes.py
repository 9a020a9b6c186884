"""Expert demonstrations as TFDS datasets (RLDS layout, ArrayRecord files, no TensorFlow).

One dataset per task at `data_dir/<task>/1.0.0/` (TFDS's own layout, so `tfds.builder_from_directory`
and grain read it). Each record is one episode:
  episode_metadata: {task, return, length, policy, episode_id}
  steps: {observation: {field: [N, ...]}, action: {field: [N, ...]}, reward [N], is_first [N],
          is_last [N], is_terminal [N]}
Step t holds observation o_t, the action a_t taken on it and the reward r_t that followed; the last
step has is_last, and is_terminal too when the game ended (not the step cap). There is no extra final
observation without an action (Gato tokenizes observation-action pairs). `steps` is a TFDS Sequence,
not an RLDS Dataset feature: the same nesting, but it decodes straight to stacked numpy arrays, and
frames are stored as raw bytes (ArrayRecord compresses them; ~100 bytes per 80x80 frame).

`metadata.json` beside the records (TFDS metadata) holds the task spec JSON, the settings, the expert
and random mean returns under *evaluation* settings (sticky actions 0.25, the same step cap), the
published random/human scores (Atari), the filter's outcome and the generation time.

Filtering [P, D]: Gato keeps episodes whose return is >= 80% of the expert's. Returns can be negative
(Pong), so the fraction is taken of the expert-normalised score instead:
  (return - random_return) / (recorded_mean - random_return) >= min_return_fraction,
with recorded_mean the mean return of the recorded expert episodes (recording settings) and
random_return the random policy's mean (evaluation settings). If the expert does not beat random,
nothing is filtered (and the metadata says so).
"""
from __future__ import annotations

import collections.abc
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from data_pipelines import experts, published, tasks
from gato_jax.errors import DataError
from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec

DATASET_VERSION = "1.0.0"  # TFDS version directory: data_dir/<task>/1.0.0.
FORMAT = 2  # Bumped when the stored layout, the frames or the experts change, so old datasets are rebuilt.
MAKE_DATA = "make data EXP=<name>"  # The command that builds every dataset an experiment names.
NOOP_MAX = 30  # Recording starts after 0..NOOP_MAX unrecorded no-ops (Atari), a source of variety.
_LOG = logging.getLogger(__name__)
EVAL_EPISODES = 30  # Episodes per policy for the expert/random mean returns.


@dataclasses.dataclass(frozen=True)
class RecordingNoise:
    """Noise in the executed actions while recording (`experts.ActionNoise`); labels stay clean.

    It is also the variety of the recordings: without sticky actions Atari is deterministic.
    """

    prob: float = 0.0  # Discrete: chance per step that a random action burst starts.
    hold: int = 1  # Discrete: a burst lasts 1..hold steps.
    std: float = 0.0  # Continuous: Gaussian std as a fraction of the action bound.

    def make(self) -> experts.ActionNoise:
        return experts.ActionNoise(self.prob, self.hold, self.std)


class CorruptRecordError(ValueError):
    """A dataset record that cannot be decoded; the message names the file and the record."""


def dataset_dir(data_dir: str | os.PathLike, name: str) -> Path:
    return Path(data_dir) / name / DATASET_VERSION


# ---------------------------------------------------------------------------------------------------------
# Playing episodes.


@dataclasses.dataclass(frozen=True)
class Job:
    """One episode to play: who plays, under which settings, and whether to keep its steps."""

    task: str
    policy: str  # "expert" or "random".
    seed: int
    max_steps: int
    frame_size: int
    sticky_actions: float
    noise: RecordingNoise = RecordingNoise()
    noop_max: int = 0
    out_path: str | None = None  # Where to save the steps (.npz); None = only the return is needed.
    frame_filter: str = "area"  # Atari frame resize filter (tasks.FRAME_FILTERS).
    error_rate: float = 0.0  # > 0: execute a random other action on this share of steps (`ActionErrors`).


def _seed(seed: int, task: str, role: int, index: int) -> int:
    """Independent per-episode seeds from (config seed, task, role, episode index)."""
    task_id = tasks.task_names().index(task)
    return int(np.random.SeedSequence([seed, task_id, role, index]).generate_state(1)[0])


def play(job: Job) -> dict[str, Any]:
    """Plays one episode; saves its steps to job.out_path if set. Returns its summary."""
    env = tasks.make_env(job.task, sticky_actions=job.sticky_actions, max_steps=job.max_steps,
                         seed=job.seed, frame_size=job.frame_size, frame_filter=job.frame_filter)
    policy = experts.make_policy(job.task, job.policy)
    rng = np.random.default_rng(job.seed)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        noise = experts.ActionErrors(job.error_rate) if job.error_rate else job.noise.make()
        steps, terminated, noisy = _rollout(env, job.task, policy, noise, rng, job.noop_max,
                                            keep=job.out_path is not None)
    finally:
        env.close()
    summary = {"return": float(np.sum(steps["reward"])), "length": len(steps["reward"]),
               "terminated": terminated, "policy": policy.name, "noise_steps": noisy,
               "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    if job.out_path is not None:
        save_steps(job.out_path, steps)
        summary["path"] = job.out_path
    return summary


def _rollout(env, name: str, policy: experts.Policy, noise: experts.ActionNoise | experts.ActionErrors,
             rng: np.random.Generator, noop_max: int, keep: bool) -> tuple[dict, bool, int]:
    """Runs to the end of an episode: (stacked steps (observations only if keep), terminated, noisy steps).

    The stored action of every step is the policy's own choice for the observation it saw (the label);
    what the env executes may be `noise`'s replacement (DART: the data visit the states a cloned
    policy drifts into, and the labels there still say what the expert would do).
    """
    observation, _ = env.reset()
    for _ in range(int(rng.integers(noop_max + 1)) if noop_max else 0):
        observation, *_ = env.step(0)  # Action 0 is NOOP in every minimal Atari action set.
    policy.reset(env, rng)
    noise.reset(rng)
    observations, actions, rewards, terminated, noisy = [], [], [], False, 0
    while True:
        label = policy.act(env, observation)
        executed, is_noise = noise(env, label)
        noisy += is_noise
        if keep:
            observations.append(observation)
            actions.append(label)
        observation, reward, terminated, truncated, _ = env.step(tasks.action_to_env(name, executed))
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return stack_steps(observations, actions, rewards, terminated, keep), bool(terminated), noisy


def stack_steps(observations: list, actions: list, rewards: list, terminated: bool, keep: bool) -> dict:
    """One episode's steps in the stored layout: fields stacked over steps, is_first/is_last/is_terminal set."""
    n = len(rewards)
    steps = {"reward": np.asarray(rewards, np.float32)}
    if keep:
        stack = lambda dicts: {k: np.stack([d[k] for d in dicts]) for k in dicts[0]}
        flags = np.zeros(n, bool)
        steps.update(observation=stack(observations), action=stack(actions),
                     is_first=flags.copy(), is_last=flags.copy(), is_terminal=flags.copy())
        steps["is_first"][0] = steps["is_last"][-1] = True
        steps["is_terminal"][-1] = terminated
    return steps


def save_steps(path: str | os.PathLike, steps: Mapping) -> None:
    """An episode's steps as the .npz scratch file a dataset is written from (frames compress ~50x)."""
    np.savez_compressed(path, **_flatten(steps))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def run_jobs(jobs: list[Job], workers: int | None = None, progress: bool = False,
             desc: str = "") -> list[dict]:
    """Plays jobs, in worker processes when workers > 1 (spawned: the caller may have started JAX)."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(jobs) <= 1:
        return [play(j) for j in _progress(jobs, progress, desc)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(play, j) for j in jobs]
        for _ in _progress(concurrent.futures.as_completed(futures), progress, desc, total=len(jobs)):
            pass
        return [f.result() for f in futures]


def _progress(items, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return items
    import tqdm

    return tqdm.tqdm(items, desc=desc, total=total, leave=False)


# ---------------------------------------------------------------------------------------------------------
# Scores and filtering.


def evaluate(name: str, policy: str, *, episodes: int = EVAL_EPISODES, max_steps: int, seed: int = 0,
             sticky_actions: float = tasks.EVAL_STICKY_ACTIONS, frame_size: int = 80,
             frame_filter: str = "area", error_rate: float = 0.0, workers: int | None = 1) -> list[float]:
    """Returns of `episodes` episodes of the expert or random policy under evaluation settings; with
    `error_rate` > 0 that share of the executed actions are random other ones (`experts.ActionErrors`)."""
    role = {"expert": 1, "random": 2}[policy]
    jobs = [Job(name, policy, _seed(seed, name, role, i), max_steps, frame_size, sticky_actions,
                frame_filter=frame_filter, error_rate=error_rate) for i in range(episodes)]
    return [r["return"] for r in run_jobs(jobs, workers)]


def normalised_scores(returns: np.ndarray, expert: float, random: float) -> np.ndarray:
    """(return - random) / (expert - random): 1 = expert, 0 = random (docs/TOKEN_FORMAT.md)."""
    return (np.asarray(returns, np.float64) - random) / (expert - random)


def keep_mask(returns: list[float], random_return: float, min_fraction: float) -> tuple[np.ndarray, bool]:
    """Which episodes pass the filter (module docstring), and whether a filter applied at all."""
    returns = np.asarray(returns, np.float64)
    expert = float(returns.mean()) if len(returns) else 0.0
    if expert - random_return <= 1e-9:
        return np.ones(len(returns), bool), False
    return normalised_scores(returns, expert, random_return) >= min_fraction - 1e-9, True


# ---------------------------------------------------------------------------------------------------------
# The TFDS builder.


def _field_feature(field: FieldSpec):
    import tensorflow_datasets as tfds

    dtype = {FieldKind.IMAGE: np.uint8, FieldKind.DISCRETE: np.int32, FieldKind.CONTINUOUS: np.float32}[field.kind]
    if field.shape == ():
        return tfds.features.Scalar(dtype)
    return tfds.features.Tensor(shape=field.shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)


def features(spec: TaskSpec):
    """The RLDS-layout FeaturesDict of a task (see the module docstring)."""
    import tensorflow_datasets as tfds

    step = {
        "observation": {f.name: _field_feature(f) for f in spec.observation},
        "action": {f.name: _field_feature(f) for f in spec.action},
        "reward": tfds.features.Scalar(np.float32),
        "is_first": tfds.features.Scalar(np.bool_),
        "is_last": tfds.features.Scalar(np.bool_),
        "is_terminal": tfds.features.Scalar(np.bool_),
    }
    metadata = {"task": tfds.features.Text(), "return": tfds.features.Scalar(np.float32),
                "length": tfds.features.Scalar(np.int32), "policy": tfds.features.Text(),
                "episode_id": tfds.features.Scalar(np.int32)}
    return tfds.features.FeaturesDict({"steps": tfds.features.Sequence(step), "episode_metadata": metadata})


def make_builder(spec: TaskSpec, data_dir: str | os.PathLike, splits: Mapping[str, list[dict]],
                 metadata: Mapping[str, Any], description: str = ""):
    """A GeneratorBasedBuilder named after the task that writes the given recorded episodes.

    splits: split name -> episode summaries from `play` (with 'path' to the saved steps).
    """
    import tensorflow_datasets as tfds

    class EpisodeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Expert demonstrations of one control task."""

        name = spec.name
        code_path = None  # No checksums file; also skips a lookup that needs the importlib_resources backport.
        VERSION = tfds.core.Version(DATASET_VERSION)
        RELEASE_NOTES: ClassVar[dict[str, str]] = {
            DATASET_VERSION: "Scripted-expert demonstrations (data_pipelines.experts)."}

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features(spec),
                                         metadata=tfds.core.MetadataDict(metadata),
                                         description=description or f"Expert demonstrations of {spec.name}.")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(eps) for split, eps in splits.items() if eps}

        def _generate_examples(self, episodes: list[dict]):
            for ep in episodes:
                yield str(ep["episode_id"]), _example(spec.name, ep)

    return EpisodeBuilder(data_dir=str(data_dir), file_format="array_record")


def _example(task: str, episode: Mapping[str, Any]) -> dict:
    with np.load(episode["path"]) as saved:
        steps = _unflatten(dict(saved))
    meta = {"task": task, "return": episode["return"], "length": episode["length"],
            "policy": episode["policy"], "episode_id": episode["episode_id"]}
    return {"steps": steps, "episode_metadata": meta}


# ---------------------------------------------------------------------------------------------------------
# Preparing a task.


def settings(name: str, *, episodes: int, max_steps: int, frame_size: int, seed: int,
             min_return_fraction: float, eval_episodes: int = EVAL_EPISODES,
             patch_size: int = 16, noise: RecordingNoise = RecordingNoise(),
             frame_filter: str = "area") -> dict[str, Any]:
    """Everything that determines a dataset; a dataset with equal settings is not rebuilt.

    `frame_filter` enters only where it changes the data (an Atari task, a filter other than "area", the
    only one before the option existed), so datasets recorded before it keep their settings and folders.
    """
    out = {"task": name, "episodes": int(episodes), "max_steps": int(max_steps),
           "frame_size": int(frame_size), "patch_size": int(patch_size), "seed": int(seed),
           "min_return_fraction": float(min_return_fraction), "eval_episodes": int(eval_episodes),
           "noise": dataclasses.asdict(noise), "format": FORMAT}
    if frame_filter != "area" and tasks.get_task(name).kind == "atari":
        out["frame_filter"] = str(frame_filter)
    return out


def prepare_task(name: str, data_dir: str | os.PathLike, *, episodes: int, max_steps: int,
                 frame_size: int = 80, seed: int = 0, min_return_fraction: float = 0.8,
                 progress: bool = True, workers: int | None = None,
                 eval_episodes: int = EVAL_EPISODES, patch_size: int = 16,
                 noise: RecordingNoise = RecordingNoise(), frame_filter: str = "area") -> Path:
    """Records, scores, filters and writes one task's dataset; returns its directory.

    Idempotent: when the dataset exists with the same settings this does nothing. The dataset is
    built in a temporary folder and renamed into place, so a killed run leaves no half dataset.
    """
    wanted = settings(name, episodes=episodes, max_steps=max_steps, frame_size=frame_size, seed=seed,
                      min_return_fraction=min_return_fraction, eval_episodes=eval_episodes,
                      patch_size=patch_size, noise=noise, frame_filter=frame_filter)
    final = dataset_dir(data_dir, name)
    if _existing_settings(final) == wanted:
        return final
    if episodes < 1 or eval_episodes < 1:
        raise ValueError(f"Task {name!r} needs episodes >= 1 and eval_episodes >= 1, got "
                         f"{episodes} and {eval_episodes}.")
    start = time.perf_counter()
    with published.atomic_directory(final, replace=True) as tmp:
        spec = tasks.task_spec(name, frame_size=frame_size, patch_size=patch_size)
        recorded, scores = _record_and_score(name, tmp / "_episodes", wanted, noise, progress, workers)
        splits, filter_info = _filter_and_split(recorded, scores["random_return"], min_return_fraction)
        metadata = _metadata(name, spec, wanted, recorded, scores, filter_info, splits,
                             time.perf_counter() - start)
        write_dataset(spec, tmp, splits, metadata, progress)
    _LOG.info("Task %s: %d train / %d test episodes in %s (%.0f s).", name, len(splits["train"]),
                 len(splits["test"]), final, time.perf_counter() - start)
    return final


def _existing_settings(path: Path) -> dict | None:
    try:
        return json.loads((path / "metadata.json").read_text()).get("settings")
    except (OSError, ValueError):
        return None


def _record_and_score(name: str, episode_dir: Path, wanted: Mapping, noise: RecordingNoise, progress: bool,
                      workers: int | None) -> tuple[list[dict], dict]:
    """Plays the recorded expert episodes and the scoring episodes, all in one worker pool."""
    episode_dir.mkdir(parents=True)
    kind = tasks.get_task(name).kind
    seed, cap, size = wanted["seed"], wanted["max_steps"], wanted["frame_size"]
    frame_filter = wanted.get("frame_filter", "area")
    record = [Job(name, "expert", _seed(seed, name, 0, i), cap, size, tasks.RECORD_STICKY_ACTIONS,
                  noise, NOOP_MAX if kind == "atari" else 0, str(episode_dir / f"{i}.npz"), frame_filter)
              for i in range(wanted["episodes"])]
    score = [Job(name, policy, _seed(seed, name, role, i), cap, size, tasks.EVAL_STICKY_ACTIONS,
                 frame_filter=frame_filter)
             for role, policy in ((1, "expert"), (2, "random")) for i in range(wanted["eval_episodes"])]
    n_eval, n_rec = wanted["eval_episodes"], len(record)
    # Slow expert scoring first, cheap random episodes last: the pool stays busy to the end.
    results = run_jobs(score[:n_eval] + record + score[n_eval:], workers, progress, desc=name)
    expert_eval, recorded, random_eval = results[:n_eval], results[n_eval:n_eval + n_rec], results[n_eval + n_rec:]
    for i, ep in enumerate(recorded):
        ep["episode_id"] = i
    returns = lambda rs: [r["return"] for r in rs]
    scores = {"expert_returns": returns(expert_eval), "random_returns": returns(random_eval),
              "expert_return": float(np.mean(returns(expert_eval))),
              "random_return": float(np.mean(returns(random_eval))),
              "expert_return_std": float(np.std(returns(expert_eval))),
              "random_return_std": float(np.std(returns(random_eval))),
              "noise_step_fraction": float(sum(r["noise_steps"] for r in recorded) /
                                           max(1, sum(r["length"] for r in recorded))),
              "expert_policy": expert_eval[0]["policy"], "recorded_policy": recorded[0]["policy"],
              "cpu_seconds_per_recorded_episode": float(np.mean([r["cpu_seconds"] for r in recorded])),
              "cpu_seconds_per_recorded_step": float(sum(r["cpu_seconds"] for r in recorded) /
                                                     max(1, sum(r["length"] for r in recorded))),
              "cpu_seconds_total": float(sum(r["cpu_seconds"] for r in results))}
    return recorded, scores


def _filter_and_split(recorded: list[dict], random_return: float,
                      min_fraction: float) -> tuple[dict[str, list[dict]], dict]:
    """Keeps episodes that pass the filter; the last tenth (at least one) of them is the test split."""
    returns = [ep["return"] for ep in recorded]
    mask, applied = keep_mask(returns, random_return, min_fraction)
    kept = [ep for ep, keep in zip(recorded, mask) if keep]
    n_test = max(1, len(kept) // 10) if len(kept) >= 2 else 0
    splits = {"train": kept[: len(kept) - n_test], "test": kept[len(kept) - n_test:]}
    info = {"rule": "(return - random_return) / (recorded_return_mean - random_return) >= min_return_fraction",
            "applied": applied, "recorded_return_mean": float(np.mean(returns)),
            "recorded_returns": returns, "kept": int(mask.sum()), "dropped": int((~mask).sum())}
    return splits, info


def _metadata(name: str, spec: TaskSpec, wanted: Mapping, recorded: list[dict], scores: Mapping,
              filter_info: Mapping, splits: Mapping[str, list], seconds: float) -> dict[str, Any]:
    task = tasks.get_task(name)
    kind = task.kind
    return {
        "task": name, "task_spec": spec.to_json(), "settings": dict(wanted),
        "expert_return": scores["expert_return"], "random_return": scores["random_return"],
        "expert_returns": scores["expert_returns"], "random_returns": scores["random_returns"],
        "expert_return_std": scores["expert_return_std"], "random_return_std": scores["random_return_std"],
        "reference_scores": tasks.reference_scores(name),
        "policies": {"expert": scores["expert_policy"], "recorded": scores["recorded_policy"],
                     "random": "random"},
        "action_meanings": list(task.action_meanings),
        "recording": {"sticky_actions": tasks.RECORD_STICKY_ACTIONS, "noise": wanted["noise"],
                      "noise_step_fraction": scores["noise_step_fraction"],
                      "labels": "the expert's action for the state reached, never the executed noise",
                      "noop_max": NOOP_MAX if kind == "atari" else 0},
        "evaluation": {"sticky_actions": tasks.EVAL_STICKY_ACTIONS, "episodes": wanted["eval_episodes"],
                       "max_steps": tasks.episode_limit(name, wanted["max_steps"])},
        "filter": dict(filter_info),
        "splits": {split: len(eps) for split, eps in splits.items()},
        "steps": {split: int(sum(ep["length"] for ep in eps)) for split, eps in splits.items()},
        # Wall time depends on the machine's load; CPU seconds (episodes, summed) measure the work.
        "generation_seconds": round(seconds, 1),
        "cpu_seconds_total": round(scores["cpu_seconds_total"], 1),
        "cpu_seconds_per_recorded_episode": round(scores["cpu_seconds_per_recorded_episode"], 3),
        "cpu_seconds_per_recorded_step": round(scores["cpu_seconds_per_recorded_step"], 6),
    }


def write_dataset(spec: TaskSpec, out: Path, splits: Mapping[str, list], metadata: Mapping,
                  progress: bool, description: str = "") -> None:
    """Writes the splits with TFDS into `out` (the future `<task>/1.0.0`), then drops the scratch."""
    from tensorflow_datasets.core.utils import tqdm_utils

    scratch = out / "_tfds"
    shown = getattr(tqdm_utils, "_active", True)
    tqdm_utils.display_progress_bar(progress)
    try:
        builder = make_builder(spec, scratch, splits, metadata, description)
        builder.download_and_prepare(download_dir=str(out / "_downloads"))
    finally:
        tqdm_utils.display_progress_bar(shown)
    for item in (scratch / spec.name / DATASET_VERSION).iterdir():
        item.rename(out / item.name)
    for tmp in ("_tfds", "_downloads", "_episodes"):
        shutil.rmtree(out / tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Loading.


def _missing(name: str, where: Path) -> FileNotFoundError:
    return DataError(f"No dataset for task {name!r} at {where}; build it with `{MAKE_DATA}` "
                             f"(the experiment whose config.data.mixture names {name!r}).")


def load_metadata(data_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """The dataset's metadata: expert/random returns, reference scores, spec JSON, settings, filter."""
    path = dataset_dir(data_dir, name) / "metadata.json"
    if not path.exists():
        raise _missing(name, path.parent)
    return json.loads(path.read_text())


def load_spec(data_dir: str | os.PathLike, name: str) -> TaskSpec:
    """The TaskSpec the dataset was recorded with."""
    return TaskSpec.from_json(load_metadata(data_dir, name)["task_spec"])


class Episodes(collections.abc.Sequence):
    """A split's episodes, decoded on access: {'steps': stacked numpy arrays, 'episode_metadata': ...}."""

    def __init__(self, source, files: list[str], shard_lengths: list[int], where: str):
        self._source, self._files, self._where = source, files, where
        self._bounds = np.cumsum([0] + list(shard_lengths))

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"Episode {index} out of range for {len(self)} episodes in {self._where}.")
        index %= len(self)
        try:
            return _to_numpy(self._source[index])
        except Exception as e:  # Any decoding failure means the record is damaged.
            raise CorruptRecordError(f"Cannot decode {self._locate(index)}: {type(e).__name__}: {e}. "
                                     f"Delete {self._where} and run `{MAKE_DATA}` to rebuild it.") from e

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def _locate(self, index: int) -> str:
        shard = int(np.searchsorted(self._bounds, index, side="right") - 1)
        shard = min(max(shard, 0), len(self._files) - 1)
        return f"record {index - self._bounds[shard]} of {self._files[shard]} (episode {index})"


def _to_numpy(example: Mapping) -> dict:
    def convert(tree):
        if isinstance(tree, Mapping):
            return {k: convert(v) for k, v in tree.items()}
        if isinstance(tree, bytes):
            return tree.decode()
        return np.asarray(tree)

    meta = {k: (v.item() if isinstance(v, np.ndarray) else v)
            for k, v in convert(example["episode_metadata"]).items()}
    return {"steps": convert(example["steps"]), "episode_metadata": meta}


def load_episodes(data_dir: str | os.PathLike, name: str, split: str = "train") -> Episodes:
    """The split's episodes as a lazy sequence (see `Episodes`), read with TFDS's ArrayRecord source."""
    import tensorflow_datasets as tfds

    where = dataset_dir(data_dir, name)
    if not (where / "dataset_info.json").exists():
        raise _missing(name, where)
    builder = tfds.builder_from_directory(str(where))
    if split not in builder.info.splits:
        raise ValueError(f"Dataset {where} has no split {split!r}; it has {sorted(builder.info.splits)}.")
    info = builder.info.splits[split]
    files = [str(p) for p in info.filepaths]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise _missing(name, Path(missing[0]))
    source = builder.as_data_source(split=split)
    return Episodes(source, files, list(info.shard_lengths), str(where))
