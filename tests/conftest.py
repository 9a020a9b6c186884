"""Test setup: 8 fake CPU devices before JAX starts, rank promotion errors, shared fixtures."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the XLA_FLAGS line)

jax.config.update("jax_numpy_rank_promotion", "raise")
