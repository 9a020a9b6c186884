"""Device mesh and the logical-axis rules table (models are built already sharded in `model.build`).

Layers name logical axes only (`nnx.with_partitioning(init, ("embed", "mlp"))`); this module alone maps
them to the three mesh axes (data, fsdp, tensor). A dimension whose size the mapped mesh axes do not
divide is replicated instead (e.g. 2 heads on a tensor axis of 8), so every preset runs on every mesh.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None

# Logical axis -> mesh axes. One table for parameters and activations.
LOGICAL_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # Parameters.
    ("layers", None),  # Stacked blocks (scanned), one slice per layer.
    ("vocab", "tensor"),  # Token table rows = logits columns.
    ("embed", "fsdp"),  # Model width of every weight matrix (FSDP shards it, gathers per layer).
    ("mlp", "tensor"),  # MLP hidden width.
    ("heads", "tensor"),  # Attention heads.
    ("kv", None),  # Width of one head.
    ("norm", None),  # LayerNorm scales and biases.
    ("table", None),  # Entries of the position tables (local, patch row, patch column).
    ("conv", None),  # Patch ResNet kernels, channels and GroupNorm parameters.
    ("patch_flat", None),  # Flattened ResNet features entering the patch projection.
    # Activations.
    ("batch", ("data", "fsdp")),  # Sequences in a batch.
    ("length", None),  # Tokens in a sequence.
    ("act_embed", None),  # Residual stream width (replicated between blocks).
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),  # Logits columns.
)
_RULES = dict(LOGICAL_RULES)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes; one of them may be -1, meaning the devices left over."""
    sizes = [int(mesh_config.data), int(mesh_config.fsdp), int(mesh_config.tensor)]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: positive, at most one -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"{num_devices} devices do not split into a mesh with fixed axes of product {known}.")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) > num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, {num_devices} given.")
    return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes (sharding propagates from the rules).

    It spans `devices` (default: all). A fully specified mesh smaller than that takes the first devices
    (e.g. data=fsdp=tensor=1 runs on one device of eight), in a single process only: with several
    processes every device must be in the mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    if math.prod(shape) < len(devices) and jax.process_count() > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} leaves devices idle across {jax.process_count()} "
                         "processes; size it to every device (one axis -1).")
    devices = devices[:math.prod(shape)]
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _axis_size(mesh: Mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_mesh(names: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for logical axis names. With `shape` and `mesh`, dimensions the mapped mesh axes do
    not divide are replicated, and a mesh axis is used at most once."""
    specs: list[MeshAxes] = []
    used: set[str] = set()
    for i, name in enumerate(names):
        if name is not None and name not in _RULES:
            raise KeyError(f"Logical axis {name!r} has no row in LOGICAL_RULES.")
        axes = None if name is None else _RULES[name]
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        if used & set(flat):
            axes = None
        if shape is not None and mesh is not None and shape[i] % _axis_size(mesh, axes):
            axes = None
        used |= set(flat) if axes is not None else set()
        specs.append(axes)
    return PartitionSpec(*specs)


def logical_sharding(names: Sequence[str | None], mesh: Mesh, shape: Sequence[int] | None = None) -> NamedSharding:
    """NamedSharding on `mesh` for logical axis names (see `logical_to_mesh`)."""
    return NamedSharding(mesh, logical_to_mesh(names, shape, mesh))


def _variable_sharding(variable: nnx.Variable, mesh: Mesh) -> nnx.Variable:
    names = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
    return variable.replace(logical_sharding(names, mesh, variable.shape))


def param_shardings(abstract_model_state: Any, mesh: Mesh) -> Any:
    """The state tree with each Variable holding the NamedSharding its logical names map to."""
    return jax.tree.map(
        lambda v: _variable_sharding(v, mesh), abstract_model_state,
        is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over (data, fsdp); other axes replicated. Fits every TokenSequence field."""
    return NamedSharding(mesh, logical_to_mesh(("batch",)))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint from logical names when a mesh is set (`jax.set_mesh`); otherwise a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh(names, x.shape, mesh))
