"""Per-position work done only where a mask is set, with static shapes and never a dropped position.

Array key: N = flattened positions (batch x tokens), K = a static cap on the positions gathered.

`at_masked_positions` runs `sparse_fn` on the first K set positions, for the smallest cap K in `caps`
that holds them all, and `dense_fn` on every position when none does: `jax.lax.switch` picks the branch
at run time from the count, so a batch with more set positions than any cap is still exactly right,
only slower. Every branch is compiled; only the chosen one runs.

Reverse mode through `lax.switch` keeps the union of every branch's residuals and fills the ones of the
branches not taken with zeros; branches marked for rematerialisation keep only their inputs instead
(the dense fallback would otherwise write [N, ...]-sized zeros every step).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def caps_from_fractions(fractions: Sequence[float], n: int, multiple: int = 8) -> tuple[int, ...]:
    """Static caps: each fraction of `n`, rounded up to a multiple of `multiple`; caps >= n are dropped
    (the dense branch covers them), duplicates removed, ascending."""
    caps = {min(n, multiple * math.ceil(float(f) * n / multiple)) for f in fractions if f > 0}
    return tuple(sorted(c for c in caps if c < n))


def masked_indices(mask_N: jax.Array, cap: int) -> tuple[jax.Array, jax.Array]:
    """int32 [K] indices of the first `cap` set positions (N where there are fewer), and bool [K]: real."""
    n = mask_N.shape[0]
    (idx_K,) = jnp.nonzero(mask_N, size=cap, fill_value=n)
    return idx_K.astype(jnp.int32), idx_K < n


def bucket(count: jax.Array, caps: Sequence[int]) -> jax.Array:
    """Index of the smallest cap >= count; len(caps) (the dense branch) when none holds it."""
    return jnp.sum(count > jnp.asarray(caps, jnp.int32)).astype(jnp.int32)


def at_masked_positions(mask_N: jax.Array, caps: Sequence[int],
                        sparse_fn: Callable[[jax.Array, jax.Array], object], dense_fn: Callable[[], object],
                        remat_sparse: bool = False) -> object:
    """`sparse_fn(idx_K, valid_K)` for the smallest cap holding every set position, else `dense_fn()`.

    Both must return the same pytree of shapes. `remat_sparse` rematerialises the sparse branches too
    (the dense one always is), for when their residuals are large next to their recomputation.
    """
    if not caps:
        return dense_fn()

    def sparse_branch(cap: int) -> Callable[[], object]:
        def run():
            return sparse_fn(*masked_indices(mask_N, cap))

        return jax.checkpoint(run) if remat_sparse else run

    branches = [sparse_branch(cap) for cap in caps] + [jax.checkpoint(dense_fn)]
    return jax.lax.switch(bucket(jnp.sum(mask_N.astype(jnp.int32)), caps), branches)
