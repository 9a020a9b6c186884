"""Evaluate a checkpoint: rollouts on every control task of the mixture, caption accuracy, text perplexity.

`evaluate(config, workdir)` is the whole of `make eval`: the model, vocabulary, task specs and tokenizer
come from the checkpoint; how to evaluate (episodes, envs, sticky actions, step cap, prompting,
temperature) comes from `config.eval`, so `--config.eval.episodes=N` works from the command line.
Results go to WORKDIR/eval/: report.json, report.md, normalized_scores.png and videos/<task>.(mp4|gif).

Where environments, demonstrations and reference scores come from is injected (`TaskHooks`,
`DataHooks`), defaulting to `data_pipelines`; tests pass a tiny in-memory environment instead.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from gato_jax.load import Loaded, load_checkpoint
from gato_jax.rollout import report as report_lib
from gato_jax.rollout.agent import Agent, demonstration_prompts
from gato_jax.rollout.envs import EnvBatch, RolloutResult, run_episodes
from gato_jax.rollout.report import References
from gato_jax.rollout.sampling import Sampler, SamplingParams, caption_prompt
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train.loss import token_nll

EVAL_DIR = "eval"
CAPTION_BATCH = 32  # Captions decoded together.
CAPTION_MAX_TOKENS = 24  # Scene captions are ~6-10 pieces; a caption that runs on is wrong anyway.
WINDOW_BATCH = 4  # Windows scored per forward pass (text perplexity, held-out action accuracy).
HELDOUT_WINDOWS = 32  # Held-out demonstration windows per task for teacher-forced action accuracy.

_LOG = logging.getLogger(__name__)


class TaskHooks(NamedTuple):
    """Where a control task's environment, demonstrations and references come from."""

    make_env: Callable[..., Any]  # (name, *, sticky_actions, max_steps, seed) -> gymnasium.Env
    action_to_env: Callable[[str, Mapping], Any]  # (name, action dict) -> env action
    load_episodes: Callable[[str, str, str], Sequence[Mapping]]  # (data_dir, name, split) -> episodes
    load_metadata: Callable[[str, str], Mapping]  # (data_dir, name) -> expert/random returns, ...
    # (name, num_envs, *, sticky_actions, max_steps, seed) -> VectorEnv; only benchmarks use it.
    make_vector_env: Callable[..., Any] | None = None


class DataHooks(NamedTuple):
    """Where held-out captions and text come from."""

    load_captions: Callable[[str, str], Sequence[Mapping]]  # (data_dir, split) -> {'image', 'caption', 'novel'}
    load_text_split: Callable[[str, str], list[str]]  # (data_dir, split) -> documents
    unigram_baseline: Callable[[str, int], float]  # (data_dir, text vocab size) -> perplexity


class EvalSettings(NamedTuple):
    episodes: int
    num_envs: int
    max_steps: int
    sticky_actions: float
    prompted: bool
    temperature: float
    seed: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> EvalSettings:
        e = config.eval
        return cls(int(e.episodes), int(e.num_envs), int(e.max_steps), float(e.sticky_actions), bool(e.prompted),
                   float(e.temperature), int(config.seed))


def default_task_hooks(frame_size: int = 80) -> TaskHooks:
    """data_pipelines.tasks and data_pipelines.episodes, with Atari frames of the size the model trained on."""
    from data_pipelines import episodes, tasks

    def make_env(name: str, **kwargs) -> Any:
        return tasks.make_env(name, frame_size=frame_size, **kwargs)

    def make_vector_env(name: str, num_envs: int, **kwargs) -> Any:
        return tasks.make_vector_env(name, num_envs, frame_size=frame_size, **kwargs)

    return TaskHooks(make_env, tasks.action_to_env, episodes.load_episodes, episodes.load_metadata, make_vector_env)


def default_data_hooks() -> DataHooks:
    from data_pipelines import captions, text

    return DataHooks(captions.load_captions, text.load_text_split, text.unigram_baseline)


def _first(metadata: Mapping, keys: Sequence[str]) -> float | None:
    for key in keys:
        if metadata.get(key) is not None:
            return float(metadata[key])
    return None


def references(name: str, metadata: Mapping) -> References:
    """Random and expert returns of the dataset; Atari's published random and human scores when present.

    The dataset's random_return is measured under the evaluation settings (sticky actions, step cap), so
    it is the right zero for the expert-normalised score; the published pair is for human-normalising.
    """
    random, expert = _first(metadata, ("random_return",)), _first(metadata, ("expert_return",))
    if random is None or expert is None:
        raise ValueError(f"The dataset metadata of {name!r} lacks expert_return/random_return (has "
                         f"{sorted(metadata)}); rebuild it with `make data`.")
    published = metadata.get("reference_scores") or {}
    return References(random, expert, _first(published, ("human",)), _first(published, ("random",)))


def data_dir_for(config: ml_collections.ConfigDict, loaded: Loaded) -> str:
    """config.data.dir or $GATO_DATA_DIR when set, else where training read its data, else ./data."""
    from data_pipelines import prepare

    if config.data.dir or os.environ.get("GATO_DATA_DIR") or not loaded.meta.get("data_dir"):
        return prepare.data_dir(config)
    return str(loaded.meta["data_dir"])


# ---------------------------------------------------------------------------------------------------------
# Control tasks.


def make_agent(loaded: Loaded, name: str, batch_size: int, temperature: float) -> Agent:
    if name not in loaded.task_specs:
        raise ValueError(f"The checkpoint has no task spec for {name!r} (it knows {sorted(loaded.task_specs)}); "
                         "evaluate with the mixture it was trained on.")
    spec = loaded.task_specs[name]
    return Agent(loaded.model, spec, loaded.layout, batch_size=batch_size,
                 cache_size=acting_cache_size(int(loaded.config.seq_len), spec.tokens_per_timestep),
                 temperature=temperature)


def acting_cache_size(seq_len: int, tokens_per_timestep: int) -> int:
    """Whole timesteps only, as training windows (and prompt + window) are: seq_len // step * step."""
    return seq_len // tokens_per_timestep * tokens_per_timestep


def rollout_task(loaded: Loaded, name: str, settings: EvalSettings, hooks: TaskHooks, data_dir: str,
                 key: jax.Array, progress: bool = True, demos: Sequence[Mapping] | None = None) -> RolloutResult:
    """config.eval.episodes seeded episodes of one task, prompted or not; episode 0 is recorded.

    `demos` are the held-out episodes prompts come from; loaded from data_dir when not given.
    """
    num_envs = max(1, min(settings.num_envs, settings.episodes))
    agent = make_agent(loaded, name, num_envs, settings.temperature)
    make = lambda seed: hooks.make_env(name, sticky_actions=settings.sticky_actions, max_steps=settings.max_steps,
                                       seed=seed)
    envs = EnvBatch(make, lambda action: hooks.action_to_env(name, action), agent.spec, num_envs=num_envs,
                    num_episodes=settings.episodes, max_steps=settings.max_steps, seed=settings.seed, record_first=True)
    prompt = None
    if settings.prompted:
        demos = _demonstrations(hooks, data_dir, name) if demos is None else demos
        prompt = demonstration_prompts(agent.spec, loaded.layout, demos, agent.max_prompt_tokens, num_envs,
                                       np.random.default_rng(settings.seed))
    try:
        return run_episodes(agent, envs, key, prompt, progress=progress, desc=name)
    finally:
        envs.close()


def _demonstrations(hooks: TaskHooks, data_dir: str, name: str):
    """Held-out episodes for prompts; a dataset too small to hold any out prompts from its training split."""
    try:
        demos = hooks.load_episodes(data_dir, name, "test")
        if len(demos):
            return demos
    except ValueError:
        pass
    _LOG.warning("%s has no held-out episodes; prompting with training episodes.", name)
    return hooks.load_episodes(data_dir, name, "train")


@functools.partial(jax.jit, static_argnums=0)
def _action_hits(graphdef, params, seq: TokenSequence) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(argmax == target, is a loss-masked action target, target) for every next-token position."""
    logits_BxTxV = nnx.merge(graphdef, params)(seq)[:, :-1]
    targets_BxT = seq.tokens[:, 1:]
    actions = jnp.asarray((Modality.DISCRETE, Modality.CONTINUOUS), seq.modality.dtype)
    is_action_BxT = seq.loss_mask[:, 1:] & jnp.isin(seq.modality[:, 1:], actions)
    return jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT, is_action_BxT, targets_BxT


def heldout_action_accuracy(loaded: Loaded, name: str, episodes: Sequence[Mapping],
                            windows: int = HELDOUT_WINDOWS) -> dict[str, float]:
    """Teacher-forced action-token accuracy on held-out demonstrations, next to always guessing the commonest.

    Separates "does not imitate the expert" from "imitates it, but small errors compound in closed loop":
    a rollout score near random with accuracy well above both baselines points at the latter. The second
    baseline repeats the previous timestep's action: an expert that holds actions (Boxing re-plans every
    4 steps) lets a model score well by copying its own last action without reading the frame.
    """
    from data_pipelines import sources

    spec, seq_len = loaded.task_specs[name], int(loaded.config.seq_len)
    flat = sources.FlatEpisodes.from_episodes(episodes, spec)
    source = sources.ControlSource(spec, loaded.layout, flat, seq_len, prompt_prob=0.0, prompt_end_fraction=0.0)
    rng = np.random.default_rng(0)
    items = [source(rng) for _ in range(windows)]
    graphdef, params = nnx.split(loaded.model)
    hits, targets, repeats = [], [], []
    per_step = spec.action_tokens
    for batch in _fixed_batches(loaded, items):
        correct, is_action, target = (np.asarray(x) for x in _action_hits(graphdef, params, batch))
        hits.append(correct[is_action])
        targets.append(target[is_action])
        for row, mask in zip(target, is_action):  # Rows hold whole timesteps, so actions pair up by step.
            actions = row[mask]
            repeats.append(actions[per_step:] == actions[:-per_step] if actions.size > per_step else actions[:0])
    hits, targets, repeats = np.concatenate(hits), np.concatenate(targets), np.concatenate(repeats)
    majority = np.bincount(targets).max() / max(targets.size, 1) if targets.size else math.nan
    return {"heldout_action_accuracy": _mean_or_nan(hits), "heldout_majority_accuracy": float(majority),
            "heldout_repeat_accuracy": _mean_or_nan(repeats), "heldout_action_targets": int(targets.size)}


def evaluate_task(loaded: Loaded, name: str, settings: EvalSettings, hooks: TaskHooks, data_dir: str,
                  key: jax.Array, out_dir: str, progress: bool = True) -> dict[str, Any]:
    """The report entry of one task (scores, lengths, speed, held-out imitation), with its video under out_dir."""
    refs = references(name, hooks.load_metadata(data_dir, name))
    demos = _demonstrations(hooks, data_dir, name)
    result = rollout_task(loaded, name, settings, hooks, data_dir, key, progress, demos=demos)
    entry = report_lib.task_scores([e.ret for e in result.episodes], refs, prompted=settings.prompted)
    entry.update(heldout_action_accuracy(loaded, name, demos))
    video_dir = os.path.join(out_dir, report_lib.VIDEO_DIR)
    os.makedirs(video_dir, exist_ok=True)
    video = report_lib.write_video(os.path.join(video_dir, name.replace("/", "_")), result.frames)
    entry.update(length_mean=float(np.mean([e.length for e in result.episodes])),
                 env_steps_per_s=result.env_steps / max(result.seconds, 1e-9),
                 video=os.path.relpath(video, out_dir) if video else None)
    return entry


# ---------------------------------------------------------------------------------------------------------
# Captions and text.


def caption_accuracy(loaded: Loaded, examples: Sequence[Mapping], max_examples: int,
                     progress: bool = True) -> dict[str, Any]:
    """Greedy captions of held-out images, exact match (after stripping) overall, on novel and on seen scenes."""
    from data_pipelines.captions import parse_caption

    examples = [examples[i] for i in range(min(max_examples, len(examples)))]
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    patch = int(loaded.config.model.patch_size)
    correct, novel, attributes = [], [], {"count": [], "colour": [], "shape": [], "place": []}
    for start in tqdm.trange(0, len(examples), CAPTION_BATCH, desc="captions", disable=not progress):
        batch = examples[start:start + CAPTION_BATCH]
        prompts = [caption_prompt(loaded.tokenizer, loaded.layout, np.asarray(ex["image"]), patch) for ex in batch]
        ids = sampler.generate(prompts, jax.random.key(0), SamplingParams(temperature=0.0), CAPTION_MAX_TOKENS)
        for ex, row in zip(batch, ids):
            text = loaded.tokenizer.decode(row).strip() if row else ""
            correct.append(text == str(ex["caption"]).strip())
            novel.append(bool(ex.get("novel", False)))
            truth, guess = parse_caption(str(ex["caption"])), parse_caption(text)
            if truth is not None:
                for attr, hits in attributes.items():
                    hits.append(guess is not None and getattr(guess, attr) == getattr(truth, attr))
    return _caption_scores(np.asarray(correct, bool), np.asarray(novel, bool), attributes)


def _mean_or_nan(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def _caption_scores(correct: np.ndarray, novel: np.ndarray, attributes: dict[str, list[bool]]) -> dict[str, Any]:
    out = {"examples": int(correct.size), "accuracy": _mean_or_nan(correct),
           "novel_examples": int(novel.sum()), "novel_accuracy": _mean_or_nan(correct[novel]),
           "seen_accuracy": _mean_or_nan(correct[~novel])}
    out.update({f"scene_{attr}_accuracy": _mean_or_nan(np.asarray(hits)) for attr, hits in attributes.items()})
    return out


def text_windows(loaded: Loaded, documents: Sequence[str], windows: int) -> list[TokenSequence]:
    """The first `windows` consecutive seq_len windows of the held-out documents, packed as in training."""
    from data_pipelines import sources

    seq_len = int(loaded.config.seq_len)
    ids = sources.document_ids(loaded.tokenizer, documents)
    source = sources.TextSource(ids, loaded.layout, seq_len, int(loaded.config.model.patch_size))
    count = min(windows, max(1, -(-len(ids) // seq_len)))
    return [seq_lib.pad_to(source.window(np.asarray(ids[i * seq_len:(i + 1) * seq_len])), seq_len)
            for i in range(count)]


@functools.partial(jax.jit, static_argnums=0)
def _text_nll(graphdef, params, seq: TokenSequence) -> tuple[jax.Array, jax.Array]:
    """(sum of NLL, count) over text-piece targets of a batch of windows."""
    logits_BxTxV = nnx.merge(graphdef, params)(seq)
    nll_BxT = token_nll(logits_BxTxV[:, :-1], seq.tokens[:, 1:])
    weight_BxT = seq.loss_mask[:, 1:] & (seq.modality[:, 1:] == Modality.TEXT)
    return jnp.sum(nll_BxT * weight_BxT), jnp.sum(weight_BxT)


def text_perplexity(loaded: Loaded, documents: Sequence[str], windows: int, progress: bool = True) -> dict[str, Any]:
    """Perplexity on text-piece targets (the pieces the unigram baseline counts), from full forward passes."""
    graphdef, params = nnx.split(loaded.model)
    items = text_windows(loaded, documents, windows)
    total = count = 0.0
    for batch in tqdm.tqdm(_fixed_batches(loaded, items), desc="text", total=-(-len(items) // WINDOW_BATCH),
                           disable=not progress):
        s, c = _text_nll(graphdef, params, batch)
        total, count = total + float(s), count + float(c)
    return {"windows": len(items), "tokens": int(count), "perplexity": math.exp(total / max(count, 1.0))}


def _fixed_batches(loaded: Loaded, items: Sequence[TokenSequence]) -> Iterator[TokenSequence]:
    """WINDOW_BATCH windows at a time, the last filled with blank windows (no targets): one compiled shape."""
    blank = seq_lib.empty(int(loaded.config.seq_len), int(loaded.config.model.patch_size))
    for start in range(0, len(items), WINDOW_BATCH):
        batch = list(items[start:start + WINDOW_BATCH])
        yield _as_jax(seq_lib.stack(batch + [blank] * (WINDOW_BATCH - len(batch))))


def _as_jax(seq: TokenSequence) -> TokenSequence:
    return TokenSequence(*(jnp.asarray(f) for f in seq))


# ---------------------------------------------------------------------------------------------------------
# Everything.


def _control(loaded: Loaded, config, settings: EvalSettings, hooks: TaskHooks | None, data_dir: str,
             out_dir: str, progress: bool) -> dict[str, dict]:
    from data_pipelines import prepare

    names = prepare.control_tasks(config)
    if not names:
        return {}
    hooks = hooks or default_task_hooks(int(loaded.config.data.frame_size))
    key = jax.random.key(settings.seed)
    tasks = {}
    for name in tqdm.tqdm(names, desc="tasks", disable=not progress):
        key, task_key = jax.random.split(key)
        tasks[name] = evaluate_task(loaded, name, settings, hooks, data_dir, task_key, out_dir, progress)
    return tasks


def _captions_and_text(loaded: Loaded, config, hooks: DataHooks | None, data_dir: str, progress: bool) -> dict:
    from data_pipelines import prepare

    mixture = list(config.data.mixture)
    wanted = [n for n in mixture if n in prepare.CAPTION_SOURCES + prepare.TEXT_SOURCES]
    if not wanted:
        return {}
    if loaded.tokenizer is None:
        raise ValueError("The mixture has text or captions but the checkpoint holds no text tokenizer; retrain.")
    hooks = hooks or default_data_hooks()
    out = {}
    if any(n in prepare.CAPTION_SOURCES for n in mixture) and config.eval.caption_examples > 0:
        examples = hooks.load_captions(data_dir, "test")
        out["captions"] = caption_accuracy(loaded, examples, int(config.eval.caption_examples), progress)
    if any(n in prepare.TEXT_SOURCES for n in mixture) and config.eval.text_batches > 0:
        text = text_perplexity(loaded, hooks.load_text_split(data_dir, "test"), int(config.eval.text_batches), progress)
        text["unigram_perplexity"] = float(hooks.unigram_baseline(data_dir, loaded.layout.text_size))
        out["text"] = text
    return out


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
             task_hooks: TaskHooks | None = None, data_hooks: DataHooks | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Evaluates the latest checkpoint (or `step`) in `workdir`; writes and returns the report."""
    expected = VocabLayout(config.vocab.text_size, config.vocab.num_continuous_bins, config.vocab.num_discrete)
    loaded = load_checkpoint(workdir, step, expected_layout=expected)
    settings = EvalSettings.from_config(config)
    data_dir = data_dir_for(config, loaded)
    out_dir = os.path.join(workdir, EVAL_DIR)
    os.makedirs(out_dir, exist_ok=True)
    tasks = _control(loaded, config, settings, task_hooks, data_dir, out_dir, progress)
    report = {"workdir": os.path.abspath(workdir), "step": loaded.step, "settings": settings._asdict(),
              "tasks": tasks, "summary": report_lib.summary(tasks)}
    report.update(_captions_and_text(loaded, config, data_hooks, data_dir, progress))
    report_lib.write_report(out_dir, report)
    return report
