"""`make compile`: compile the train step ahead of time for a target mesh, with no parameters allocated.

`make compile EXP=NAME ARGS="--devices 64 --config.mesh.fsdp=64"` fakes the devices on the CPU
(`jax_num_cpu_devices`, set before JAX starts its backend), lowers and compiles the sharded step from
abstract shapes, and prints parameters, FLOPs per step and the bytes each device would hold, so a pod
can be sized before it is booked. The mesh and batch are checked against the device count first.
"""
from __future__ import annotations

import sys

import jax
import ml_collections
from absl import flags

from gato_jax import cli
from gato_jax import sharding as sharding_lib
from gato_jax.errors import UsageError
from gato_jax.model import flops_per_token
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train import state as state_lib

PROG = "python -m gato_jax.compile"
MAX_FAKE_DEVICES = 4096


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("devices", 8, "Fake CPU devices standing in for the target topology.", flag_values=fv)


def use_fake_devices(count: int) -> None:
    """`count` CPU devices for this process; a UsageError if JAX already started with another count."""
    if not 1 <= count <= MAX_FAKE_DEVICES:
        raise UsageError(f"--devices={count} is out of range: it must be in [1, {MAX_FAKE_DEVICES}].")
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        pass  # The backend already started (a test, a notebook): fine if it has the devices asked for.
    if jax.device_count() != count:
        raise UsageError(f"--devices={count}, but JAX already started with {jax.device_count()} devices in this "
                         "process; run `make compile` in a fresh process.")


def compile_report(config: ml_collections.ConfigDict) -> dict:
    """Compiles the sharded train step from abstract state; returns sizes, FLOPs and memory."""
    layout = VocabLayout.from_config(config)
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


def _main(argv: list[str]) -> int:
    parsed = cli.parse(argv, _define, prog=PROG)
    config = parsed.config
    cli.check_config(config)
    use_fake_devices(parsed.flags["devices"])
    cli.check_devices(config, jax.device_count())
    report = compile_report(config)
    gib = 1024**3
    print(f"mesh {report['mesh']}  parameters {report['parameters'] / 1e6:.1f}M")
    print(f"FLOPs per step {report['flops_per_step']:.3e} (model formula; XLA counts "
          f"{report['xla_flops_per_step']:.3e}, each scanned layer once)")
    print(f"bytes per device {report['bytes_per_device'] / gib:.2f} GiB "
          f"(arguments {report['argument_bytes_per_device'] / gib:.2f} GiB, "
          f"temporaries {report['temp_bytes_per_device'] / gib:.2f} GiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the ahead-of-time compile on argv (default sys.argv[1:]); returns the exit status."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
