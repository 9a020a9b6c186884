"""Evaluate a checkpoint: rollouts on every control task of the mixture, caption accuracy, text perplexity.

`evaluate_checkpoint(loaded, config, out_dir, sources, task_hooks, data_hooks)` is the work of `make eval`:
the model, vocabulary, task specs and tokenizer come from the checkpoint; how to evaluate (episodes,
envs, sticky actions, step cap, prompting, temperature) comes from `config.eval`, so
`--config.eval.episodes=N` works from the command line. Results go to out_dir: report.json, report.md,
normalized_scores.png and videos/<task>.(mp4|gif).

Where environments, demonstrations, held-out windows and reference scores come from is handed in
(`TaskHooks`, `DataHooks`): `gato_jax.evaluate` wires them to data_pipelines (this package never
imports it); tests pass a tiny in-memory environment instead.
"""
from __future__ import annotations

import functools
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

from gato_jax.errors import DataError
from gato_jax.load import Loaded
from gato_jax.rollout import answers, prismer_eval
from gato_jax.rollout import report as report_lib
from gato_jax.rollout.agent import Agent, demonstration_prompts, mean_bin
from gato_jax.rollout.chunks import as_jax
from gato_jax.rollout.envs import EnvBatch, RolloutResult, run_episodes
from gato_jax.rollout.report import References
from gato_jax.rollout.sampling import Sampler, SamplingParams, caption_prompt
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.interleaved import TokenizedPrompt
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.spec import FieldKind, TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.values import detokenize_continuous
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train.loss import token_nll

EVAL_DIR = "eval"
CAPTION_BATCH = 32  # Captions decoded together.
CAPTION_MAX_TOKENS = 24  # Scene captions are ~6-10 pieces; a caption that runs on is wrong anyway.
WINDOW_BATCH = 4  # Windows scored per forward pass (text perplexity, held-out action accuracy).
HELDOUT_WINDOWS = 32  # Held-out demonstration windows per task for teacher-forced action accuracy.
HELDOUT_SPLIT = "test"  # Where prompts and held-out windows come from; never the training episodes.


class MissingDataError(DataError):
    """The data evaluation needs is not there; the message names the command that makes it."""


# (spec, layout, episodes, seq_len, count) -> `count` windows of the episodes laid out as in training.
WindowsFn = Callable[[TaskSpec, VocabLayout, Sequence[Mapping], int, int], list[TokenSequence]]


class TaskHooks(NamedTuple):
    """Where a control task's environment, demonstrations, training-format windows and references come from."""

    make_env: Callable[..., Any]  # (name, *, sticky_actions, max_steps, seed) -> gymnasium.Env
    action_to_env: Callable[[str, Mapping], Any]  # (name, action dict) -> env action
    load_episodes: Callable[[str, str], Sequence[Mapping]]  # (name, split) -> episodes
    load_metadata: Callable[[str], Mapping]  # name -> expert/random returns, ...
    windows: WindowsFn  # Held-out windows as the training stream cuts them (held-out action accuracy).
    # (name, num_envs, *, sticky_actions, max_steps, seed) -> VectorEnv; only benchmarks use it.
    make_vector_env: Callable[..., Any] | None = None
    # (name, error_rate, *, episodes, sticky_actions, max_steps, seed) -> returns of the task's expert with
    # that share of its actions replaced by random other ones (`matched_error_reference`); None skips it.
    expert_with_errors: Callable[..., Sequence[float]] | None = None
    # (name, env, record) -> env that asks the task's expert what it would do in every state the model
    # reaches and calls record(agrees) per step (`AgreementTally`); the env itself when there is no expert
    # to ask or its actions are not discrete. None skips the on-policy agreement.
    shadow_expert: Callable[[str, Any, Callable[[bool], None]], Any] | None = None


class DataHooks(NamedTuple):
    """Where held-out captions and text come from, and how they are cut and parsed as in training."""

    load_captions: Callable[[str], Sequence[Mapping]]  # split -> {'image', 'caption', 'source', 'novel'}
    load_text_split: Callable[[str], list[str]]  # split -> documents
    unigram_baseline: Callable[[int], float]  # text vocab size -> perplexity
    # (tokenizer, layout, documents, seq_len, patch_size, count) -> consecutive packed text windows.
    text_windows: Callable[[TextTokenizer, VocabLayout, Sequence[str], int, int, int], list[TokenSequence]]
    parse_caption: Callable[[str], Any]  # caption -> object with count/colour/shape/place, or None
    # (tokenizer, layout, patch_size, max questions, max episodes) -> held-out multiple-choice prompts by
    # section: "questions" (typed by question) and "fewshot" (typed "fewshot_<k>"); KOSMOS-1 documents only.
    vision_language_prompts: Callable[..., Mapping[str, Sequence[TokenizedPrompt]]] | None = None
    # (tokenizer, layout, patch_size, episodes, shots, kind=) -> unpaired few-shot episodes on held-out images
    # with every word loss-masked, for the loss of each demonstration's word (`fewshot_word_nll`); `kind`
    # "heldout" or one of the easier kinds a run may train on (TRAINED_WORD_KINDS).
    fewshot_word_rows: Callable[..., Sequence[TokenSequence]] | None = None


class EvalSources(NamedTuple):
    """What of the mixture is evaluated: control tasks rolled out, captions scored, text perplexity."""

    tasks: tuple[str, ...] = ()
    captions: bool = False
    text: bool = False
    vision_language: bool = False  # Held-out visual questions and few-shot episodes (KOSMOS-1 documents).
    # Every control task of the mixture, in order, when `tasks` is a subset of them: each evaluated task then
    # draws the sampling key it draws in the full evaluation, so its figures match the full report's.
    key_order: tuple[str, ...] = ()


class EvalSettings(NamedTuple):
    episodes: int
    num_envs: int
    max_steps: int
    sticky_actions: float
    prompted: bool
    temperature: float
    seed: int
    continuous_temperature: float  # Of continuous action tokens (config.eval.continuous_temperature).
    matched_error_episodes: int = 0  # Episodes of the expert at the model's error rate; 0 skips them.
    continuous_mean: bool = True  # At continuous temperature 0: the bin nearest the mean, not the likeliest.

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> EvalSettings:
        e = config.eval
        return cls(int(e.episodes), int(e.num_envs), int(e.max_steps), float(e.sticky_actions), bool(e.prompted),
                   float(e.temperature), int(config.seed) + int(e.get("seed_offset", 0)),
                   float(e.continuous_temperature),
                   int(e.get("matched_error_episodes", 0)), bool(e.get("continuous_mean", True)))


def references(name: str, metadata: Mapping) -> References:
    """Random and expert returns of the dataset, measured under the evaluation settings (sticky actions,
    step cap): the zero and the one of the expert-normalised score, with how many episodes each is the
    mean of and their spread.

    Published human scores are not used: they are full-game scores, and evaluation episodes stop at the
    step cap, so a human-normalised score would compare unlike things.
    """
    if metadata.get("random_return") is None or metadata.get("expert_return") is None:
        raise ValueError(f"The dataset metadata of {name!r} lacks expert_return/random_return (has "
                         f"{sorted(metadata)}); rebuild it with `make data`.")
    per_episode = {k: np.asarray(metadata.get(f"{k}_returns") or [], np.float64) for k in ("expert", "random")}
    std = {k: float(v.std()) if v.size else metadata.get(f"{k}_return_std") for k, v in per_episode.items()}
    count = {k: int(v.size) if v.size else None for k, v in per_episode.items()}
    return References(float(metadata["random_return"]), float(metadata["expert_return"]),
                      random_std=std["random"], expert_std=std["expert"],
                      random_episodes=count["random"], expert_episodes=count["expert"])


# ---------------------------------------------------------------------------------------------------------
# Control tasks.


def make_agent(loaded: Loaded, name: str, batch_size: int, temperature: float,
               continuous_temperature: float | None = None, continuous_mean: bool = True) -> Agent:
    if name not in loaded.task_specs:
        raise ValueError(f"The checkpoint has no task spec for {name!r} (it knows {sorted(loaded.task_specs)}); "
                         "evaluate with the mixture it was trained on.")
    spec = loaded.task_specs[name]
    return Agent(loaded.model, spec, loaded.layout, batch_size=batch_size,
                 cache_size=acting_cache_size(int(loaded.config.seq_len), spec.tokens_per_timestep),
                 temperature=temperature, continuous_temperature=continuous_temperature,
                 continuous_mean=continuous_mean)


def acting_cache_size(seq_len: int, tokens_per_timestep: int) -> int:
    """Whole timesteps only, as training windows (and prompt + window) are: seq_len // step * step."""
    return seq_len // tokens_per_timestep * tokens_per_timestep


class AgreementTally:
    """Counts of the steps a shadowing expert (`TaskHooks.shadow_expert`) agreed with the model on."""

    def __init__(self) -> None:
        self.agreed = self.steps = 0

    def __call__(self, agrees: bool) -> None:
        self.agreed += bool(agrees)
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        """{'onpolicy_expert_agreement', 'onpolicy_steps'}; {} when no step was shadowed."""
        if not self.steps:
            return {}
        return {"onpolicy_expert_agreement": self.agreed / self.steps, "onpolicy_steps": self.steps}


def rollout_task(loaded: Loaded, name: str, settings: EvalSettings, hooks: TaskHooks,
                 key: jax.Array, progress: bool = True, demos: Sequence[Mapping] | None = None,
                 tally: AgreementTally | None = None) -> RolloutResult:
    """config.eval.episodes seeded episodes of one task, prompted or not; episode 0 is recorded.

    `demos` are the held-out episodes prompts come from; loaded through `hooks` when not given. With a
    `tally` and `hooks.shadow_expert`, the task's expert is asked in every state the model reaches.
    """
    num_envs = max(1, min(settings.num_envs, settings.episodes))
    agent = make_agent(loaded, name, num_envs, settings.temperature, settings.continuous_temperature,
                       settings.continuous_mean)
    plain = lambda seed: hooks.make_env(name, sticky_actions=settings.sticky_actions, max_steps=settings.max_steps,
                                        seed=seed)
    shadowed = tally is not None and hooks.shadow_expert is not None
    make = (lambda seed: hooks.shadow_expert(name, plain(seed), tally)) if shadowed else plain
    envs = EnvBatch(make, lambda action: hooks.action_to_env(name, action), agent.spec, num_envs=num_envs,
                    num_episodes=settings.episodes, max_steps=settings.max_steps, seed=settings.seed, record_first=True)
    prompt = None
    if settings.prompted:
        demos = heldout_episodes(hooks, name) if demos is None else demos
        prompt = demonstration_prompts(agent.spec, loaded.layout, demos, agent.max_prompt_tokens, num_envs,
                                       np.random.default_rng(settings.seed))
    try:
        return run_episodes(agent, envs, key, prompt, progress=progress, desc=name)
    finally:
        envs.close()


def heldout_episodes(hooks: TaskHooks, name: str) -> Sequence[Mapping]:
    """The task's test-split episodes: prompts and held-out action accuracy come from these only."""
    try:
        episodes = hooks.load_episodes(name, HELDOUT_SPLIT)
    except ValueError:
        episodes = []
    if not len(episodes):
        raise MissingDataError(f"{name} has no held-out ({HELDOUT_SPLIT!r} split) episodes: rebuild its data with "
                               "more episodes, e.g. `make data EXP=<experiment> "
                               "ARGS=--config.data.episodes_per_task=<more>`.")
    return episodes


@functools.partial(jax.jit, static_argnums=(0, 3))
def _action_predictions(graphdef, params, seq: TokenSequence, continuous: tuple[int, int],
                        bin_values_CxK: jax.Array) -> tuple[jax.Array, ...]:
    """(argmax, argmax inside the continuous range [lo, hi), is a loss-masked action target, target, and
    [C, B, T] the continuous bin nearest the mean under each of C bin-value tables (`agent.mean_bin`)) for
    every next-token position."""
    logits_BxTxV = nnx.merge(graphdef, params)(seq)[:, :-1]
    targets_BxT = seq.tokens[:, 1:]
    actions = jnp.asarray((Modality.DISCRETE, Modality.CONTINUOUS), seq.modality.dtype)
    is_action_BxT = seq.loss_mask[:, 1:] & jnp.isin(seq.modality[:, 1:], actions)
    lo, hi = continuous
    in_range_BxT = lo + jnp.argmax(logits_BxTxV[..., lo:hi], axis=-1)
    flat_NxV = logits_BxTxV.reshape(-1, logits_BxTxV.shape[-1])
    mean_CxBxT = jnp.stack([mean_bin(flat_NxV, jnp.int32(lo), values_K).reshape(in_range_BxT.shape)
                            for values_K in bin_values_CxK])
    return jnp.argmax(logits_BxTxV, axis=-1), in_range_BxT, is_action_BxT, targets_BxT, mean_CxBxT


def heldout_action_accuracy(loaded: Loaded, name: str, episodes: Sequence[Mapping], make_windows: WindowsFn,
                            windows: int = HELDOUT_WINDOWS) -> dict[str, float]:
    """Teacher-forced action-token accuracy on held-out demonstrations, next to always guessing the commonest.

    Separates "does not imitate the expert" from "imitates it, but small errors compound in closed loop":
    a rollout score near random with accuracy well above both baselines points at the latter. The second
    baseline repeats the previous timestep's action: an expert that holds actions (Boxing re-plans every
    4 steps) lets a model score well by copying its own last action without reading the frame.
    Tasks with continuous actions add the mean absolute error in action units (`continuous_action_errors`),
    of the likeliest bin and of the bin nearest the mean (how the agent acts by default).
    """
    spec, seq_len = loaded.task_specs[name], int(loaded.config.seq_len)
    items = make_windows(spec, loaded.layout, episodes, seq_len, windows)
    graphdef, params = nnx.split(loaded.model)
    per_step = spec.action_tokens
    tables = jnp.asarray(_bin_value_tables(loaded.layout))
    # Which table (companded, linear) decodes each action token of a timestep; discrete ones never read it.
    table_A = np.array([0 if f.kind != FieldKind.CONTINUOUS or f.companded else 1
                        for f in spec.ordered_action() for _ in range(f.size)])
    hits, targets, repeats, steps, predicted_steps, mean_steps = [], [], [], [], [], []
    for batch in _fixed_batches(loaded, items):
        outs = _action_predictions(graphdef, params, batch, tuple(loaded.layout.continuous_range), tables)
        argmax, in_range, is_action, target, mean_CxBxT = (np.asarray(x) for x in outs)
        hits.append(argmax[is_action] == target[is_action])
        targets.append(target[is_action])
        for b, (row, guess, mask) in enumerate(zip(target, in_range, is_action)):  # Whole timesteps: actions pair up.
            actions, whole = row[mask], mask.sum() // per_step * per_step
            repeats.append(actions[per_step:] == actions[:-per_step] if actions.size > per_step else actions[:0])
            steps.append(actions[:whole].reshape(-1, per_step))
            predicted_steps.append(guess[mask][:whole].reshape(-1, per_step))
            means_CxNxA = mean_CxBxT[:, b][:, mask][:, :whole].reshape(len(tables), -1, per_step)
            mean_steps.append(np.take_along_axis(means_CxNxA, table_A[None, None, :], axis=0)[0])
    hits, targets, repeats = np.concatenate(hits), np.concatenate(targets), np.concatenate(repeats)
    majority = np.bincount(targets).max() / max(targets.size, 1) if targets.size else math.nan
    out = {"heldout_action_accuracy": _mean_or_nan(hits), "heldout_majority_accuracy": float(majority),
           "heldout_repeat_accuracy": _mean_or_nan(repeats), "heldout_action_targets": int(targets.size)}
    steps = np.concatenate(steps)
    out.update(continuous_action_errors(spec, loaded.layout, steps, np.concatenate(predicted_steps)))
    mean_errors = continuous_action_errors(spec, loaded.layout, steps, np.concatenate(mean_steps))
    if mean_errors:
        out["heldout_action_mae_mean_bin"] = mean_errors["heldout_action_mae"]
    return out


def _bin_value_tables(layout: VocabLayout) -> np.ndarray:
    """[2, K]: every continuous bin's value under mu-law (companded fields) and without (linear ones)."""
    bins = np.arange(*layout.continuous_range)
    return np.stack([detokenize_continuous(bins, layout, companded=c) for c in (True, False)])


def heldout_curve(load_step: Callable[[int], Loaded], steps: Sequence[int], names: Sequence[str],
                  hooks: TaskHooks) -> list[dict[str, Any]]:
    """Learning curves: `heldout_action_accuracy` of every task at each checkpoint step, no rollouts.

    One row per step, {'step': s, task: {heldout_action_accuracy, majority, repeat, ...}}. Every step reads
    the same held-out windows (the test split, cut as in training), so the rows differ only by the weights.
    """
    demos = {name: heldout_episodes(hooks, name) for name in names}  # Fails before any checkpoint is read.
    rows = []
    for step in steps:
        loaded = load_step(step)
        rows.append({"step": int(loaded.step),
                     **{name: heldout_action_accuracy(loaded, name, demos[name], hooks.windows) for name in names}})
    return rows


def matched_error_reference(spec: TaskSpec, entry: Mapping[str, Any], refs: References, settings: EvalSettings,
                            hooks: TaskHooks) -> dict[str, Any]:
    """The expert's score when it errs as often as the model does, at random steps: {'matched_error_expert': ...}.

    Held-out accuracy alone does not say whether a model's score is what its error rate allows. The expert
    played with 1 - held-out action accuracy of its actions replaced by random other ones (evaluation
    settings, `settings.matched_error_episodes` episodes) is what an imitator with that error rate reaches
    when its errors fall anywhere; a model far below it errs where it matters. Discrete-action tasks only
    (an error rate of continuous actions is not defined); {} when the hook or the episodes are missing.
    """
    accuracy = entry.get("heldout_action_accuracy")
    discrete = all(f.kind == FieldKind.DISCRETE for f in spec.ordered_action())
    if (hooks.expert_with_errors is None or settings.matched_error_episodes < 1 or not discrete
            or accuracy is None or not math.isfinite(accuracy)):
        return {}
    rate = 1.0 - float(accuracy)
    returns = np.asarray(hooks.expert_with_errors(spec.name, rate, episodes=settings.matched_error_episodes,
                                                  sticky_actions=settings.sticky_actions,
                                                  max_steps=settings.max_steps, seed=settings.seed), np.float64)
    mean = float(returns.mean())
    return {"matched_error_expert": {
        "error_rate": rate, "episodes": int(returns.size), "return_mean": mean, "return_std": float(returns.std()),
        "normalized": report_lib.normalized_score(mean, refs.random, refs.expert)}}


def continuous_action_errors(spec, layout: VocabLayout, target_NxA: np.ndarray,
                             predicted_NxA: np.ndarray) -> dict[str, float]:
    """Mean absolute error of the predicted continuous actions, in action units, beside always predicting
    the held-out mean action; {} for a task without continuous actions.

    Ids are decoded with the task's own detokenizer (mu-law if companded, times the field's scale);
    the targets' decoded values are the recorded actions to within half a bin (1/1024 of the range).
    Predictions are the ids given (the likeliest continuous bin, or the bin nearest the mean).
    """
    columns = _continuous_columns(spec)
    if not columns or not len(target_NxA):
        return {}
    truth, guess = (np.stack([_detokenize(ids_NxA[:, k], field, layout) for k, field in columns], axis=1)
                    for ids_NxA in (target_NxA, predicted_NxA))
    return {"heldout_action_mae": float(np.abs(guess - truth).mean()),
            "heldout_mean_action_mae": float(np.abs(truth.mean(axis=0) - truth).mean()),
            "heldout_continuous_actions": int(truth.size)}


def _continuous_columns(spec) -> list[tuple[int, Any]]:
    """(index among a timestep's action tokens, field) of every continuous action token."""
    fields = [f for f in spec.ordered_action() for _ in range(f.size)]
    return [(k, f) for k, f in enumerate(fields) if f.kind == FieldKind.CONTINUOUS]


def _detokenize(ids: np.ndarray, field, layout: VocabLayout) -> np.ndarray:
    values = detokenize_continuous(ids, layout, companded=field.companded, field=field.name)
    return values * np.float32(field.scale)


def evaluate_task(loaded: Loaded, name: str, settings: EvalSettings, hooks: TaskHooks,
                  key: jax.Array, out_dir: str, progress: bool = True,
                  demos: Sequence[Mapping] | None = None) -> dict[str, Any]:
    """The report entry of one task (scores, lengths, speed, held-out imitation), with its video under out_dir.

    `demos`: the task's held-out episodes (`heldout_episodes`), loaded when not given.
    """
    refs = references(name, hooks.load_metadata(name))
    demos = heldout_episodes(hooks, name) if demos is None else demos
    tally = AgreementTally()
    result = rollout_task(loaded, name, settings, hooks, key, progress, demos=demos, tally=tally)
    entry = report_lib.task_scores([e.ret for e in result.episodes], refs, prompted=settings.prompted)
    entry.update(heldout_action_accuracy(loaded, name, demos, hooks.windows), heldout_source=HELDOUT_SPLIT)
    entry.update(tally.summary())
    entry.update(matched_error_reference(loaded.task_specs[name], entry, refs, settings, hooks))
    video_dir = os.path.join(out_dir, report_lib.VIDEO_DIR)
    os.makedirs(video_dir, exist_ok=True)
    video = report_lib.write_video(os.path.join(video_dir, name.replace("/", "_")), result.frames)
    entry.update(length_mean=float(np.mean([e.length for e in result.episodes])),
                 env_steps_per_s=result.env_steps / max(result.seconds, 1e-9),
                 video=os.path.relpath(video, out_dir) if video else None)
    return entry


# ---------------------------------------------------------------------------------------------------------
# Captions and text.


CAPTION_KINDS = ("seen_pairs", "novel_pairs", "digits")  # Reported apart: each answers its own question.


def caption_kind(example: Mapping) -> str:
    """'digits' (scikit-learn digit images), 'novel_pairs' (scenes of colour-shape pairs never trained on)
    or 'seen_pairs' (held-out scenes of pairs seen in training)."""
    if str(example.get("source", "scene")) == "digit":
        return "digits"
    return "novel_pairs" if bool(example.get("novel", False)) else "seen_pairs"


def select_caption_examples(examples: Sequence[Mapping], max_examples: int) -> list[Mapping]:
    """At most `max_examples`, shared out evenly between the kinds present (in stored order within each);
    a kind with fewer examples leaves its share to the others."""
    by_kind: dict[str, list[int]] = {k: [] for k in CAPTION_KINDS}
    for i in range(len(examples)):
        by_kind[caption_kind(examples[i])].append(i)
    queues = [q for q in by_kind.values() if q]
    picked: list[int] = []
    while queues and len(picked) < max_examples:
        picked += [q.pop(0) for q in queues][:max_examples - len(picked)]
        queues = [q for q in queues if q]
    return [examples[i] for i in sorted(picked)]


def caption_accuracy(loaded: Loaded, examples: Sequence[Mapping], max_examples: int,
                     parse_caption: Callable[[str], Any], progress: bool = True) -> dict[str, Any]:
    """Greedy captions of held-out images, exact match (after stripping), per kind (`caption_kind`), and
    per attribute of the scene (`parse_caption`: None for a caption that is not a scene's)."""
    examples = select_caption_examples(examples, max_examples)
    sampler = Sampler(loaded.model, loaded.layout, cache_size=int(loaded.config.seq_len))
    patch = int(loaded.config.model.patch_size)
    correct, kinds, attributes = [], [], {"count": [], "colour": [], "shape": [], "place": []}
    for start in tqdm.trange(0, len(examples), CAPTION_BATCH, desc="captions", disable=not progress):
        batch = examples[start:start + CAPTION_BATCH]
        prompts = [caption_prompt(loaded.tokenizer, loaded.layout, np.asarray(ex["image"]), patch) for ex in batch]
        ids = sampler.generate(prompts, jax.random.key(0), SamplingParams(temperature=0.0), CAPTION_MAX_TOKENS)
        for ex, row in zip(batch, ids):
            text = loaded.tokenizer.decode(row).strip() if row else ""
            correct.append(text == str(ex["caption"]).strip())
            kinds.append(caption_kind(ex))
            truth, guess = parse_caption(str(ex["caption"])), parse_caption(text)
            if truth is not None:
                for attr, hits in attributes.items():
                    hits.append(guess is not None and getattr(guess, attr) == getattr(truth, attr))
    return _caption_scores(np.asarray(correct, bool), np.asarray(kinds, str), attributes)


def _mean_or_nan(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def _caption_scores(correct: np.ndarray, kinds: np.ndarray, attributes: dict[str, list[bool]]) -> dict[str, Any]:
    """Exact match per kind (`accuracy_<kind>`, `examples_<kind>`) and over all; attribute accuracies
    over scenes."""
    out: dict[str, Any] = {"examples": int(correct.size), "accuracy_all": _mean_or_nan(correct)}
    for kind in CAPTION_KINDS:
        out[f"examples_{kind}"] = int((kinds == kind).sum())
        out[f"accuracy_{kind}"] = _mean_or_nan(correct[kinds == kind])
    out.update({f"scene_{attr}_accuracy": _mean_or_nan(np.asarray(hits)) for attr, hits in attributes.items()})
    return out


@functools.partial(jax.jit, static_argnums=0)
def _text_nll(graphdef, params, seq: TokenSequence) -> tuple[jax.Array, jax.Array]:
    """(sum of NLL, count) over text-piece targets of a batch of windows."""
    logits_BxTxV = nnx.merge(graphdef, params)(seq)
    nll_BxT = token_nll(logits_BxTxV[:, :-1], seq.tokens[:, 1:])
    weight_BxT = seq.loss_mask[:, 1:] & (seq.modality[:, 1:] == Modality.TEXT)
    return jnp.sum(nll_BxT * weight_BxT), jnp.sum(weight_BxT)


def text_perplexity(loaded: Loaded, documents: Sequence[str], windows: int, hooks: DataHooks,
                    progress: bool = True) -> dict[str, Any]:
    """Perplexity on text-piece targets (the pieces the unigram baseline counts), from full forward passes
    over the first `windows` packed windows of the held-out documents."""
    graphdef, params = nnx.split(loaded.model)
    items = hooks.text_windows(loaded.tokenizer, loaded.layout, documents, int(loaded.config.seq_len),
                               int(loaded.config.model.patch_size), windows)
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
        yield as_jax(seq_lib.stack(batch + [blank] * (WINDOW_BATCH - len(batch))))


# ---------------------------------------------------------------------------------------------------------
# Everything.


def _control(loaded: Loaded, names: Sequence[str], settings: EvalSettings, hooks: TaskHooks, out_dir: str,
             progress: bool, key_order: Sequence[str] = ()) -> dict[str, dict]:
    if not names:
        return {}
    key = jax.random.key(settings.seed)
    task_keys = {}
    for name in key_order or names:
        key, task_keys[name] = jax.random.split(key)
    heldout = {name: heldout_episodes(hooks, name) for name in names}  # Fails before any rollout.
    tasks = {}
    for name in tqdm.tqdm(names, desc="tasks", disable=not progress):
        tasks[name] = evaluate_task(loaded, name, settings, hooks, task_keys[name], out_dir, progress,
                                    demos=heldout[name])
    return tasks


def _captions_and_text(loaded: Loaded, config, sources: EvalSources, hooks: DataHooks | None,
                       progress: bool) -> dict:
    if not (sources.captions or sources.text):
        return {}
    if loaded.tokenizer is None:
        raise ValueError("The mixture has text or captions but the checkpoint holds no text tokenizer; retrain.")
    if hooks is None:
        raise ValueError("Evaluating captions or text needs DataHooks (held-out captions and documents).")
    out = {}
    if sources.captions and config.eval.caption_examples > 0 and not _is_prismer(loaded):
        out["captions"] = caption_accuracy(loaded, hooks.load_captions("test"), int(config.eval.caption_examples),
                                           hooks.parse_caption, progress)
    if sources.text and config.eval.text_batches > 0:
        text = text_perplexity(loaded, hooks.load_text_split("test"), int(config.eval.text_batches), hooks, progress)
        text["unigram_perplexity"] = float(hooks.unigram_baseline(loaded.layout.text_size))
        out["text"] = text
    return out


def vision_language_scores(loaded: Loaded, prompts: Mapping[str, Sequence[TokenizedPrompt]],
                           word_rows: Sequence[TokenSequence] = (),
                           trained_word_rows: Mapping[str, Sequence[TokenSequence]] | None = None) -> dict[str, Any]:
    """The `vision_language` section: multiple-choice accuracy (the candidate the model finds likeliest,
    `answers.answer_accuracy`) by question type on held-out scenes, and on held-out few-shot episodes
    by number of shots, each beside chance and the majority answer; with `word_rows`, the mean loss of
    each word of those episodes (`fewshot_word_nll`), and with `trained_word_rows` the same for each easier
    kind the run trained on (`fewshot_word_nll_trained_kinds`: a curriculum's progress, not the target)."""
    out: dict[str, Any] = {"method": "likeliest of the closed answer set (question type's answers, or the "
                                     "episode's two words)"}
    for section, items in prompts.items():
        if items:
            out[section] = answers.answer_accuracy(loaded.model, list(items), loaded.tokenizer, loaded.layout)
    fewshot = out.get("fewshot", {})
    shots = sorted(int(k.split("_")[1]) for k in fewshot if k.startswith("fewshot_"))
    if shots:
        out["fewshot_gain_4_over_0"] = (fewshot.get("fewshot_4", {}).get("accuracy", math.nan)
                                        - fewshot.get("fewshot_0", {}).get("accuracy", math.nan))
    if word_rows:
        out["fewshot_word_nll"] = fewshot_word_nll(loaded.model, word_rows)
    if trained_word_rows:
        out["fewshot_word_nll_trained_kinds"] = {kind: fewshot_word_nll(loaded.model, rows)
                                                 for kind, rows in trained_word_rows.items()}
    return out


def fewshot_word_nll(model: nnx.Module, rows: Sequence[TokenSequence]) -> dict[str, Any]:
    """Mean loss of the k-th word (k = 1..shots, then the query's) over episodes whose every word is
    loss-masked, `<eos>` left out. Word 1 can only be guessed from the header (ln 2 nats between its two
    words); a model that reads the demonstrations pays less on later words. Says whether in-context
    learning has begun long before accuracy moves."""
    per_row = answers.masked_token_nll(model, rows)
    words = np.stack([nll[:-1] for nll in per_row])  # Each row: shots words, the query's, then <eos>.
    return {"episodes": len(rows), "demonstrations": words.shape[1] - 1, "header_only": math.log(2),
            "by_word": [float(x) for x in words.mean(axis=0)]}


# Easier few-shot kinds a run may train on, by the config share that turns each on (`documents.FreshEpisodes`).
TRAINED_WORD_KINDS = {"one_difference": "fewshot_train_one_difference", "identical": "fewshot_train_identical",
                      "text_keys": "fewshot_train_text"}


def trained_word_kinds(train_config) -> list[str]:
    """The easier few-shot kinds the checkpoint trained on, in TRAINED_WORD_KINDS order."""
    return [kind for kind, field in TRAINED_WORD_KINDS.items() if float(train_config.data.get(field, 0.0)) > 0]


def _vision_language(loaded: Loaded, config, sources: EvalSources, hooks: DataHooks | None) -> dict:
    if not sources.vision_language:
        return {}
    if hooks is None or hooks.vision_language_prompts is None or loaded.tokenizer is None:
        raise ValueError("Evaluating vision and language needs DataHooks.vision_language_prompts and a tokenizer.")
    patch_size = int(loaded.config.model.patch_size)
    prompts = hooks.vision_language_prompts(loaded.tokenizer, loaded.layout, patch_size,
                                            int(config.eval.question_examples), int(config.eval.fewshot_examples))
    word_rows, trained_word_rows = [], {}
    if hooks.fewshot_word_rows is not None and int(config.eval.fewshot_word_episodes) > 0:
        rows = functools.partial(hooks.fewshot_word_rows, loaded.tokenizer, loaded.layout, patch_size,
                                 int(config.eval.fewshot_word_episodes), int(config.eval.fewshot_word_shots))
        word_rows = rows(kind="heldout")
        trained_word_rows = {kind: rows(kind=kind) for kind in trained_word_kinds(loaded.config)}
    return {"vision_language": vision_language_scores(loaded, prompts, word_rows, trained_word_rows)}



def _is_prismer(loaded: Loaded) -> bool:
    return str(loaded.config.model.get("kind", "gato")) == "prismer"


def _prismer(loaded: Loaded, config, sources: EvalSources, hooks: DataHooks | None, progress: bool) -> dict:
    """The `prismer` section (`prismer_eval.prismer_section`): trainable fraction, experts, held-out captions
    (greedy full passes: a Prismer model has no cached decode; seen and never-seen pairs) and questions."""
    if not _is_prismer(loaded):
        return {}
    if hooks is None or loaded.tokenizer is None:
        raise ValueError("Evaluating a Prismer model needs DataHooks (held-out captions, questions) and a tokenizer.")
    examples = (select_caption_examples(hooks.load_captions("test"), int(config.eval.caption_examples))
                if sources.captions else [])
    questions = []
    if sources.vision_language and hooks.vision_language_prompts is not None:
        questions = hooks.vision_language_prompts(loaded.tokenizer, loaded.layout, int(loaded.config.model.patch_size),
                                                  int(config.eval.question_examples), 0).get("questions", [])
    return {"prismer": prismer_eval.prismer_section(loaded, examples, questions, caption_kind=caption_kind,
                                                    parse_caption=hooks.parse_caption, progress=progress)}


def evaluate_checkpoint(loaded: Loaded, config: ml_collections.ConfigDict, out_dir: str, sources: EvalSources,
                        task_hooks: TaskHooks | None = None, data_hooks: DataHooks | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Evaluates a loaded checkpoint on `sources` with `config.eval`; writes the report to out_dir and
    returns it. `task_hooks` are needed when `sources.tasks` is not empty, `data_hooks` for captions or text."""
    if sources.tasks and task_hooks is None:
        raise ValueError("Rolling out control tasks needs TaskHooks (environments and held-out episodes).")
    settings = EvalSettings.from_config(config)
    os.makedirs(out_dir, exist_ok=True)
    tasks = _control(loaded, list(sources.tasks), settings, task_hooks, out_dir, progress, sources.key_order)
    report = {"workdir": os.path.abspath(os.path.dirname(out_dir)), "step": loaded.step,
              "settings": settings._asdict(), "tasks": tasks, "summary": report_lib.summary(tasks)}
    report.update(_captions_and_text(loaded, config, sources, data_hooks, progress))
    report.update(_vision_language(loaded, config, sources, data_hooks))
    report.update(_prismer(loaded, config, sources, data_hooks, progress))
    if "vision_language" in report and "captions" in report:
        report["vision_language"]["caption_exact_match"] = {
            k: report["captions"].get(k) for k in ("accuracy_seen_pairs", "accuracy_novel_pairs", "accuracy")}
    report_lib.write_report(out_dir, report)
    return report
