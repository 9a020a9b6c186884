"""`make train`: `python -m gato_jax.main --config experiments/NAME.py[:smoke] --workdir runs/NAME`.

Parses flags, checks every input before any work (`gato_jax.cli`: the experiment, each config value,
the mesh against the devices, the workdir, a checkpoint already there), prepares missing data, builds
the training stream and hands it to `train_and_evaluate`. Any mistake ends with one line and a non-zero
exit status; `--debug` (or GATO_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import jax
import ml_collections
from absl import flags

from data_pipelines import prepare, stream
from gato_jax import cli, dagger
from gato_jax.load import read_meta
from gato_jax.logs import quiet_libraries
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train import distributed
from gato_jax.train.checkpoint import Checkpointer, checkpoint_root, has_checkpoints
from gato_jax.train.loop import check_compatible, train_and_evaluate

PROG = "python -m gato_jax.main"


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard.", flag_values=fv)
    flags.DEFINE_bool("prepare_data", True, "Build missing datasets before training.", flag_values=fv)


def check_resumable(config, workdir: str) -> None:
    """A checkpoint already in `workdir` must be of this model, vocabulary and few-shot curriculum (read before
    any data is built)."""
    if has_checkpoints(workdir):
        meta = read_meta(workdir)
        check_compatible(meta, config, VocabLayout.from_config(config), checkpoint_root(workdir))
        stream.check_resumed_curriculum(meta.config, config, checkpoint_root(workdir))
        _resume_step(config, workdir)  # Its DAgger rounds are this config's.


def _resume_step(config: ml_collections.ConfigDict, workdir: str) -> int:
    """The step training resumes from: the newest readable checkpoint (a damaged newer one is set aside, as
    the trainer does), 0 for a fresh run; checked to have trained on the DAgger rounds this config gives it."""
    if not has_checkpoints(workdir):
        return 0
    checkpointer = Checkpointer(workdir)
    try:
        meta, step = checkpointer.restore_meta_and_step()
    finally:
        checkpointer.close()
    dagger.check_resumed_rounds(config, meta.data.get("onpolicy_rounds", []), step)
    return step


def train_in_stages(config: ml_collections.ConfigDict, workdir: str, dirs: Mapping[str, Path]) -> list[dict]:
    """Trains to config.num_train_steps, pausing at each DAgger round (`gato_jax.dagger`) to collect it and
    at the few-shot curriculum's late stage (`stream.curriculum_config`); the stream of each stage holds the
    rounds before it and that stage's shares. Without either this is one `train_and_evaluate`. Checkpoints
    keep `config` itself, late shares included, so a resumed run picks its stage by its step."""
    rows: list[dict] = []
    while True:
        step = _resume_step(config, workdir)
        dagger.collect_due(config, workdir, step, dirs)
        stop = min(dagger.next_stop(config, step), stream.next_curriculum_stop(config, step))
        data = stream.build_train_data(stream.curriculum_config(config, step), jax.process_index(),
                                       jax.process_count(), dirs,
                                       onpolicy_roots=dagger.rounds_before(config, workdir, step))
        rows += train_and_evaluate(config, workdir, data, stop_after=stop)
        if stop >= config.num_train_steps or _resume_step(config, workdir) < stop:  # Done, or stopped by a signal.
            return rows


def _main(argv: list[str]) -> int:
    parsed = cli.parse(argv, _define, prog=PROG, required=("workdir",))
    config, workdir = parsed.config, parsed.flags["workdir"]
    prepare.check_config(config)
    prepare.use_prepared_experts(config)  # model.kind="prismer": where its learned frozen expert is trained.
    distributed.maybe_initialize(config.distributed)
    cli.check_devices(config, jax.device_count(), jax.process_count())
    dagger.check(config, jax.process_count())
    cli.check_writable_dir(workdir, "--workdir", "pass a --workdir you can write (make train WORKDIR=...)")
    check_resumable(config, workdir)
    quiet_libraries()
    dirs = prepare.prepare_all(config) if parsed.flags["prepare_data"] else prepare.check_prepared(config)
    rows = train_in_stages(config, workdir, dirs)
    if rows:
        print(f"step {rows[-1]['step']}: loss {rows[-1].get('loss', float('nan')):.4f}; checkpoints in {workdir}")
    else:
        print(f"{workdir} is already at step {config.num_train_steps}: nothing to train (raise "
              "--config.num_train_steps to train on).")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs training on argv (default sys.argv[1:]); returns the exit status."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
