"""Test setup: 8 fake CPU devices before JAX starts its backend, rank promotion errors, shared fixtures."""
import jax
import pytest

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")


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
