"""Sharding: mesh building, the rules table, parameters created sharded, outputs equal on every mesh."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from model_test import LAYOUT, Fns, make_batch, take, tiny_fns

from gato_jax import configs, sharding
from gato_jax.model import Gato
from gato_jax.model.build import create_sharded_model
from gato_jax.tokenizers.vocab import VocabLayout

BATCH, LENGTH = 8, 16  # The batch must divide by data * fsdp on every tested mesh.


def mesh_config(data: int, fsdp: int, tensor: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def test_make_mesh_fills_the_minus_one_axis():
    mesh = sharding.make_mesh(mesh_config(-1, 2, 1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    one = sharding.make_mesh(mesh_config(1, 1, 1), devices=jax.devices()[:1])
    assert one.devices.size == 1
    assert sharding.make_mesh(mesh_config(2, 2, 1)).devices.size == 4  # First 4 of 8 (one process).
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh(mesh_config(2, 2, 4))
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh(mesh_config(-1, -1, 1))


def test_logical_to_mesh_replicates_what_does_not_divide():
    mesh = sharding.make_mesh(mesh_config(1, 1, 8))
    assert sharding.logical_to_mesh(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh(("batch", "length")) == P(("data", "fsdp"), None)
    assert sharding.logical_to_mesh(("embed", "heads", "kv"), (64, 2, 32), mesh) == P("fsdp", None, None)
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
    with pytest.raises(KeyError, match="LOGICAL_RULES"):
        sharding.logical_to_mesh(("nonsense",))


@pytest.fixture(scope="module")
def reference():
    """Single-device parameters (seed 0), a batch with padding and packed segments, and its logits."""
    fns = tiny_fns()
    seg = np.ones((BATCH, LENGTH), np.int32)
    seg[::2, 12:] = 0
    seg[1::2, 8:] = 2
    batch = make_batch(seg, seed=3)
    return fns.graphdef, fns.state, batch, np.asarray(fns.forward(fns.state, batch))


def test_parameters_are_created_sharded(reference):
    mesh = sharding.make_mesh(mesh_config(2, 2, 2))
    model = create_sharded_model(configs.model_config("tiny"), LAYOUT.padded_size, mesh, seed=0)
    expected = [
        (model.embed.token.embedding, P("tensor", "fsdp")),
        (model.blocks.mlp.up.kernel, P(None, "fsdp", "tensor")),  # Stacked blocks: [layers, ...].
        (model.blocks.mlp.down.kernel, P(None, "tensor", "fsdp")),
        (model.blocks.attn.query.kernel, P(None, "fsdp", "tensor", None)),
        (model.blocks.attn.out.kernel, P(None, "tensor", None, "fsdp")),
        (model.final_norm.scale, P(None)),
        (model.embed.patch.conv1.kernel, P(None, None, None, None)),
    ]
    for param, spec in expected:
        assert param[...].sharding.mesh.shape == mesh.shape
        assert param[...].sharding.spec == spec
    # Same seed, same values as the unsharded model (up to the last bit: jit fuses the scaling).
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(reference[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 8, 1), (1, 1, 8)])
def test_sharded_forward_equals_single_device(reference, shape):
    """Parameters placed by the rules (created sharded in the test above; device_put here saves a
    ~10 s init compile per mesh)."""
    graphdef, state, batch, expected = reference
    mesh = sharding.make_mesh(mesh_config(*shape))
    state = jax.device_put(state, sharding.param_shardings(state, mesh))
    global_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        logits = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))(state, global_batch)
    assert logits.sharding.shard_shape(logits.shape)[0] == BATCH // (shape[0] * shape[1])
    np.testing.assert_allclose(np.asarray(logits), expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 1, 8)])
def test_sharded_smeared_decode_equals_the_full_pass(shape):
    """Cached decode with smeared keys (heads sharded over `tensor`, the batch over data x fsdp) equals
    the single-device full pass, chunk by chunk."""
    config = configs.model_config("tiny")
    config.smear_keys = True
    fns = Fns(config)
    seg = np.ones((BATCH, LENGTH), np.int32)
    seg[::2, 12:] = 0
    batch = make_batch(seg, seed=4)
    expected = np.asarray(fns.forward(fns.state, batch))
    mesh = sharding.make_mesh(mesh_config(*shape))
    state = jax.device_put(fns.state, sharding.param_shardings(fns.state, mesh))
    with jax.set_mesh(mesh):
        decode = jax.jit(lambda s, x, c: nnx.merge(fns.graphdef, s).decode(x, c))
        cache, logits = fns.model.init_cache(BATCH, LENGTH), []
        for start in range(0, LENGTH, 4):
            chunk = jax.device_put(take(batch, slice(start, start + 4)), sharding.batch_sharding(mesh))
            out, cache = decode(state, chunk, cache)
            logits.append(np.asarray(out))
    real = seg != 0
    np.testing.assert_allclose(np.concatenate(logits, axis=1)[real], expected[real], atol=2e-5, rtol=2e-5)


def test_big_presets_shard_abstractly():
    """1.18B on a (2, 2, 2) mesh: every rule divides its dimension (shapes only, nothing allocated)."""
    mesh = sharding.make_mesh(mesh_config(2, 2, 2))
    abstract = nnx.eval_shape(lambda: Gato(configs.model_config("gato_1_18b"), VocabLayout().padded_size,
                                           rngs=nnx.Rngs(0)))
    shardings = sharding.param_shardings(nnx.state(abstract), mesh)
    specs = {s.spec for s in jax.tree.leaves(shardings)}
    assert {P(None, "fsdp", "tensor"), P(None, "fsdp", "tensor", None), P("tensor", "fsdp")} <= specs
