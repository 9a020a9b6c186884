"""`make eval`: `python -m gato_jax.evaluate --config experiments/NAME.py --workdir runs/NAME [--step N]`.

Any config field can be overridden, e.g. `--config.eval.episodes=10 --config.eval.prompted=False`.
`--curve` instead measures held-out action accuracy at every checkpoint (learning curves, no rollouts):
WORKDIR/eval/heldout_curve.{json,md,png}. `--tasks=control_pendulum,...` evaluates only those control tasks
(no captions or text) into WORKDIR/eval_<tasks>/, leaving the full report in WORKDIR/eval untouched.

Checks the inputs (config values, a checkpoint in the workdir that this config's vocabulary matches, the
held-out data of every task), loads the checkpoint's parameters, wires environments, episodes and
held-out windows from data_pipelines into `gato_jax.rollout.checkpoint_eval.evaluate_checkpoint`, and
prints the report. Every mistake ends with one line naming the fix (`gato_jax.cli`).
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import gymnasium
import ml_collections
from absl import flags

from data_pipelines import captions, corpus, documents, episodes, experts, prepare, sources, tasks
from gato_jax import cli
from gato_jax.errors import DataError
from gato_jax.load import checkpoint_steps, load_checkpoint, read_meta
from gato_jax.logs import quiet_libraries
from gato_jax.rollout import report as report_lib
from gato_jax.rollout.checkpoint_eval import DataHooks, EvalSources, TaskHooks, evaluate_checkpoint, heldout_curve
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train.checkpoint import CheckpointMeta

PROG = "python -m gato_jax.evaluate"
EVAL_DIR = "eval"


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/; the report goes to WORKDIR/eval.",
                        flag_values=fv)
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest readable).", flag_values=fv)
    flags.DEFINE_bool("curve", False, "Held-out action accuracy of every control task at every checkpoint "
                      "(learning curves) instead of the full evaluation.", flag_values=fv)
    flags.DEFINE_list("tasks", [], "Only these control tasks of the mixture (no captions or text); the report "
                      "goes to WORKDIR/eval_<tasks> (default: everything, to WORKDIR/eval).", flag_values=fv)


def task_hooks(dirs: Mapping[str, Path], frame_size: int, frame_filter: str = "area") -> TaskHooks:
    """Real environments (Atari frames of the size and filter the model trained on) and the prepared episodes."""
    return TaskHooks(
        make_env=functools.partial(tasks.make_env, frame_size=frame_size, frame_filter=frame_filter),
        action_to_env=tasks.action_to_env,
        load_episodes=lambda name, split: episodes.load_episodes(dirs[name], name, split),
        load_metadata=lambda name: episodes.load_metadata(dirs[name], name),
        windows=sources.control_windows,
        make_vector_env=functools.partial(tasks.make_vector_env, frame_size=frame_size, frame_filter=frame_filter),
        expert_with_errors=lambda name, rate, **settings: episodes.evaluate(
            name, "expert", error_rate=rate, frame_size=frame_size, frame_filter=frame_filter, workers=None,
            **settings),
        shadow_expert=shadow_expert)


def shadow_expert(name: str, env: gymnasium.Env, record: Callable[[bool], None]) -> gymnasium.Env:
    """`env` with the task's expert asked in every state (`experts.ExpertShadow`); discrete actions only."""
    if name not in experts.expert_factories() or not isinstance(env.action_space, gymnasium.spaces.Discrete):
        return env
    return experts.ExpertShadow(env, experts.make_policy(name), record)


def vision_language_prompts(documents_dir: Path, tokenizer, layout, patch_size: int, max_questions: int,
                            max_episodes: int) -> dict[str, list]:
    """Held-out visual questions and few-shot episodes (test split, disjoint by pixels) as prompts."""
    questions = documents.load_documents(documents_dir, "test", "questions")
    episodes_ = documents.load_documents(documents_dir, "test", "fewshot")
    return {"questions": documents.question_prompts(questions, tokenizer, layout, patch_size, max_questions),
            "fewshot": documents.fewshot_prompts(episodes_, tokenizer, layout, patch_size,
                                                 max_examples=max_episodes)}


def data_hooks(dirs: Mapping[str, Path]) -> DataHooks:
    """The prepared captions, text and documents, cut and parsed as in training."""
    vl = functools.partial(vision_language_prompts, dirs["documents"]) if "documents" in dirs else None
    words = functools.partial(documents.fewshot_word_rows, dirs["documents"]) if "documents" in dirs else None
    return DataHooks(
        load_captions=lambda split: captions.load_captions(dirs["captions"], split),
        load_text_split=lambda split: corpus.load_text_split(dirs["text"], split),
        unigram_baseline=lambda size: corpus.unigram_baseline(dirs["text"], size),
        text_windows=sources.text_windows, parse_caption=captions.parse_caption, vision_language_prompts=vl,
        fewshot_word_rows=words)


def eval_sources(config, only: Sequence[str] = ()) -> EvalSources:
    """Everything the mixture holds, or only the control tasks in `only` (UsageError for one it lacks)."""
    mixture, controls = list(config.data.mixture), tuple(prepare.control_tasks(config))
    if only:
        unknown = sorted(set(only) - set(controls))
        if unknown:
            raise cli.UsageError(f"--tasks names {unknown}, not control tasks of this experiment's mixture; pass "
                                 f"some of {list(controls)}.")
        return EvalSources(tuple(n for n in controls if n in only), key_order=controls)
    return EvalSources(controls, any(n in prepare.CAPTION_SOURCES for n in mixture),
                       any(n in prepare.TEXT_SOURCES for n in mixture), prepare.mixes_documents(config))


def report_dir(workdir: str, only: Sequence[str] = ()) -> str:
    """WORKDIR/eval, or WORKDIR/eval_<tasks> for a `--tasks` evaluation (the full report stays whole)."""
    return os.path.join(workdir, "_".join([EVAL_DIR, *sorted(only)]))


def dataset_dirs(config, meta: CheckpointMeta) -> dict[str, Path]:
    """The datasets the checkpoint trained on when they are still there (unless config.data.dir or
    $GATO_DATA_DIR says where to look), else those of this config's settings; DataError when missing."""
    saved = meta.data.get("dataset_dirs") or {}
    overridden = bool(config.data.dir or os.environ.get("GATO_DATA_DIR"))
    needed = prepare.datasets(config)
    if not overridden and all(name in saved and Path(saved[name]).is_dir() for name in needed):
        return {name: Path(saved[name]) for name in needed}
    try:
        return prepare.check_prepared(config)
    except DataError as err:
        raise DataError(f"{err} Evaluation reads each task's held-out episodes and reference returns.") from None


def check_frames(config: ml_collections.ConfigDict, trained: ml_collections.ConfigDict) -> None:
    """UsageError when this config's Atari frames (size, filter) differ from the checkpoint's: the held-out
    episodes and prompts would be read from datasets of other frames than the environments show."""
    for field, default in (("frame_size", 80), ("frame_filter", "area")):
        given, used = config.data.get(field, default), trained.data.get(field, default)
        if prepare.control_tasks(config) and given != used:
            raise cli.UsageError(f"config.data.{field} is {given!r} but the checkpoint trained on {used!r} frames; "
                                 f"pass --config.data.{field}={used} (as for make train).")


def checkpoint_task_hooks(dirs: Mapping[str, Path], trained: ml_collections.ConfigDict) -> TaskHooks:
    """`task_hooks` with the frames a checkpoint trained on (`trained` is its config; checkpoints from
    before `data.frame_filter` existed trained on area-filtered frames)."""
    return task_hooks(dirs, int(trained.data.frame_size), str(trained.data.get("frame_filter", "area")))


def _curve(config, workdir: str, dirs: Mapping[str, Path], layout: VocabLayout) -> int:
    """`--curve`: held-out action accuracy of the experiment's control tasks at every checkpoint."""
    names = prepare.control_tasks(config)
    if not names:
        raise cli.UsageError("--curve measures control tasks and this experiment's mixture has none; "
                             "run make eval without --curve.")
    hooks = checkpoint_task_hooks(dirs, read_meta(workdir, expected_layout=layout).config)
    rows = heldout_curve(lambda step: load_checkpoint(workdir, step, expected_layout=layout),
                         checkpoint_steps(workdir), names, hooks)
    out = Path(workdir) / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    report_lib.write_json(str(out / "heldout_curve.json"), {"workdir": workdir, "rows": rows})
    report_lib.write_curve_chart(str(out / "heldout_curve.png"), rows)
    text = report_lib.curve_markdown(rows)
    (out / "heldout_curve.md").write_text(text)
    print(text)
    print(f"Curve: {out / 'heldout_curve.json'} (chart heldout_curve.png)")
    return 0


def _main(argv: list[str]) -> int:
    parsed = cli.parse(argv, _define, prog=PROG, required=("workdir",))
    config, workdir = parsed.config, parsed.flags["workdir"]
    prepare.check_config(config)
    if not os.path.isdir(workdir):
        raise cli.UsageError(f"--workdir {workdir} does not exist; pass the run directory `make train` wrote "
                             "(make eval EXP=NAME WORKDIR=runs/NAME).")
    quiet_libraries()
    layout = VocabLayout.from_config(config)
    if parsed.flags["curve"] and parsed.flags["step"] is not None:
        raise cli.UsageError("--curve measures every checkpoint; drop --step (or drop --curve to evaluate one step).")
    only = parsed.flags["tasks"]
    sources = eval_sources(config, only)
    if parsed.flags["curve"] and only:
        raise cli.UsageError("--curve measures every control task; drop --tasks (or drop --curve).")
    meta = read_meta(workdir, parsed.flags["step"], expected_layout=layout)
    check_frames(config, meta.config)
    dirs = dataset_dirs(config, meta)
    if parsed.flags["curve"]:
        return _curve(config, workdir, dirs, layout)
    loaded = load_checkpoint(workdir, parsed.flags["step"], expected_layout=layout)
    report = evaluate_checkpoint(loaded, config, report_dir(workdir, only), sources,
                                 checkpoint_task_hooks(dirs, loaded.config), data_hooks(dirs))
    with open(report["files"]["md"]) as f:
        print(f.read())
    print(f"Report: {report['files']['json']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs evaluation on argv (default sys.argv[1:]); returns the exit status."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
