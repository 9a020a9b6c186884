"""Compile the train step ahead of time for a target mesh, with no parameters allocated.

`make compile EXP=NAME ARGS="--devices 64 --config.mesh.fsdp=64"` fakes the devices on the CPU, lowers
and compiles the sharded step from abstract shapes, and prints parameters, FLOPs per step and the
bytes each device would hold, so a pod can be sized before it is booked.
"""
from __future__ import annotations

import os
import sys


def _set_fake_devices(argv: list[str]) -> None:
    """XLA reads the device count once, at import: set it from --devices before jax loads."""
    count = 8
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            count = int(arg.split("=", 1)[1])
        elif arg == "--devices" and i + 1 < len(argv):
            count = int(argv[i + 1])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


_set_fake_devices(sys.argv)

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gato_jax import sharding as sharding_lib  # noqa: E402
from gato_jax.model import flops_per_token  # noqa: E402
from gato_jax.tokenizers.vocab import VocabLayout  # noqa: E402
from gato_jax.train import state as state_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
flags.DEFINE_integer("devices", 8, "Fake CPU devices standing in for the target topology.")
flags.mark_flags_as_required(["config"])


def compile_report(config) -> dict:
    """Compiles the sharded train step from abstract state; returns sizes, FLOPs and memory."""
    layout = VocabLayout(config.vocab.text_size, config.vocab.num_continuous_bins, config.vocab.num_discrete)
    mesh = sharding_lib.make_mesh(config.mesh)
    compiled, n_params = state_lib.compile_train_step(config, layout.padded_size, mesh)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    per_device = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                  + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    tokens = config.batch_size * config.seq_len
    return {
        "mesh": dict(mesh.shape), "parameters": n_params,
        "flops_per_step": tokens * flops_per_token(config.model, config.seq_len, layout.padded_size),
        # XLA's count: loops (the scanned layers) are counted once, so it reads low; kept for reference.
        "xla_flops_per_step": float(cost.get("flops", 0.0)) * mesh.size,
        "bytes_per_device": int(per_device),
        "argument_bytes_per_device": int(memory.argument_size_in_bytes),
        "temp_bytes_per_device": int(memory.temp_size_in_bytes),
    }


def main(argv: list[str]) -> None:
    del argv
    report = compile_report(_CONFIG.value)
    gib = 1024**3
    print(f"mesh {report['mesh']}  parameters {report['parameters'] / 1e6:.1f}M")
    print(f"FLOPs per step {report['flops_per_step']:.3e} (model formula; XLA counts "
          f"{report['xla_flops_per_step']:.3e}, each scanned layer once)")
    print(f"bytes per device {report['bytes_per_device'] / gib:.2f} GiB "
          f"(arguments {report['argument_bytes_per_device'] / gib:.2f} GiB, "
          f"temporaries {report['temp_bytes_per_device'] / gib:.2f} GiB)")


if __name__ == "__main__":
    app.run(main)
