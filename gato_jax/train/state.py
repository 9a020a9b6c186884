"""Train state and the jitted, sharded train and eval steps.

The model is split once into a graph definition (static), its parameters (trained) and any other
variables (kept as they are). A step is then a pure function of (TrainState, batch): parameters and
optimizer moments keep the shardings they were created with, and the old state is donated.

`config.train.sparse` (default) computes logits only where a target follows and the patch ResNet only at
image positions (`StepOptions`); the same loss and gradients as the plain path, which `make bench` times
beside it.

`config.train.frozen` names parameter groups that never train (`train.partial.freeze`: no optimizer state,
no update); `model.kind="prismer"` reads its learned frozen experts into the model right after it is
created; `warm_start` fills named parameters of a fresh run from another run's checkpoint.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gato_jax import sharding as sharding_lib
from gato_jax.configs import train_seed
from gato_jax.model.build import abstract_params, create_sharded_model
from gato_jax.model.prismer import PrismerGato, load_frozen_experts
from gato_jax.model.sparse import caps_from_fractions
from gato_jax.tokenizers.sequence import TokenSequence, patch_dim_for
from gato_jax.train import partial
from gato_jax.train.loss import loss_at_targets, next_token_loss
from gato_jax.train.optim import make_optimizer


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken.
    params: Any  # nnx.State of nnx.Param variables.
    opt_state: optax.OptState
    rng: jax.Array  # uint32 [2]: base key; each step folds in its step number.


@dataclasses.dataclass
class StepFunctions:
    """Everything needed to run, save and restore training on one mesh."""

    graphdef: Any
    rest: Any  # Non-parameter model variables, constant during training.
    tx: optax.GradientTransformation
    mesh: Mesh
    state_shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Callable[[TrainState, TokenSequence], tuple[TrainState, dict]]
    eval_step: Callable[[TrainState, TokenSequence], dict]


def _opt_state_shardings(tx, abstract_opt_state, params_shardings, mesh: Mesh):
    """Optimizer moments follow their parameters' shardings; scalars (counts) are replicated; frozen
    parameters' masked slots stay masked (`partial.opt_state_shardings`)."""
    return partial.opt_state_shardings(tx, abstract_opt_state, params_shardings, NamedSharding(mesh, PartitionSpec()))


def frozen_groups(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`config.train.frozen` (() for configs saved before the field existed)."""
    train = config.get("train")
    return tuple(str(p) for p in (train.get("frozen", ()) if train is not None else ()))


def make_tx(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
    """The run's optimizer on the trainable parameters only (`config.train.frozen`)."""
    return partial.freeze(make_optimizer(config.optimizer, config.num_train_steps), params, frozen_groups(config))


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How the loss is computed (`config.train`); the default is the plain path (everything everywhere)."""

    sparse: bool = False
    loss_position_caps: tuple[float, ...] = ()  # Fractions of the batch's positions.
    image_position_caps: tuple[float, ...] = ()
    unroll: int = 1  # Layers per scan iteration (0: all).

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> StepOptions:
        train = config.get("train")  # Configs saved before the section existed ran the plain path.
        if train is None or not train.sparse:
            return cls()
        return cls(True, tuple(float(f) for f in train.loss_position_caps),
                   tuple(float(f) for f in train.image_position_caps), int(train.scan_unroll))


def _loss_fn(graphdef, rest, params, batch: TokenSequence, rng: jax.Array, deterministic: bool,
             options: StepOptions = StepOptions()):
    model = nnx.merge(graphdef, params, rest)
    if not options.sparse:
        return next_token_loss(model(batch, deterministic=deterministic, rngs=nnx.Rngs(rng)), batch)
    n = batch.tokens.shape[0] * batch.tokens.shape[1]
    hidden = model.hidden(batch, deterministic=deterministic, rngs=nnx.Rngs(rng),
                          image_caps=caps_from_fractions(options.image_position_caps, n), unroll=options.unroll)
    return loss_at_targets(hidden, model.logits, batch, caps_from_fractions(options.loss_position_caps, n))


def _make_train_step(graphdef, rest, tx, options: StepOptions):
    def train_step(state: TrainState, batch: TokenSequence) -> tuple[TrainState, dict]:
        step_rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(
            lambda p: _loss_fn(graphdef, rest, p, batch, step_rng, False, options), has_aux=True)
        (_, metrics), grads = grad_fn(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = (optax.global_norm(grads), jnp.float32(1.0))
        return TrainState(state.step + 1, params, opt_state, state.rng), metrics

    return train_step


def _make_eval_step(graphdef, rest, options: StepOptions):
    def eval_step(state: TrainState, batch: TokenSequence) -> dict:
        _, metrics = _loss_fn(graphdef, rest, state.params, batch, state.rng, True, options)
        return metrics

    return eval_step


def _jit_steps(graphdef, rest, tx, state_shardings: TrainState, batch_sharding: NamedSharding,
               options: StepOptions):
    train_step = jax.jit(
        _make_train_step(graphdef, rest, tx, options),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    eval_step = jax.jit(_make_eval_step(graphdef, rest, options), in_shardings=(state_shardings, batch_sharding))
    return train_step, eval_step


def _state_shardings(tx, params, mesh: Mesh) -> TrainState:
    """Parameters keep their own shardings; moments follow them; step and RNG are replicated."""
    params_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = _opt_state_shardings(tx, jax.eval_shape(tx.init, params), params_shardings, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(replicated, params_shardings, opt_shardings, replicated)


_STEP_CACHE: dict = {}


def _cached_steps(config, vocab_size: int, mesh: Mesh, graphdef, rest, shardings: TrainState):
    """Reuses jitted steps for an identical model, optimizer and mesh, so a resumed run (or the next
    test) in the same process compiles nothing again."""
    options = StepOptions.from_config(config)
    key = (config.model.to_json(), config.optimizer.to_json(), config.num_train_steps, vocab_size, mesh, options,
           frozen_groups(config))
    if key not in _STEP_CACHE or jax.tree.leaves(rest):
        tx = make_tx(config, shardings.params)
        batch_sharding = sharding_lib.batch_sharding(mesh)
        _STEP_CACHE[key] = (tx, batch_sharding,
                            *_jit_steps(graphdef, rest, tx, shardings, batch_sharding, options))
    return _STEP_CACHE[key]


def build(config: ml_collections.ConfigDict, vocab_size: int, mesh: Mesh) -> tuple[StepFunctions, TrainState]:
    """Creates sharded parameters and optimizer state, and the (lazily compiled) step functions."""
    model = create_sharded_model(config.model, vocab_size, mesh, train_seed(config))
    if isinstance(model, PrismerGato):
        load_frozen_experts(model, str(config.model.prismer.shape_expert_dir))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_tx(config, params)
    shardings = _state_shardings(tx, params, mesh)
    tx, batch_sharding, train_step, eval_step = _cached_steps(config, vocab_size, mesh, graphdef, rest, shardings)
    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
        params=params,
        opt_state=opt_state,
        rng=jax.device_put(jax.random.key_data(jax.random.key(train_seed(config) + 1)), shardings.rng),
    )
    fns = StepFunctions(graphdef, rest, tx, mesh, shardings, batch_sharding, train_step, eval_step)
    return fns, state


def warm_start(config: ml_collections.ConfigDict, state: TrainState) -> tuple[TrainState, list[str]]:
    """`state` with the parameters `config.train.warm_start` names read from another run (on their current
    shardings), and their names; `state` unchanged when no source is set. For fresh runs only: the
    caller skips it when resuming. The optimizer state needs no change (AdamW moments start at zero)."""
    ws = config.get("train", {}).get("warm_start")
    if ws is None or not ws.workdir:
        return state, []
    params, names = partial.warm_start(state.params, str(ws.workdir), tuple(ws.params) or ("",),
                                       step=None if int(ws.step) < 0 else int(ws.step),
                                       rename=tuple(tuple(r) for r in ws.rename))
    return state._replace(params=params), names


def parameter_counts(config: ml_collections.ConfigDict, fns: StepFunctions, state: TrainState) -> partial.ParamCounts:
    """Trainable and total parameters (frozen groups and frozen expert weights count in the total only)."""
    return partial.parameter_counts(state.params, frozen_groups(config), extra=fns.rest)


class AbstractTrainState(NamedTuple):
    """The train state as shapes, dtypes and shardings only: what a restore fills and a compile lowers."""

    graphdef: Any
    rest: Any
    tx: optax.GradientTransformation
    state: TrainState  # Of jax.ShapeDtypeStruct, each with its sharding on the mesh.


def abstract_train_state(config: ml_collections.ConfigDict, vocab_size: int, mesh: Mesh) -> AbstractTrainState:
    """The one way to describe a train state without allocating it: parameters sharded by the rules,
    optimizer moments following them, step and RNG replicated (the shardings `build` creates)."""
    graphdef, params, rest = abstract_params(config.model, vocab_size, mesh, seed=train_seed(config))
    tx = make_tx(config, params)
    shardings = _state_shardings(tx, params, mesh)
    shapes = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(tx.init, params),
                        jax.ShapeDtypeStruct((2,), jnp.uint32))
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    return AbstractTrainState(graphdef, rest, tx, state)


def compile_train_step(config: ml_collections.ConfigDict, vocab_size: int, mesh: Mesh):
    """Lowers and compiles the sharded train step from shapes alone (no parameter is allocated)."""
    abstract = abstract_train_state(config, vocab_size, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, abstract.state)
    batch = abstract_batch(config.batch_size, config.seq_len, config.model.patch_size)
    rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract.rest)  # Frozen expert weights: any value.
    train_step, _ = _jit_steps(abstract.graphdef, rest, abstract.tx, shardings,
                               sharding_lib.batch_sharding(mesh), StepOptions.from_config(config))
    with jax.set_mesh(mesh):
        compiled = train_step.lower(abstract.state, batch).compile()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.state.params))
    return compiled, n_params


def abstract_batch(batch_size: int, seq_len: int, patch_size: int) -> TokenSequence:
    """Shapes and dtypes of one global TokenSequence batch."""
    b, t, p = batch_size, seq_len, patch_dim_for(patch_size)
    return TokenSequence(
        tokens=jax.ShapeDtypeStruct((b, t), jnp.int32), modality=jax.ShapeDtypeStruct((b, t), jnp.int32),
        local_pos=jax.ShapeDtypeStruct((b, t), jnp.int32), patches=jax.ShapeDtypeStruct((b, t, p), jnp.uint8),
        patch_pos=jax.ShapeDtypeStruct((b, t, 4), jnp.int32), loss_mask=jax.ShapeDtypeStruct((b, t), jnp.bool_),
        segment_ids=jax.ShapeDtypeStruct((b, t), jnp.int32))
