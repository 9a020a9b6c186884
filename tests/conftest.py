"""Test setup: 8 fake CPU devices before JAX starts, rank promotion errors, shared fixtures."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the XLA_FLAGS line)

jax.config.update("jax_numpy_rank_promotion", "raise")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def fns():
    """The tiny model's compiled functions (model_test.py), shared by the model and sparse-path tests."""
    from model_test import tiny_fns

    return tiny_fns()


@pytest.fixture(scope="module")
def gapped():
    """A batch of one segment with padding gaps (model_test.py)."""
    from model_test import make_batch, one_segment_with_gaps

    return make_batch(one_segment_with_gaps(), seed=1)
