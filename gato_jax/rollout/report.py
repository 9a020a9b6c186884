"""Scores and the evaluation report: normalised returns, report.json, report.md, a bar chart, videos.

Expert-normalised score = (return - random) / (expert - random) (docs/TOKEN_FORMAT.md "Acting and
evaluation"), computed on the mean return (the same as the mean of per-episode scores: it is linear).
Both references are measured under the evaluation settings (sticky actions, step cap) and the report
says how many episodes each is the mean of, and their spread. No human-normalised score: the
published human references are full-game scores and evaluation episodes stop at the step cap, so the
two do not compare. The paper's headline is how many tasks reach 50% of expert, so the chart marks 0.5
and 1.0.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

REPORT_JSON, REPORT_MD, CHART_PNG, VIDEO_DIR = "report.json", "report.md", "normalized_scores.png", "videos"
THRESHOLDS = (0.5, 0.8, 1.0)  # Fractions of expert the summary counts tasks at.


class References(NamedTuple):
    """Reference returns of one task, from the dataset metadata (evaluation settings)."""

    random: float  # Mean return of a uniformly random policy.
    expert: float  # Mean return of the expert.
    random_std: float | None = None  # Standard deviation over the random episodes.
    expert_std: float | None = None  # Standard deviation over the expert episodes.
    random_episodes: int | None = None  # Episodes `random` is the mean of (None: not recorded).
    expert_episodes: int | None = None  # Episodes `expert` is the mean of.


def normalized_score(score: float, random: float, reference: float) -> float:
    """(score - random) / (reference - random); NaN when the references coincide (no scale)."""
    span = float(reference) - float(random)
    return (float(score) - float(random)) / span if span else math.nan


def task_scores(returns: Sequence[float], refs: References, *, prompted: bool) -> dict[str, Any]:
    """The per-task entry of report.json."""
    returns = np.asarray(returns, np.float64)
    mean = float(returns.mean()) if returns.size else math.nan
    entry = {
        "episodes": int(returns.size), "return_mean": mean,
        "return_std": float(returns.std()) if returns.size else math.nan,
        "random": float(refs.random), "expert": float(refs.expert),
        "random_std": refs.random_std, "expert_std": refs.expert_std,
        "random_episodes": refs.random_episodes, "expert_episodes": refs.expert_episodes,
        "normalized": normalized_score(mean, refs.random, refs.expert), "prompted": bool(prompted),
    }
    return entry


def summary(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and median normalised score, and how many tasks reach each threshold of expert."""
    scores = [t["normalized"] for t in tasks.values() if not math.isnan(t["normalized"])]
    out: dict[str, Any] = {"tasks": len(tasks)}
    if scores:
        out.update(mean_normalized=float(np.mean(scores)), median_normalized=float(np.median(scores)))
        out.update({f"tasks_at_{int(100 * th)}pct": sum(s >= th for s in scores) for th in THRESHOLDS})
    return out


# ---------------------------------------------------------------------------------------------------------
# Files.


def _finite(x: Any) -> Any:
    """JSON has no NaN: NaN and inf become null, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: str, report: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_finite(report), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"
    return [line(header), line(["---"] * len(header)), *(line(r) for r in rows), ""]


def _reference(t: Mapping[str, Any], kind: str) -> str:
    """'mean ± std (n)' of a reference return."""
    return f"{_fmt(t[kind])} ± {_fmt(t.get(f'{kind}_std'))} ({_fmt(t.get(f'{kind}_episodes'))})"


def _task_rows(tasks: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    return [[name, t["episodes"], f"{_fmt(t['return_mean'])} ± {_fmt(t['return_std'])}", _reference(t, "random"),
             _reference(t, "expert"), _fmt(t["normalized"], 3), "yes" if t["prompted"] else "no",
             t.get("heldout_source", "-"), _fmt(t.get("heldout_action_accuracy")),
             _fmt(t.get("heldout_majority_accuracy")), _fmt(t.get("heldout_repeat_accuracy")),
             _action_mae(t), _fmt(t.get("heldout_mean_action_mae"), 3),
             _fmt(t.get("onpolicy_expert_agreement")), _matched(t)]
            for name, t in sorted(tasks.items())]


def _action_mae(t: Mapping[str, Any]) -> str:
    """'likeliest bin / bin nearest the mean' held-out MAE, or the first alone (reports before the second)."""
    mae, mean = t.get("heldout_action_mae"), t.get("heldout_action_mae_mean_bin")
    return _fmt(mae, 3) if mean is None else f"{_fmt(mae, 3)} / {_fmt(mean, 3)}"


def _matched(t: Mapping[str, Any]) -> str:
    """'normalised (error rate, episodes)' of the expert erring at the model's held-out rate, or '-'."""
    m = t.get("matched_error_expert")
    if not m:
        return "-"
    return f"{_fmt(m['normalized'])} ({_fmt(m['error_rate'])}, {m['episodes']})"


TASK_HEADER = ("task", "episodes", "return (mean ± std)", "random ± std (episodes)", "expert ± std (episodes)",
               "expert-normalized", "prompted", "held-out split", "held-out action acc.", "majority-class acc.",
               "repeat-last-action acc.", "action MAE: likeliest / mean bin", "mean-action MAE",
               "agreement with the expert on own states",
               "expert erring as often, at random steps: normalized (error rate, episodes)")


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: a table of control tasks, then captions and text when evaluated."""
    lines = [f"# Evaluation of {report.get('workdir', '')} at step {report.get('step', '?')}", ""]
    if report.get("settings"):
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(report["settings"].items())), ""]
    if report.get("tasks"):
        lines += _table(TASK_HEADER, _task_rows(report["tasks"]))
        lines += ["Returns and references share the evaluation settings (sticky actions, step cap). Action "
                  "accuracies are teacher-forced on held-out episodes; action MAE (continuous actions only, "
                  "in action units; of the likeliest bin, then of the bin nearest the distribution's mean) sits "
                  "beside always predicting the held-out mean action. Agreement on own "
                  "states: how often the model chose what the expert would have chosen in the states the model "
                  "itself reached during these rollouts (covariate shift shows as agreement far below "
                  "held-out accuracy). The last column "
                  "plays the expert with 1 - held-out accuracy of its actions replaced by random other ones: "
                  "what that error rate allows when errors fall anywhere.", ""]
        lines += ["Summary: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(report.get("summary", {}).items())), ""]
    if "captions" in report:
        c = report["captions"]
        lines += ["## Captions (held-out split, greedy, exact match)", ""]
        kinds = ("seen_pairs", "novel_pairs", "digits")
        lines += _table(["scenes of seen colour-shape pairs", "scenes of novel pairs", "digits"],
                        [[f"{_fmt(c.get(f'accuracy_{k}'), 3)} ({c.get(f'examples_{k}', 0)})" for k in kinds]])
    if "text" in report:
        t = report["text"]
        lines += ["## Text (held-out works)", ""]
        lines += _table(["windows", "tokens", "perplexity", "unigram baseline"],
                        [[t["windows"], t["tokens"], _fmt(t["perplexity"]), _fmt(t.get("unigram_perplexity"))]])
    if "vision_language" in report:
        lines += _vision_language_lines(report["vision_language"])
    if "prismer" in report:
        lines += _prismer_lines(report["prismer"])
    return "\n".join(lines)


def _vision_language_lines(vl: Mapping[str, Any]) -> list[str]:
    """Held-out questions by type and few-shot episodes by shots, each beside chance and majority (and, for
    few-shot, the Bayes-optimal reader of the demonstrations)."""
    lines = ["", f"## Vision and language (held-out scenes; {vl.get('method', '')})", ""]
    for section in ("questions", "fewshot"):
        scores = sorted(vl.get(section, {}).items())
        ideal = bool(scores) and all("ideal" in s for _, s in scores)
        rows = [[kind, s["count"], _fmt(s["accuracy"], 3), _fmt(s["chance"], 3), _fmt(s["majority"], 3)]
                + ([_fmt(s["ideal"], 3)] if ideal else []) for kind, s in scores]
        if rows:
            lines += _table([section, "examples", "accuracy", "chance", "majority"]
                            + (["Bayes-optimal reader"] if ideal else []), rows)
    if "fewshot_gain_4_over_0" in vl:
        lines += [f"4-shot minus 0-shot accuracy: {_fmt(vl['fewshot_gain_4_over_0'], 3)}", ""]
    for kind, s in sorted(vl.get("fewshot", {}).items()):
        if s.get("by_group"):
            lines += [f"{kind} by the attribute the words name: " + " / ".join(
                f"{g} {_fmt(v['accuracy'], 3)} ({v['count']})" for g, v in s["by_group"].items()), ""]
    if "fewshot_word_nll" in vl:
        w = vl["fewshot_word_nll"]
        lines += [f"Loss of each word (nats) in {w['episodes']} unpaired {w['demonstrations']}-demonstration "
                  f"episodes on held-out images, demonstrations 1-{w['demonstrations']} then the query "
                  f"({_fmt(w['header_only'], 3)} = ln 2 is reading the header only): "
                  + " / ".join(_fmt(x, 2) for x in w["by_word"]), ""]
    for kind, w in vl.get("fewshot_word_nll_trained_kinds", {}).items():
        lines += [f"The same episodes made as the easier kind `{kind}` this run trained on (a curriculum's "
                  "progress, not the target): " + " / ".join(_fmt(x, 2) for x in w["by_word"]), ""]
    return lines


def write_chart(path: str, tasks: Mapping[str, Mapping[str, Any]]) -> None:
    """Bar chart of expert-normalised scores with lines at 0.5 and 1.0."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = sorted(tasks)
    scores = [tasks[n]["normalized"] for n in names]
    known = [s is not None and math.isfinite(s) for s in scores]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.5))
    bars = ax.bar(range(len(names)), [s if k else 0.0 for s, k in zip(scores, known)], color="tab:blue")
    ax.bar_label(bars, [f"{s:.3f}" if k else "n/a" for s, k in zip(scores, known)], fontsize=8)
    for level, style in ((0.5, "--"), (1.0, "-")):
        ax.axhline(level, color="grey", linestyle=style, linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("expert-normalised score")
    ax.set_title("Gato evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_curve_chart(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One panel per task: held-out action accuracy at each checkpoint step (`checkpoint_eval.heldout_curve`),
    with the majority-action and repeat-last-action baselines of the last step as lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = sorted(k for k in rows[0] if k != "step")
    fig, axes = plt.subplots(1, len(names), figsize=(3.5 * len(names), 3.2), sharey=True, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(steps, [r[name]["heldout_action_accuracy"] for r in rows], "o-", label="model (teacher-forced)")
        ax.axhline(rows[-1][name]["heldout_majority_accuracy"], color="grey", linestyle="--", label="majority action")
        ax.axhline(rows[-1][name]["heldout_repeat_accuracy"], color="orange", linestyle=":", label="repeat last action")
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("held-out action accuracy (test split)")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def curve_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The curve as a table: one row per step, held-out accuracy per task; baselines of the last step."""
    names = sorted(k for k in rows[0] if k != "step")
    table = _table(["step", *names], [[r["step"], *(_fmt(r[n]["heldout_action_accuracy"], 3) for n in names)]
                                      for r in rows])
    last = rows[-1]
    baselines = [f"{n}: majority {_fmt(last[n]['heldout_majority_accuracy'], 3)}, repeat-last "
                 f"{_fmt(last[n]['heldout_repeat_accuracy'], 3)}" for n in names]
    return "\n".join(["# Held-out action accuracy by checkpoint (test split, teacher-forced)", "", *table,
                      "Baselines: " + "; ".join(baselines), ""])


def _even_frames(frames: Sequence[np.ndarray], multiple: int = 16) -> list[np.ndarray]:
    """Pads every frame (with black) to sides that are multiples of 16, as H.264 wants."""
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    return [np.pad(f, ((0, h - f.shape[0]), (0, w - f.shape[1]), (0, 0))) for f in frames]


def write_video(path_without_ext: str, frames: Sequence[np.ndarray], fps: int = 30) -> str | None:
    """An MP4 (imageio-ffmpeg) or, without ffmpeg, a GIF of the frames; the path written, None if no frames."""
    import imageio.v2 as imageio

    if not frames:
        return None
    frames = _even_frames([np.asarray(f, np.uint8) for f in frames])
    try:
        import imageio_ffmpeg  # noqa: F401

        path = f"{path_without_ext}.mp4"
        with warnings.catch_warnings():  # ffmpeg runs as a subprocess: fork + exec, which JAX's fork warning misreads.
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    except ImportError:
        path = f"{path_without_ext}.gif"
        imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)
    return path


def write_report(out_dir: str, report: dict[str, Any]) -> dict[str, str]:
    """report.json, report.md and (with control tasks) the chart, in `out_dir`.

    Their paths are returned and also recorded in the report itself, under "files".
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, REPORT_JSON), "md": os.path.join(out_dir, REPORT_MD)}
    if report.get("tasks"):
        paths["png"] = os.path.join(out_dir, CHART_PNG)
        write_chart(paths["png"], _finite(report["tasks"]))
    report["files"] = paths
    with open(paths["md"], "w") as f:
        f.write(markdown(_finite(report)))
    write_json(paths["json"], report)
    return paths


def _prismer_lines(p: Mapping[str, Any]) -> list[str]:
    """What trains, which experts, held-out captions and questions (README "Prismer")."""
    c = p.get("captions", {})
    lines = ["", f"## Prismer ({p['kind']}; experts: {', '.join(p['experts']) or 'none'})", "",
             f"Trainable parameters: {p['trainable_params']} of {p['total_params']} "
             f"({_fmt(p['trainable_fraction'], 3)}); frozen groups: {', '.join(p['frozen']) or 'none'}", ""]
    lines += _table(["captions, seen pairs", "captions, never-seen pairs", "questions"],
                    [[f"{_fmt(c.get('accuracy_seen_pairs'), 3)} ({c.get('examples_seen_pairs', 0)})",
                      f"{_fmt(c.get('accuracy_novel_pairs'), 3)} ({c.get('examples_novel_pairs', 0)})",
                      _fmt(p.get('question_accuracy'), 3)]])
    return lines
