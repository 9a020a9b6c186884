"""Training only some parameters: freezing by group, parameter counts, and warm starts from another run.

A parameter's name is its path in the parameter tree joined by '/', e.g. 'blocks/attn/query/kernel' or
'vision/resampler/queries'. Groups are regular expressions over these names (`re.search`), so a config
can say `train.frozen = ("^embed/token", "^blocks/", "^final_norm/")`.

- `freeze`: `optax.multi_transform` sends frozen leaves to `optax.set_to_zero()` and the rest to the
  run's optimizer. Frozen leaves then have no optimizer state (the inner optimizer's moments hold
  `optax.MaskedNode` there, which has no leaves) and a zero update, so `apply_updates` leaves them
  bit-for-bit unchanged; clipping and weight decay see the trainable leaves only. Their gradients feed
  nothing, so XLA drops them.
- `warm_start`: restores only the named parameters from another run's checkpoint
  (`checkpoints/<step>/state`, the `params` subtree of the saved TrainState, see `train.checkpoint`)
  onto the shardings of the current parameters (any mesh), and fails naming the parameters when the
  names or shapes do not match.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from gato_jax.train.checkpoint import Checkpointer, CheckpointError

FROZEN, TRAINABLE = "frozen", "trainable"
STATE_ITEM, PARAMS_KEY, VALUE_KEY = "state", "params", "value"


def path_name(path: tuple) -> str:
    """'a/b/c' for a tree path; the trailing `.value` of an nnx Variable is dropped."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    if keys and keys[-1] == VALUE_KEY:
        keys = keys[:-1]
    return "/".join(str(k) for k in keys)


def named_leaves(params: Any) -> dict[str, Any]:
    """{name: leaf} of a parameter tree (nnx.State or nested dicts)."""
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def check_patterns(params: Any, patterns: Sequence[str], field: str = "train.frozen") -> None:
    """Fails on a pattern that names no parameter (a typo would otherwise freeze nothing)."""
    names = list(named_leaves(params))
    idle = [p for p in patterns if not any(re.search(p, n) for n in names)]
    if idle:
        raise ValueError(f"{field}: {idle} match no parameter; names look like {names[:6]}.")


def group_labels(params: Any, frozen: Sequence[str]) -> Any:
    """The parameter tree with FROZEN or TRAINABLE at each leaf."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: FROZEN if _matches(path_name(path), frozen) else TRAINABLE, params)


def freeze(tx: optax.GradientTransformation, params: Any, frozen: Sequence[str]) -> optax.GradientTransformation:
    """`tx` on the trainable leaves only; frozen ones get no state and no update. No patterns: `tx`."""
    if not frozen:
        return tx
    check_patterns(params, frozen)
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, group_labels(params, frozen))


class ParamCounts(NamedTuple):
    trainable: int
    total: int  # Trainable + frozen parameters + frozen expert weights (`extra`).

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / max(1, self.total)


def parameter_counts(params: Any, frozen: Sequence[str], extra: Any = None) -> ParamCounts:
    """Trainable and total parameter counts; `extra` (e.g. the model's non-Param variables: frozen
    expert weights) counts towards the total only."""
    sizes = {n: int(np.prod(np.shape(x))) for n, x in named_leaves(params).items()}
    trainable = sum(s for n, s in sizes.items() if not _matches(n, frozen))
    extra_total = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(extra)) if extra is not None else 0
    return ParamCounts(trainable, sum(sizes.values()) + extra_total)


def _state_dir(source: str, step: int | None) -> str:
    checkpointer = Checkpointer(source, read_only=True)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None or step not in checkpointer.manager.all_steps():
            raise CheckpointError(f"No complete checkpoint{'' if step is None else f' at step {step}'} "
                                  f"in {checkpointer.directory} to warm-start from.")
        return os.path.join(checkpointer.directory, str(step), STATE_ITEM)
    finally:
        checkpointer.close()


def _saved_params(state_dir: str) -> dict[str, Any]:
    """{name: ArrayMetadata} of the saved parameters."""
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(state_dir).item_metadata.tree
    if PARAMS_KEY not in tree:
        raise CheckpointError(f"{state_dir} holds no '{PARAMS_KEY}': not a gato_jax train-state checkpoint.")
    return named_leaves(tree[PARAMS_KEY])


def _source_names(targets: Sequence[str], rename: Sequence[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for name in targets:
        source = name
        for pattern, replacement in rename:
            source = re.sub(pattern, replacement, source)
        out[name] = source
    return out


def _check_match(current: dict[str, Any], saved: dict[str, Any], sources: dict[str, str], where: str) -> None:
    missing = sorted(f"{t} (as {s})" if s != t else t for t, s in sources.items() if s not in saved)
    if missing:
        raise CheckpointError(f"Warm start: {len(missing)} parameters are not in {where}: {missing[:8]}; "
                              f"it holds e.g. {sorted(saved)[:6]}.")
    wrong = [f"{t}: checkpoint {tuple(saved[s].shape)} vs model {tuple(np.shape(current[t]))}"
             for t, s in sources.items() if tuple(saved[s].shape) != tuple(np.shape(current[t]))]
    if wrong:
        raise CheckpointError(f"Warm start: shapes differ from {where}: {wrong[:8]}; use a model config "
                              "whose sizes match the source run for these parameters.")


def _nest(flat: dict[str, Any]) -> dict:
    """{'a/b': x} -> {'a': {'b': {'value': x}}}: the saved layout of nnx Variables."""
    tree: dict = {}
    for name, leaf in flat.items():
        node = tree
        *parents, last = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = {VALUE_KEY: leaf}
    return tree


def _restore(state_dir: str, targets: dict[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
    item = {PARAMS_KEY: _nest(targets)}
    args = ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                  partial_restore=True)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(state_dir, args=args)
    return named_leaves(restored[PARAMS_KEY])


def warm_start(params: Any, source: str, patterns: Sequence[str], *, step: int | None = None,
               rename: Sequence[tuple[str, str]] = ()) -> tuple[Any, list[str]]:
    """`params` with every parameter named by `patterns` read from run `source` (a workdir or its
    checkpoints directory; latest step unless `step`), placed on the current parameters' shardings.

    `rename` maps a current name to the saved one (regex, replacement pairs, applied in order), e.g.
    `(("^vision/rgb/", "embed/patch/"),)`. Returns the new tree and the names restored. Errors: a pattern
    that names no current parameter, a named parameter absent from the checkpoint, or a shape mismatch.
    """
    check_patterns(params, patterns, "warm-start patterns")
    current = named_leaves(params)
    chosen = [n for n in current if _matches(n, patterns)]
    state_dir = _state_dir(source, step)
    saved = _saved_params(state_dir)
    sources = _source_names(chosen, rename)
    _check_match(current, saved, sources, state_dir)
    targets = {sources[n]: jax.ShapeDtypeStruct(np.shape(current[n]), current[n].dtype,
                                                sharding=getattr(current[n], "sharding", None)) for n in chosen}
    restored = _restore(state_dir, targets)
    new = jax.tree_util.tree_map_with_path(
        lambda path, x: restored[sources[path_name(path)]] if path_name(path) in sources else x, params)
    return new, chosen


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any, params_shardings: Any,
                        replicated: Any) -> Any:
    """Shardings of an optimizer state that may hold `optax.MaskedNode`s (a `freeze`d optimizer):
    moments follow their parameters, counts are `replicated`, masked leaves stay masked. What
    `train.state._opt_state_shardings` needs to become for frozen groups (plain `tree_map_params` fails on
    the masks)."""
    def masked(x) -> bool:
        return isinstance(x, optax.MaskedNode)

    return optax.tree_map_params(tx, lambda p, s: p if masked(p) else s, abstract_opt_state, params_shardings,
                                 transform_non_params=lambda x: x if masked(x) else replicated, is_leaf=masked)
