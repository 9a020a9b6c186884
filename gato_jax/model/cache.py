"""Key/value cache for incremental decoding, with a pinned prefix and a ring over the other slots.

Array key: L = layers, B = batch, S = cache slots, H = heads, K = head_dim, t = tokens in a chunk.

Slots [0, pinned) hold a prefix (e.g. a demonstration prompt) that is never overwritten; writes go into
a ring over [pinned, S): the n-th token written (n = `index`) lands in slot
    pinned + (n - pinned) mod (S - pinned),
which is simply slot n until the cache is full. Every slot remembers the write number of the token in it
(`pos`), so within one chunk a token still sees the ring slots that later tokens of the same chunk
overwrite; chunked decoding therefore equals token-by-token decoding exactly. Slot order does not matter
to attention: the only position signal is the ALiBi distance, computed from write numbers
(`alibi_distance`), never from slot indices.

ALiBi distances: query write number - key write number, except for pinned slots (the prompt), which are
re-based to sit immediately before the oldest unpinned token the query still sees, as a training prompt
sits immediately before its episode window. However long an episode runs (or after `reset_to_pinned`),
the prompt then looks as far away as it did in training; before the ring wraps, nothing moves.

The batch shares `index` and `pos`; `valid` is per row, so padding written into a chunk (segment id 0,
e.g. rows with shorter observations) takes a slot but is never attended to.

Smeared keys (`model.smear_keys`): slots hold the smeared keys attention reads; `last_keys` holds each row's
last real token's raw key, which the next chunk's first token mixes in. `pin_prefix` remembers the prompt's,
and `reset_to_pinned` restores it, so a new episode's first token smears with the prompt's last, as in
training, where the prompt sits right before the episode in one segment.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gato_jax.model.attention import same_span


class KVCache(NamedTuple):
    keys: jax.Array  # [L, B, S, H, K], compute dtype.
    values: jax.Array  # [L, B, S, H, K], compute dtype.
    valid: jax.Array  # bool [B, S]: slot holds a real (non-padding) token for this row.
    pos: jax.Array  # int32 [S]: write number of the token in each slot; -1 when empty.
    index: jax.Array  # int32 []: tokens written so far (the next token's write number).
    pinned: jax.Array  # int32 []: slots [0, pinned) are fixed; the ring is [pinned, S).
    last_keys: jax.Array  # [L, B, H, K]: raw key of each row's last real token (K = 0 without smeared keys).
    has_last: jax.Array  # bool [B]: the row has written a real token (since its reset).
    pinned_last_keys: jax.Array  # [L, B, H, K]: `last_keys` when the prefix was pinned.
    pinned_has_last: jax.Array  # bool [B]: `has_last` when the prefix was pinned.

    @property
    def size(self) -> int:
        return self.keys.shape[2]


def init_cache(num_layers: int, batch_size: int, size: int, num_heads: int, head_dim: int,
               dtype=jnp.float32, smear_keys: bool = True) -> KVCache:
    """An empty cache of `size` slots. Without `smear_keys` the last-key fields are empty ([L, B, H, 0]):
    a model that never reads them neither stores nor carries them through its decode scan."""
    if size < 2:
        raise ValueError(f"A KV cache needs at least 2 slots, got size={size}.")
    shape = (num_layers, batch_size, size, num_heads, head_dim)
    last_shape = (num_layers, batch_size, num_heads, head_dim if smear_keys else 0)
    return KVCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch_size, size), bool),
        pos=jnp.full((size,), -1, jnp.int32),
        index=jnp.zeros((), jnp.int32),
        pinned=jnp.zeros((), jnp.int32),
        last_keys=jnp.zeros(last_shape, dtype),
        has_last=jnp.zeros((batch_size,), bool),
        pinned_last_keys=jnp.zeros(last_shape, dtype),
        pinned_has_last=jnp.zeros((batch_size,), bool),
    )


def pin_prefix(cache: KVCache) -> KVCache:
    """Marks every slot written so far as pinned; later writes wrap in a ring after them.

    Call it before the cache has wrapped (index < size), e.g. right after encoding a prompt; at least one
    slot is always left for the ring.
    """
    try:
        written = int(cache.index)
    except jax.errors.ConcretizationTypeError:  # Traced under jit: cannot check, clamp below.
        written = 0
    if written >= cache.size:
        raise ValueError(
            f"pin_prefix after {written} writes into a {cache.size}-slot cache: the prefix no longer "
            "fits; use a larger cache or pin before the ring wraps.")
    return cache._replace(pinned=jnp.minimum(cache.index, cache.size - 1).astype(jnp.int32),
                          # Copies: a cache is donated to jitted acting, and one buffer may not be donated twice.
                          pinned_last_keys=jnp.copy(cache.last_keys), pinned_has_last=jnp.copy(cache.has_last))


def reset_to_pinned(cache: KVCache, rows_B: jax.Array | None = None) -> KVCache:
    """Forgets every unpinned token of the selected rows (all rows by default), keeping the prefix.

    Lets a new episode reuse an encoded prompt without re-encoding it; `index` keeps counting, so rows
    that were not reset continue undisturbed.
    """
    unpinned_S = jnp.arange(cache.size) >= cache.pinned
    rows_B = jnp.ones(cache.valid.shape[:1], bool) if rows_B is None else rows_B
    forget_BxS = rows_B[:, None] & unpinned_S[None, :]
    return cache._replace(
        valid=cache.valid & ~forget_BxS,
        last_keys=jnp.where(rows_B[None, :, None, None], cache.pinned_last_keys, cache.last_keys),
        has_last=jnp.where(rows_B, cache.pinned_has_last, cache.has_last))


def ring_size(cache: KVCache) -> jax.Array:
    return cache.size - cache.pinned


def chunk_mask(cache: KVCache, segment_ids_Bxt: jax.Array, span_ids_Bxt: jax.Array | None = None) -> jax.Array:
    """bool [B, t, S + t]: which cache slots and chunk tokens each new token attends to.

    A cache slot is visible while it is valid for the row and not yet overwritten by an earlier token of
    this chunk; chunk tokens attend causally to non-padding tokens still inside the ring window, and
    (semi-causal models, `span_ids_Bxt` given) to every token of their own span in the chunk. A span must
    therefore lie within one chunk to equal the full pass. Padding queries attend only to themselves (no
    NaN rows), exactly as in the full forward pass.
    """
    t = segment_ids_Bxt.shape[1]
    ring = ring_size(cache)
    write_t = cache.index + jnp.arange(t, dtype=jnp.int32)
    pinned_S = jnp.arange(cache.size) < cache.pinned
    alive_txS = pinned_S[None, :] | (cache.pos[None, :] + ring > write_t[:, None])
    real_Bxt = segment_ids_Bxt != 0
    cached_BxtxS = cache.valid[:, None, :] & alive_txS[None] & real_Bxt[:, :, None]
    i_t = jnp.arange(t)
    causal_txt = (i_t[None, :] <= i_t[:, None]) & (i_t[:, None] - i_t[None, :] < ring)
    chunk_Bxtxt = causal_txt[None] & real_Bxt[:, None, :] & real_Bxt[:, :, None]
    chunk_Bxtxt = chunk_Bxtxt | jnp.eye(t, dtype=bool)[None]
    if span_ids_Bxt is not None:
        chunk_Bxtxt = chunk_Bxtxt | same_span(span_ids_Bxt)
    return jnp.concatenate([cached_BxtxS, chunk_Bxtxt], axis=-1)


def alibi_distance(q_pos_t: jax.Array, k_pos_S: jax.Array, visible_BxtxS: jax.Array, pinned_S: jax.Array,
                   num_pinned: jax.Array | int) -> jax.Array:
    """int32 [B, t, S]: ALiBi distance of each key from each query (module docstring).

    `q_pos_t`, `k_pos_S`: write numbers; `pinned_S`: which keys are prompt tokens, holding write numbers
    [0, num_pinned). A pinned key j counts as written at (oldest unpinned key visible to the query) -
    num_pinned + j. A query that sees no unpinned key (a prompt token) keeps plain distances.
    """
    unpinned_BxtxS = visible_BxtxS & ~pinned_S[None, None, :]
    oldest_Bxt = jnp.min(jnp.where(unpinned_BxtxS, k_pos_S[None, None, :], jnp.iinfo(jnp.int32).max), axis=-1)
    oldest_Bxt = jnp.where(unpinned_BxtxS.any(axis=-1), oldest_Bxt, num_pinned)
    rebased_BxtxS = oldest_Bxt[:, :, None] - num_pinned + k_pos_S[None, None, :]
    k_pos_BxtxS = jnp.where(pinned_S[None, None, :], rebased_BxtxS, k_pos_S[None, None, :])
    return (q_pos_t[None, :, None] - k_pos_BxtxS).astype(jnp.int32)


def chunk_distance(cache: KVCache, mask_Bxtx_S_t: jax.Array) -> jax.Array:
    """int32 [B, t, S + t]: ALiBi distances of a chunk's queries from the cache slots and the chunk."""
    t = mask_Bxtx_S_t.shape[1]
    write_t = cache.index + jnp.arange(t, dtype=jnp.int32)
    k_pos_St = jnp.concatenate([cache.pos, write_t])
    pinned_St = jnp.arange(cache.size + t) < cache.pinned
    return alibi_distance(write_t, k_pos_St, mask_Bxtx_S_t, pinned_St, cache.pinned)


def pinned_prefix_distance(mask_BxTxT: jax.Array, prefix: int) -> jax.Array:
    """int32 [B, T, T]: the distances a cache with the first `prefix` tokens pinned gives a full forward
    pass under `mask` (e.g. what the ring shows each query), so the two can be compared exactly."""
    t = mask_BxTxT.shape[-1]
    i_T = jnp.arange(t, dtype=jnp.int32)
    return alibi_distance(i_T, i_T, jnp.asarray(mask_BxTxT), i_T < prefix, prefix)


def write_slots(cache: KVCache, t: int) -> jax.Array:
    """int32 [t]: slot of each new token; S (dropped on write) for tokens the chunk itself overwrites."""
    ring = ring_size(cache)
    write_t = cache.index + jnp.arange(t, dtype=jnp.int32)
    slot_t = cache.pinned + (write_t - cache.pinned) % ring
    survives_t = jnp.arange(t) >= t - ring  # Duplicate slots in one scatter would be order-undefined.
    return jnp.where(survives_t, slot_t, cache.size)


def append(cache: KVCache, keys_LxBxtxHxK: jax.Array, values_LxBxtxHxK: jax.Array,
           segment_ids_Bxt: jax.Array, last_keys_LxBxHxK: jax.Array | None = None) -> KVCache:
    """Writes a chunk's keys and values into their slots and advances `index`; `last_keys_LxBxHxK` (each
    row's last real raw key, smeared keys only) replaces `last_keys`."""
    t = segment_ids_Bxt.shape[1]
    slot_t = write_slots(cache, t)
    write_t = cache.index + jnp.arange(t, dtype=jnp.int32)
    if last_keys_LxBxHxK is not None:
        cache = cache._replace(last_keys=last_keys_LxBxHxK.astype(cache.last_keys.dtype))
    return cache._replace(
        has_last=cache.has_last | (segment_ids_Bxt != 0).any(axis=1),
        keys=cache.keys.at[:, :, slot_t].set(keys_LxBxtxHxK.astype(cache.keys.dtype), mode="drop"),
        values=cache.values.at[:, :, slot_t].set(values_LxBxtxHxK.astype(cache.values.dtype), mode="drop"),
        valid=cache.valid.at[:, slot_t].set(segment_ids_Bxt != 0, mode="drop"),
        pos=cache.pos.at[slot_t].set(write_t, mode="drop"),
        index=cache.index + t,
    )
