"""Entry point: `python -m gato_jax.main --config experiments/NAME.py[:smoke] --workdir runs/NAME`.

Parses flags and hands over: data preparation (when missing) and `train_and_evaluate`.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from gato_jax.logs import quiet_libraries

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard.")
_PREPARE = flags.DEFINE_bool("prepare_data", True, "Build missing datasets before training.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    quiet_libraries()
    config = _CONFIG.value
    if _PREPARE.value:
        from data_pipelines import prepare

        prepare.prepare_all(config)
    from gato_jax.train.loop import train_and_evaluate

    train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
