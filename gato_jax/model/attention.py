"""Multi-head attention, the attention mask built from a TokenSequence, and ALiBi position biases.

Array key: B = batch, T = query tokens, S = key tokens, D = d_model, H = heads, K = head_dim.

The mask is data (built from segment and span ids here, from the cache in `cache.chunk_mask`), never
hard-coded in the attention layer. Causal (Gato) and semi-causal (MetaLM) masks come from one per-token
span id, as PaliGemma's `make_attn_mask` builds causal, prefix and block-causal masks from one per-token
flag: a span is a run of positions that see each other both ways (one image, or one observation), and
everything else stays causal, so every later token sees every earlier image.
So are the query-key distances the ALiBi bias reads (`causal_distance` here, `cache.alibi_distance` for
the cache): the layer only knows its per-head slopes.

Smeared keys (`model.smear_keys`; Olsson et al. 2022, "In-context learning and induction heads"): each key
becomes g_h * k_t + (1 - g_h) * k_prev, k_prev the key of the previous real token of the same segment and g_h
a learned per-head gate. A word's key then also says what came right before it, so "find the word that
followed something like this" is one attention step instead of two composed across layers (README, "Where
the lookup stalls"). `previous_positions` says where each position's k_prev comes from; in a cached decode
the key before the chunk comes from the cache (`KVCache.last_keys`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gato_jax.model.layers import ModelDims, fan_in_init, partitioned
from gato_jax.tokenizers.sequence import ACTION_LOCAL_POS, Modality


def segment_mask(segment_ids_BxT: jax.Array) -> jax.Array:
    """bool [B, T, T]: causal, within one segment, never onto padding (segment 0).

    Every query also attends to itself, so padding rows softmax over one key instead of none (no NaN).
    """
    t = segment_ids_BxT.shape[1]
    i_T = jnp.arange(t)
    causal_TxT = i_T[None, :] <= i_T[:, None]
    same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    real_key_BxTxT = (segment_ids_BxT != 0)[:, None, :]
    return (causal_TxT[None] & same_BxTxT & real_key_BxTxT) | jnp.eye(t, dtype=bool)[None]


def span_ids(modality_BxT: jax.Array, local_pos_BxT: jax.Array, segment_ids_BxT: jax.Array,
             spans: str = "images") -> jax.Array:
    """int32 [B, T]: the span (> 0) each position belongs to, 0 outside every span.

    A span is a maximal run of consecutive in-span positions of one segment. In-span positions are image
    patches for `spans="images"`; for "observations" also every other observation token (local position
    >= 0 and not the action position), so one timestep's observation is one span. Ids are unique within
    a row, so a chunk's ids can be computed from the chunk alone when no span crosses a chunk boundary.
    """
    in_span_BxT = (modality_BxT == Modality.IMAGE) & (segment_ids_BxT != 0)
    if spans == "observations":
        is_obs_BxT = (local_pos_BxT >= 0) & (local_pos_BxT != ACTION_LOCAL_POS) & (modality_BxT != Modality.PAD)
        in_span_BxT = in_span_BxT | (is_obs_BxT & (segment_ids_BxT != 0))
    elif spans != "images":
        raise ValueError(f"Unknown span kind {spans!r}; use 'images' or 'observations'.")
    prev_in_BxT = jnp.pad(in_span_BxT[:, :-1], ((0, 0), (1, 0)))
    prev_segment_BxT = jnp.pad(segment_ids_BxT[:, :-1], ((0, 0), (1, 0)))
    start_BxT = in_span_BxT & ~(prev_in_BxT & (prev_segment_BxT == segment_ids_BxT))
    return jnp.where(in_span_BxT, jnp.cumsum(start_BxT, axis=-1), 0).astype(jnp.int32)


def same_span(span_ids_BxT: jax.Array, span_ids_BxS: jax.Array | None = None) -> jax.Array:
    """bool [B, T, S]: query and key lie in the same (non-zero) span."""
    span_ids_BxS = span_ids_BxT if span_ids_BxS is None else span_ids_BxS
    return (span_ids_BxT[:, :, None] == span_ids_BxS[:, None, :]) & (span_ids_BxT[:, :, None] != 0)


def attention_mask(segment_ids_BxT: jax.Array, span_ids_BxT: jax.Array | None = None) -> jax.Array:
    """bool [B, T, T]: `segment_mask`, plus both directions inside each span when `span_ids_BxT` is given
    (semi-causal). A span never crosses segments, so nothing leaks between packed examples."""
    mask_BxTxT = segment_mask(segment_ids_BxT)
    return mask_BxTxT if span_ids_BxT is None else mask_BxTxT | same_span(span_ids_BxT)


def alibi_slopes(num_heads: int) -> tuple[float, ...]:
    """ALiBi slope of each head (Press et al. 2022): 2^(-8i/H) for i = 1..H when H is a power of two.

    Otherwise, as in the paper's code: the n = 2^floor(log2 H) slopes of n heads, then every other slope
    of 2n heads (the ones between them) for the remaining H - n heads.
    """
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
    if n < num_heads:
        slopes += alibi_slopes(2 * n)[0::2][: num_heads - n]
    return tuple(slopes)


def causal_distance(t: int) -> jax.Array:
    """int32 [1, T, T]: query index - key index, the ALiBi distance of a full forward pass.

    Packed segments need no restart: the mask already hides other segments, and a bias that only depends
    on the difference is the same whichever index a segment starts at.
    """
    i_T = jnp.arange(t, dtype=jnp.int32)
    return (i_T[:, None] - i_T[None, :])[None]


def dot_product_attention(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                          mask_BxTxS: jax.Array, distance_BxTxS: jax.Array | None = None,
                          slopes_H: tuple[float, ...] | None = None) -> jax.Array:
    """Softmax attention; scores, the ALiBi bias -slope_h * |distance| and softmax in float32 whatever the
    compute dtype. No bias when `distance_BxTxS` is None (its batch axis may be 1). The absolute value
    only matters inside a semi-causal span, where a key may follow its query: it is penalised by how far
    away it is, as a preceding key is (bidirectional ALiBi)."""
    scale = q_BxTxHxK.shape[-1] ** -0.5
    scores_BxHxTxS = jnp.einsum(
        "bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32) * scale
    if distance_BxTxS is not None:
        slopes_1xHx1x1 = jnp.asarray(slopes_H, jnp.float32)[None, :, None, None]
        scores_BxHxTxS = scores_BxHxTxS - slopes_1xHx1x1 * jnp.abs(distance_BxTxS[:, None]).astype(jnp.float32)
    scores_BxHxTxS = jnp.where(mask_BxTxS[:, None], scores_BxHxTxS, jnp.finfo(jnp.float32).min)
    probs_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(v_BxSxHxK.dtype)
    return jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS, v_BxSxHxK)


class Previous(NamedTuple):
    """Where each position's previous key comes from, indexed into [the key before the chunk, the chunk's
    keys] (index 0 is the key before the chunk: none in a full pass, the cache's in a decode)."""

    index_BxT: jax.Array  # int32: the previous real token (0: before the chunk).
    present_BxT: jax.Array  # bool: a real position whose previous real token is of its segment.
    last_index_B: jax.Array  # int32: each row's last real token (0: none in the chunk).


def previous_positions(segment_ids_BxT: jax.Array, has_last_B: jax.Array | None = None) -> Previous:
    """The previous real (segment != 0) position of each position, skipping padding and resampler holes.

    `has_last_B` (bool): the row has a real token before the chunk (a cache); None for a full pass. The
    previous token must be of the same segment, so packed examples never mix keys.
    """
    b, t = segment_ids_BxT.shape
    real_BxT = segment_ids_BxT != 0
    index_BxT = jnp.where(real_BxT, jnp.arange(1, t + 1, dtype=jnp.int32)[None], 0)
    latest_BxT = jax.lax.cummax(index_BxT, axis=1)  # Last real position at or before each, 0 for none.
    previous_BxT = jnp.pad(latest_BxT[:, :-1], ((0, 0), (1, 0)))
    previous_segment_BxT = jnp.take_along_axis(segment_ids_BxT, jnp.maximum(previous_BxT - 1, 0), axis=1)
    has_last_B = jnp.zeros((b,), bool) if has_last_B is None else has_last_B
    present_BxT = real_BxT & jnp.where(previous_BxT > 0, previous_segment_BxT == segment_ids_BxT, has_last_B[:, None])
    return Previous(previous_BxT, present_BxT, latest_BxT[:, -1])


def smear_keys(k_BxTxHxK: jax.Array, gate_H: jax.Array, previous: Previous,
               last_key_BxHxK: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Keys mixed with their previous real token's key, gate_H * k + (1 - gate_H) * k_prev where one
    exists (`previous.present_BxT`), and each row's last real key (raw) for the next chunk."""
    last_key_BxHxK = jnp.zeros_like(k_BxTxHxK[:, 0]) if last_key_BxHxK is None else last_key_BxHxK
    keys_Bx_1_T_xHxK = jnp.concatenate([last_key_BxHxK[:, None].astype(k_BxTxHxK.dtype), k_BxTxHxK], axis=1)
    k_prev_BxTxHxK = jnp.take_along_axis(keys_Bx_1_T_xHxK, previous.index_BxT[:, :, None, None], axis=1)
    gate_1x1xHx1 = gate_H.astype(k_BxTxHxK.dtype)[None, None, :, None]
    mixed_BxTxHxK = gate_1x1xHx1 * k_BxTxHxK + (1 - gate_1x1xHx1) * k_prev_BxTxHxK
    smeared_BxTxHxK = jnp.where(previous.present_BxT[:, :, None, None], mixed_BxTxHxK, k_BxTxHxK)
    last_BxHxK = jnp.take_along_axis(keys_Bx_1_T_xHxK, previous.last_index_B[:, None, None, None], axis=1)[:, 0]
    return smeared_BxTxHxK, last_BxHxK


class Attention(nnx.Module):
    """Projections to per-head queries, keys and values, attention, and the output projection."""

    def __init__(self, dims: ModelDims, *, smear: bool = False, rngs: nnx.Rngs):
        """`smear`: learn a per-head gate of smeared keys (module docstring); the decoder's self-attention
        sets it from `model.smear_keys`, cross-attention never does."""
        d, h, k = dims.d_model, dims.num_heads, dims.head_dim
        in_init = partitioned(fan_in_init(0, (1, 2)), ("embed", "heads", "kv"))
        out_init = partitioned(fan_in_init((0, 1), 2), ("heads", "kv", "embed"))
        self.query = nnx.Einsum("btd,dhk->bthk", (d, h, k), kernel_init=in_init, rngs=rngs, **dims.dtypes())
        self.key = nnx.Einsum("btd,dhk->bthk", (d, h, k), kernel_init=in_init, rngs=rngs, **dims.dtypes())
        self.value = nnx.Einsum("btd,dhk->bthk", (d, h, k), kernel_init=in_init, rngs=rngs, **dims.dtypes())
        self.out = nnx.Einsum("bthk,hkd->btd", (h, k, d), kernel_init=out_init, rngs=rngs, **dims.dtypes())
        self.slopes_H = alibi_slopes(h)  # Static (a tuple), used only when a distance is passed.
        # Gate logits, sigmoid(0) = 0.5: at initialisation every key is half its own, half its predecessor's.
        gate_logits_H = jnp.zeros((h,), dims.params_dtype)
        self.smear_logit_H = nnx.Param(gate_logits_H, out_sharding=("heads",), eager_sharding=False) if smear else None

    def __call__(self, x_BxTxD: jax.Array, mask_BxTxS: jax.Array,
                 past: tuple[jax.Array, jax.Array] | None = None,
                 distance_BxTxS: jax.Array | None = None,
                 context_BxSxD: jax.Array | None = None, previous: Previous | None = None,
                 last_key_BxHxK: jax.Array | None = None) -> tuple[jax.Array, tuple]:
        """Attends over `past` keys/values ([B, S-T, H, K] each, from a cache) followed by this chunk's.

        `distance_BxTxS` (int, query position - key position) turns on the ALiBi bias; None leaves it off.
        `context_BxSxD` makes it cross-attention: keys and values from the context instead of `x_BxTxD`
        (the perceiver resampler's latents reading patch embeddings). `previous` (needed with `smear`) and
        `last_key_BxHxK` (the raw key before the chunk, from a cache) smear the keys.
        Returns the output [B, T, D] and, for the cache, this chunk's keys (smeared) and values, and each
        row's last raw key (None without `smear`).
        """
        kv_BxSxD = x_BxTxD if context_BxSxD is None else context_BxSxD
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = self.query(x_BxTxD), self.key(kv_BxSxD), self.value(kv_BxSxD)
        last_BxHxK = None
        if self.smear_logit_H is not None:
            if previous is None:
                raise ValueError("Attention(smear=True) needs `previous` (attention.previous_positions).")
            gate_H = jax.nn.sigmoid(self.smear_logit_H[...])
            k_BxTxHxK, last_BxHxK = smear_keys(k_BxTxHxK, gate_H, previous, last_key_BxHxK)
        k_BxSxHxK, v_BxSxHxK = k_BxTxHxK, v_BxTxHxK
        if past is not None:
            k_BxSxHxK = jnp.concatenate([past[0], k_BxTxHxK], axis=1)
            v_BxSxHxK = jnp.concatenate([past[1], v_BxTxHxK], axis=1)
        y_BxTxHxK = dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, distance_BxTxS,
                                          self.slopes_H)
        return self.out(y_BxTxHxK), (k_BxTxHxK, v_BxTxHxK, last_BxHxK)
