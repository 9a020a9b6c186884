"""Entry point: `python -m gato_jax.evaluate --config experiments/NAME.py --workdir runs/NAME`.

Any config field can be overridden, e.g. `--config.eval.episodes=10 --config.eval.prompted=False`.

Parses flags and hands over to `gato_jax.rollout.evaluate.evaluate`; a missing or incompatible
checkpoint, or missing held-out data, ends with one line saying what to do, not a traceback.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/; the report goes to WORKDIR/eval.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger().setLevel(logging.WARNING)
    from gato_jax.rollout.evaluate import MissingDataError, evaluate
    from gato_jax.train.checkpoint import CheckpointError

    try:
        report = evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value)
    except (CheckpointError, MissingDataError) as err:
        sys.exit(f"error: {err}")
    with open(report["files"]["md"]) as f:
        print(f.read())
    print(f"Report: {report['files']['json']}")


if __name__ == "__main__":
    app.run(main)
