"""Training: masked next-token loss, optax optimizer, sharded jit step, orbax checkpoints, the loop."""
