"""Where models are built: already-sharded parameters, and abstract ones (shapes only) for restores and
ahead-of-time compiles.

Here rather than in `gato_jax.sharding`, so the rules table never imports the model it shards.
"""
from __future__ import annotations

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gato_jax import sharding as sharding_lib
from gato_jax.model.prismer import PrismerGato, make_model
from gato_jax.model.transformer import Gato

Model = Gato | PrismerGato  # What `model.kind` names ("gato" or "prismer").


def abstract_model(model_config: ml_collections.ConfigDict, vocab_size: int, seed: int = 0):
    """(graphdef, abstract state) of the model `model.kind` names: shapes, dtypes and logical names, nothing
    allocated. Uses jax.eval_shape rather than nnx.eval_shape, which turns logical names into shardings
    whenever a mesh is set (`jax.set_mesh`) and fails on names that are not mesh axes."""
    graphdefs = []

    def init() -> nnx.State:
        graphdef, state = nnx.split(make_model(model_config, vocab_size, rngs=nnx.Rngs(seed)))
        graphdefs.append(graphdef)
        return state

    state = jax.eval_shape(init)
    return graphdefs[0], state


def create_sharded_model(model_config: ml_collections.ConfigDict, vocab_size: int, mesh: Mesh,
                         seed: int = 0) -> Model:
    """The model (`model.kind`) whose parameters are created already sharded: shapes come from `jax.eval_shape`, then
    initialisation runs under `jit` with the rules' shardings as `out_shardings` (no host copy, no
    replicated intermediate). Same seed, same values on every mesh."""

    def init():
        return nnx.split(make_model(model_config, vocab_size, rngs=nnx.Rngs(seed)))[1]

    graphdef, abstract_state = abstract_model(model_config, vocab_size, seed)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=sharding_lib.param_shardings(abstract_state, mesh))()
    return nnx.merge(graphdef, state)


def abstract_params(model_config: ml_collections.ConfigDict, vocab_size: int, mesh: Mesh, *, seed: int = 0,
                    replicated: bool = False):
    """(graphdef, params, rest): the model split into its definition, its parameters as ShapeDtypeStructs
    carrying their shardings on `mesh` (the rules', or replicated), and its other variables. Nothing is
    allocated; this is what a restore fills and what an ahead-of-time compile lowers against."""
    graphdef, state = abstract_model(model_config, vocab_size, seed)
    graphdef, params, rest = nnx.split(nnx.merge(graphdef, state), nnx.Param, ...)
    if replicated:
        shardings = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), params)
    else:
        shardings = sharding_lib.param_shardings(params, mesh)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
    return graphdef, params, rest
