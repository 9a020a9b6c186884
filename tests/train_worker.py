"""Subprocess entry for tests that need their own process: multi-host training and SIGTERM handling.

Usage: python tests/train_worker.py WORKDIR STEPS [COORDINATOR PROCESS_ID NUM_PROCESSES]
Writes WORKDIR/losses_<process>.json with the per-step losses it saw.
"""
import json
import os
import sys

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8 if len(sys.argv) <= 3 else 8 // int(sys.argv[5]))

sys.path.insert(0, os.path.dirname(__file__))
from train_test import LAYOUT, tiny_config  # noqa: E402

from gato_jax.train import loop  # noqa: E402
from gato_jax.train.synthetic import synthetic_data  # noqa: E402


def main() -> None:
    workdir, steps = sys.argv[1], int(sys.argv[2])
    config = tiny_config(num_train_steps=steps, log_every=1, eval_every=0, checkpoint_every=10_000)
    config.mesh.data = -1
    if len(sys.argv) > 3:
        config.distributed.coordinator_address = sys.argv[3]
        config.distributed.process_id, config.distributed.num_processes = int(sys.argv[4]), int(sys.argv[5])
        jax.distributed.initialize(sys.argv[3], int(sys.argv[5]), int(sys.argv[4]))
    data = synthetic_data(config, LAYOUT, jax.process_index(), jax.process_count())
    rows = loop.train_and_evaluate(config, workdir, data)
    with open(os.path.join(workdir, f"losses_{jax.process_index()}.json"), "w") as f:
        json.dump([r["loss"] for r in rows], f)


if __name__ == "__main__":
    main()
