"""What every entry point shares: flag parsing, input checks before any work, and one-line errors.

Every `make` target (`main`, `data_pipelines.prepare`, `evaluate`, `sample`, `compile`, `bench`) is
`sys.exit(main())` over `run(body, argv)`: a mistake in what was asked for (`UsageError`), a missing or
incompatible checkpoint, missing data, or any error from deep inside a library ends as one line on
stderr that names the problem and the fix, and a non-zero exit status (2 for a usage mistake, 1 for a
failure while working); `--debug` or `GATO_DEBUG=1` shows the full traceback instead.

Checks run in this order, all before data, models or checkpoints are touched: flags and the experiment
(`parse`: an unknown experiment, config argument, flag or config field), the config's values
(`check_config`: every range in `RULES`, the mixture's sources), the devices (`check_devices`: the mesh
fits, the batch divides over it), then each entry point's own inputs (workdir, checkpoint, image).
"""
from __future__ import annotations

import dataclasses
import difflib
import glob
import importlib.util
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from gato_jax import sharding
from gato_jax.configs import FRAME_FILTERS
from gato_jax.errors import GatoError, UsageError
from gato_jax.tokenizers.spec import MAX_FRAME_HISTORY

DEBUG_ENV = "GATO_DEBUG"  # GATO_DEBUG=1 prints tracebacks, as --debug does.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS_DIR = os.path.join(REPO_ROOT, "experiments")
MAX_LINE = 400  # Characters of a library's message kept in the one line.

# `make eval` episode seeds stay below dagger.ROUND_SEED (1,000,000), where DAgger rounds' episodes start, so
# no evaluated episode is one trained on (with config.seed below 500,000).
MAX_EVAL_SEED_OFFSET = 500_000


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """Whitespace (newlines included) collapsed to single spaces, cut at `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def error_line(err: BaseException) -> str:
    """The one line an error is reported as: our own errors as they are, anything else with its type."""
    if isinstance(err, GatoError):
        return one_line(err)
    name = type(err).__name__
    hint = f" (rerun with --debug or {DEBUG_ENV}=1 for the traceback)"
    return one_line(f"{name}: {err}" if str(err) else name) + hint


def run(body: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs an entry point's body on argv (default sys.argv[1:]) and returns its exit status.

    Errors become one line on stderr: status 2 for `UsageError`, 1 for anything else; 130 on Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not debug and not getattr(sys.unraisablehook, "drops_closed_loop_noise", False):
        sys.unraisablehook = _without_closed_loop_noise(sys.unraisablehook)
    try:
        return int(body(argv) or 0)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place every error is turned into one line.
        if debug:
            traceback.print_exc()
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


def _without_closed_loop_noise(hook):
    """An unraisable-exception hook that drops one known harmless message: after orbax gives up on a
    damaged checkpoint step, tensorstore's pending reads call back into the closed event loop (one
    'Event loop is closed' traceback each). The step is already reported in one line; --debug shows all."""
    def filtered(unraisable) -> None:
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        hook(unraisable)

    filtered.drops_closed_loop_noise = True
    return filtered


# ---------------------------------------------------------------------------------------------------------
# Flags and experiments.


@dataclasses.dataclass
class Parsed:
    """Parsed flags (`flags[name]`) and the experiment config with its overrides applied (None without one)."""

    flags: dict[str, Any]
    config: ml_collections.ConfigDict | None
    config_spec: str | None


FlagDefiner = Callable[[flags.FlagValues], None]


def parse(argv: Sequence[str], define: FlagDefiner, *, prog: str, config: bool = True,
          required: Iterable[str] = ()) -> Parsed:
    """Parses `--config experiments/NAME.py[:arg]`, its `--config.a.b=value` overrides and the flags `define`
    adds; raises UsageError for an unknown experiment, argument, flag or config field, or a bad value."""
    argv = list(argv)
    if "--help" in argv or "-h" in argv:
        fv = flags.FlagValues()
        define(fv)
        print(f"usage: {prog} [--config experiments/NAME.py[:arg]] [--config.FIELD=value ...] [--flag=value ...] "
              f"[--debug]\n{fv.main_module_help()}")
        raise SystemExit(0)
    argv, spec = _pop_config_flag(argv)
    if config and spec is None:
        raise UsageError(f"{prog} needs --config experiments/NAME.py; choose NAME from {experiment_names()} "
                         "(make ... EXP=NAME).")
    experiment = load_experiment(spec) if spec is not None else None
    fv = flags.FlagValues()
    define(fv)
    if experiment is not None:
        _check_override_paths(experiment, argv)
        config_flags.DEFINE_config_dict("config", experiment, flag_values=fv, sys_argv=[prog, *argv])
    try:
        rest = fv([prog, *argv])
    except flags.UnrecognizedFlagError as err:
        raise UsageError(_unknown_flag(err.flagname, fv)) from None
    except flags.Error as err:
        raise UsageError(f"{one_line(err)}; give the flag a value of its type.") from None
    if len(rest) > 1:
        raise UsageError(f"unexpected argument {rest[1]!r}; flags take the form --name=value "
                         "(quote values with spaces).")
    values = {name: fv[name].value for name in fv if "." not in name and name != "config"}
    for name in required:
        if values.get(name) in (None, ""):
            raise UsageError(f"--{name} is missing; pass --{name}=... ({fv[name].help})")
    return Parsed(values, fv["config"].value if experiment is not None else None, spec)


def _pop_config_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """argv without `--config X` / `--config=X`, and X (overrides `--config.a=b` stay in argv)."""
    out, spec, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a value: --config experiments/NAME.py[:smoke].")
            spec, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    return out, spec


def experiment_names() -> list[str]:
    """Experiments shipped in experiments/ (one file each)."""
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(EXPERIMENTS_DIR, "*.py"))
                  if not os.path.basename(p).startswith("_"))


def load_experiment(spec: str) -> ml_collections.ConfigDict:
    """`experiments/NAME.py[:arg]` (or `NAME[:arg]`) -> its locked config; UsageError when NAME or arg is unknown."""
    path, _, arg = spec.partition(":")
    if not path.endswith(".py"):
        path = os.path.join(EXPERIMENTS_DIR, f"{path}.py")
    name = os.path.basename(path)[:-3]
    if not os.path.isfile(path):
        raise UsageError(f"unknown experiment {name!r} (no file {path}); choose one of {experiment_names()}, "
                         "e.g. make train EXP=atari_mix.")
    module_spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        return module.get_config(arg or None)
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"experiment {name!r}: {one_line(err)}") from None


def _config_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            out += _config_paths(value, path + ".")
    return out


def _check_override_paths(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
    """Every `--config.a.b=...` names an existing field (the config is locked: no field can be added)."""
    known = _config_paths(config)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        if path not in known:
            close = difflib.get_close_matches(path, known, n=1)
            hint = f"did you mean --config.{close[0]}?" if close else "see gato_jax/configs.py for every field"
            raise UsageError(f"unknown config field {path!r} in --config.{path}; {hint}")


_ABSL_FLAGS = {"flagfile", "undefok", "config"}  # Flags absl defines itself, not worth suggesting.


def _unknown_flag(name: str, fv: flags.FlagValues) -> str:
    known = sorted(n for n in fv if not n.startswith("config.") and len(n) > 1 and n not in _ABSL_FLAGS)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean --{close[0]}?" if close else f"the flags are {['--' + n for n in known]}"
    return f"unknown flag --{name}; {hint}"


# ---------------------------------------------------------------------------------------------------------
# Config values.


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _non_negative(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def _probability(x) -> bool:
    return _non_negative(x) and x <= 1


def _below_one(x) -> bool:
    return _non_negative(x) and x < 1


def _fractions(xs) -> bool:
    return all(_positive(x) and x <= 1 for x in xs)


# (field, check, what it must be). Fields a config lacks are skipped (older or narrower configs).
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("num_train_steps", _positive, "> 0"),
    ("batch_size", _positive, "> 0"),
    ("seq_len", _positive, "> 0"),
    ("log_every", _positive, "> 0"),
    ("eval_every", _non_negative, ">= 0 (0 disables)"),
    ("eval_batches", _non_negative, ">= 0"),
    ("checkpoint_every", _positive, "> 0"),
    ("max_checkpoints_to_keep", _positive, ">= 1"),
    ("model.num_layers", _positive, "> 0"),
    ("model.d_model", _positive, "> 0"),
    ("model.mlp_dim", _positive, "> 0"),
    ("model.num_heads", _positive, "> 0"),
    ("model.head_dim", _positive, "> 0"),
    ("model.patch_size", _positive, "> 0"),
    ("model.dropout_rate", _below_one, "in [0, 1)"),
    ("model.dtype", lambda x: x in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
    ("model.param_dtype", lambda x: x in ("float32", "bfloat16"), "'float32' or 'bfloat16'"),
    ("optimizer.peak_lr", _positive, "> 0 and finite"),
    ("optimizer.init_lr", _non_negative, ">= 0"),
    ("optimizer.warmup_steps", _non_negative, ">= 0"),
    ("optimizer.decay_factor", lambda x: _positive(x) and x >= 1, ">= 1"),
    ("optimizer.b1", _below_one, "in [0, 1)"),
    ("optimizer.b2", _below_one, "in [0, 1)"),
    ("optimizer.eps", _positive, "> 0"),
    ("optimizer.weight_decay", _non_negative, ">= 0"),
    ("optimizer.grad_clip", _positive, "> 0"),
    ("train.loss_position_caps", _fractions, "fractions in (0, 1]"),
    ("train.image_position_caps", _fractions, "fractions in (0, 1]"),
    ("train.scan_unroll", _non_negative, ">= 0"),
    ("data.episodes_per_task", _positive, "> 0"),
    ("data.max_episode_steps", _positive, "> 0"),
    ("data.frame_size", _positive, "> 0"),
    ("data.frame_filter", lambda x: x in FRAME_FILTERS, " or ".join(map(repr, FRAME_FILTERS))),
    ("data.frame_history", lambda x: isinstance(x, int) and 1 <= x <= MAX_FRAME_HISTORY, f"1 to {MAX_FRAME_HISTORY}"),
    ("data.prompt_prob", _probability, "a probability in [0, 1]"),
    ("data.prompt_end_fraction", _probability, "a probability in [0, 1]"),
    ("data.min_return_fraction", _probability, "in [0, 1]"),
    ("data.record_noise_prob", _probability, "a probability in [0, 1]"),
    ("data.record_noise_hold", _positive, ">= 1"),
    ("data.record_noise_std", _non_negative, ">= 0"),
    ("data.reference_episodes", _positive, "> 0"),
    ("data.text_vocab_size", _positive, "> 0"),
    ("data.caption_train_examples", _positive, "> 0"),
    ("data.caption_test_examples", _positive, "> 0"),
    ("data.caption_image_size", _positive, "> 0"),
    ("data.num_workers", _non_negative, ">= 0"),
    ("data.fewshot_train_max_shots", _non_negative, ">= 0 (0 trains on the stored episodes)"),
    ("data.fewshot_train_one_difference", _probability, "a share in [0, 1]"),
    ("data.fewshot_train_identical", _probability, "a share in [0, 1]"),
    ("data.fewshot_train_text", _probability, "a share in [0, 1]"),
    ("data.fewshot_late_step", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0,
     "a whole training step >= 0 (0: one stage)"),
    ("data.fewshot_late_text", _probability, "a share in [0, 1]"),
    ("data.fewshot_late_identical", _probability, "a share in [0, 1]"),
    ("dagger.episodes", lambda x: _positive(x) and x < 1000, "in 1..999 (rounds' episode seeds are 1000 apart)"),
    ("dagger.share", _probability, "a share in [0, 1]"),
    ("dagger.beta", _probability, "a probability in [0, 1] (0: the model acts on every step of a round)"),
    ("dagger.steps", lambda xs: all(_positive(x) and int(x) == x for x in xs) and len(set(xs)) == len(xs),
     "distinct whole training steps > 0"),
    ("train_seed_offset", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0,
     "a whole number >= 0 (0: training follows config.seed)"),
    ("eval.episodes", _positive, "> 0"),
    ("eval.num_envs", _positive, "> 0"),
    ("eval.max_steps", _positive, "> 0"),
    ("eval.sticky_actions", _probability, "a probability in [0, 1]"),
    ("eval.seed_offset", lambda x: isinstance(x, int) and 0 <= x < MAX_EVAL_SEED_OFFSET,
     f"0 to {MAX_EVAL_SEED_OFFSET - 1} (DAgger rounds' episodes use seeds from 1,000,000)"),
    ("eval.matched_error_episodes", _non_negative, ">= 0 (0 skips the expert-at-the-model's-error-rate reference)"),
    ("eval.temperature", _non_negative, ">= 0 (0 is greedy)"),
    ("eval.continuous_temperature", _non_negative, ">= 0 (0 is greedy)"),
    ("eval.continuous_mean", lambda x: isinstance(x, bool), "True or False (at continuous temperature 0: act on "
     "the bin nearest the mean, or on the likeliest bin)"),
    ("eval.fewshot_word_episodes", _non_negative, ">= 0 (0 reports no word losses)"),
    ("eval.fewshot_word_shots", _positive, ">= 1"),
    ("eval.caption_examples", _non_negative, ">= 0"),
    ("eval.text_batches", _non_negative, ">= 0"),
    ("vocab.text_size", _positive, "> 0"),
    ("vocab.num_continuous_bins", _positive, "> 0"),
    ("vocab.num_discrete", _positive, "> 0"),
)


def _get(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def check_config(config: ml_collections.ConfigDict, known_sources: Iterable[str] | None = None) -> None:
    """Every value in range (`RULES`), sizes that fit together, and a mixture of known sources with weights
    >= 0 summing to > 0; raises UsageError naming the field and the value to set."""
    for path, ok, requirement in RULES:
        present, value = _get(config, path)
        if present and not ok(value):
            raise UsageError(f"config.{path} = {value!r} is out of range: it must be {requirement}; "
                             f"set --config.{path}=<a value {requirement}>.")
    _check_sizes(config)
    _check_mixture(config, known_sources)
    _check_dagger_steps(config)
    _check_fewshot_late_step(config)


def _check_fewshot_late_step(config: ml_collections.ConfigDict) -> None:
    present, step = _get(config, "data.fewshot_late_step")
    if present and step >= config.num_train_steps:
        raise UsageError(f"config.data.fewshot_late_step={step} is at or past num_train_steps="
                         f"{config.num_train_steps}, where no step would train on the late shares; pass a step "
                         "below it, or 0 for one stage.")


def _check_dagger_steps(config: ml_collections.ConfigDict) -> None:
    present, steps = _get(config, "dagger.steps")
    late = [s for s in (steps if present else ()) if s >= config.num_train_steps]
    if late:
        raise UsageError(f"config.dagger.steps {tuple(steps)} has step(s) {late} at or past num_train_steps="
                         f"{config.num_train_steps}, where nothing would train on the round; pass steps below it.")


def _check_sizes(config: ml_collections.ConfigDict) -> None:
    m, d = config.model, config.data
    if d.frame_size % m.patch_size:
        raise UsageError(f"config.data.frame_size={d.frame_size} is not a multiple of config.model.patch_size="
                         f"{m.patch_size}; set --config.data.frame_size to a multiple of it.")
    if d.caption_image_size % m.patch_size:
        raise UsageError(f"config.data.caption_image_size={d.caption_image_size} is not a multiple of "
                         f"config.model.patch_size={m.patch_size}; set it to a multiple of it.")
    if config.vocab.text_size != d.text_vocab_size:
        raise UsageError(f"config.vocab.text_size={config.vocab.text_size} differs from config.data.text_vocab_size="
                         f"{d.text_vocab_size} (the SentencePiece model size); set both to the same value.")


def _check_mixture(config: ml_collections.ConfigDict, known_sources: Iterable[str] | None) -> None:
    mixture = dict(config.data.mixture)
    weights = {name: w for name, w in mixture.items()}
    bad = {n: w for n, w in weights.items() if not _non_negative(w)}
    if bad or not weights or sum(weights.values()) <= 0:
        raise UsageError(f"config.data.mixture {weights} needs weights >= 0 with a sum > 0; set e.g. "
                         "--config.data.mixture.<source>=0.5.")
    if known_sources is not None:
        known = sorted(set(known_sources))
        unknown = sorted(set(weights) - set(known))
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"config.data.mixture names unknown source(s) {unknown}; {hint}known sources: {known}.")


def check_devices(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> tuple[int, ...]:
    """The mesh fits `num_devices` and the global batch divides over its batch shards and processes;
    returns the mesh shape (data, fsdp, tensor)."""
    try:
        shape = sharding.mesh_shape(config.mesh, num_devices)
    except ValueError as err:
        raise UsageError(f"config.mesh does not fit the {num_devices} devices here: {one_line(err).rstrip('.')}; set "
                         f"one axis to -1 (e.g. --config.mesh.data=-1) or sizes whose product divides {num_devices}."
                         ) from None
    shards = shape[0] * shape[1]
    if config.batch_size % shards:
        raise UsageError(f"config.batch_size={config.batch_size} does not divide over the {shards} batch shards of "
                         f"mesh (data={shape[0]}, fsdp={shape[1]}); set --config.batch_size to a multiple of "
                         f"{shards}.")
    if config.batch_size % process_count:
        raise UsageError(f"config.batch_size={config.batch_size} does not divide over {process_count} processes; "
                         f"set it to a multiple of {process_count}.")
    return shape


def check_writable_dir(path: str, what: str, fix: str) -> None:
    """`path` is a directory we can write in, or one that can be created (tried with a temporary file in its
    nearest existing parent, since permission bits say little to root); UsageError otherwise."""
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise UsageError(f"{what} {path} is a file, not a directory; {fix}.")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{what} {path} cannot be created ({probe} is a file); {fix}.")
    try:
        fd, name = tempfile.mkstemp(prefix=".gato-write-check-", dir=probe)
        os.close(fd)
        os.remove(name)
    except OSError as err:
        raise UsageError(f"{what} {path} cannot be written ({probe}: {err.strerror}); {fix}.") from None


def check_positive_flag(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is not None and not (_non_negative(value) if allow_zero else _positive(value)):
        raise UsageError(f"--{name}={value} is out of range: it must be {'>= 0' if allow_zero else '> 0'}.")
