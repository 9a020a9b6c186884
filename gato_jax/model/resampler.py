"""Perceiver resampler (Flamingo; KOSMOS-1's image encoder): K learned queries per image.

Array key: B = batch, T = tokens, D = d_model, K = resampler_tokens, L = resampler layers.

An image enters the sequence as N patch positions (the tokenizers do not change). With
`model.image_encoder="resampler"` the last min(K, N) positions of each image carry the resampler's K
outputs instead of one patch each: output k starts as learned query k, then each layer cross-attends to
the image's patch embeddings and to the image's other outputs (Flamingo's "keys = patches + latents")
and applies an MLP, both residual. The first N - K positions become *holes*: `holes` marks them, and the
decoder treats them as padding (segment 0: no query ever attends to them, the cache never keeps them).
The outputs sit at the end of the image so that the token after it always follows a real output.

What it buys: the decoder attends to K tokens per image instead of N, and every image costs the same
number of attention keys whatever its size. What it does not buy yet: the hole positions still occupy the
fixed-length sequence, so the decoder's FLOPs per position are unchanged (README, "Vision and language").

The plain pass runs the resampler's layers at every position (T latents over 2T keys), though only K per
image are outputs; with K = 1 that was ~22% of a vision_language train step. The training step's sparse
path (`gathered=True`) runs them on each row's latents only, gathered up to a static cap per row
(`ROW_CAP_FRACTIONS` of T; every position when no cap holds a row's latents), keyed by the row's patches
and its gathered latents: the same outputs, since each latent reads only its own image either way.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from gato_jax.model import sparse
from gato_jax.model.attention import Attention, same_span
from gato_jax.model.layers import Mlp, ModelDims, layer_norm, partitioned

# Caps on one row's resampler outputs, as fractions of its length (rounded up to a multiple of 8): a 48-px
# image with K = 1 takes 11 positions (<image>, 9 patches, </image>), at most 12 outputs in a 128-token row.
ROW_CAP_FRACTIONS = (0.125, 0.5)


def slots_from_end(span_ids_BxT: jax.Array) -> jax.Array:
    """int32 [B, T]: 0 for the last position of each span, 1 for the one before, ...; -1 outside spans."""
    b, t = span_ids_BxT.shape
    i_T = jnp.arange(t, dtype=jnp.int32)
    # Last index of each position's span: the first later index whose span id differs, minus one.
    differs_BxT = jnp.pad(span_ids_BxT[:, 1:] != span_ids_BxT[:, :-1], ((0, 0), (0, 1)), constant_values=True)
    next_boundary_BxT = jnp.where(differs_BxT, i_T[None, :], t)
    last_BxT = jax.lax.cummin(next_boundary_BxT, axis=1, reverse=True)
    return jnp.where(span_ids_BxT != 0, last_BxT - i_T[None, :], -1).astype(jnp.int32)


def holes(span_ids_BxT: jax.Array, num_tokens: int) -> jax.Array:
    """bool [B, T]: image positions that carry no resampler output (all but the last K of each image)."""
    return slots_from_end(span_ids_BxT) >= num_tokens


class ResamplerLayer(nnx.Module):
    """latents + CrossAttn(LN(latents), [LN(patches); LN(latents)]), then latents + MLP(LN(latents))."""

    def __init__(self, dims: ModelDims, *, rngs: nnx.Rngs):
        self.latent_norm = layer_norm(dims, rngs=rngs)
        self.context_norm = layer_norm(dims, rngs=rngs)
        self.attn = Attention(dims, rngs=rngs)
        self.mlp_norm = layer_norm(dims, rngs=rngs)
        self.mlp = Mlp(dims, rngs=rngs)

    def __call__(self, latents_BxTxD: jax.Array, patches_BxTxD: jax.Array, mask_BxTx2T: jax.Array) -> jax.Array:
        context_Bx2TxD = jnp.concatenate(
            [self.context_norm(patches_BxTxD), self.context_norm(latents_BxTxD)], axis=1)
        y_BxTxD, _ = self.attn(self.latent_norm(latents_BxTxD), mask_BxTx2T, context_BxSxD=context_Bx2TxD)
        latents_BxTxD = latents_BxTxD + y_BxTxD
        return latents_BxTxD + self.mlp(self.mlp_norm(latents_BxTxD))


class PerceiverResampler(nnx.Module):
    """Compresses each image's patch embeddings to K tokens, in place (module docstring)."""

    def __init__(self, dims: ModelDims, *, rngs: nnx.Rngs):
        self.num_tokens = dims.resampler_tokens
        init = partitioned(nnx.initializers.normal(1.0), (None, "embed"))
        self.queries = nnx.Param(init(rngs.params(), (dims.resampler_tokens, dims.d_model), dims.params_dtype))
        self.layers = nnx.List([ResamplerLayer(dims, rngs=rngs) for _ in range(dims.resampler_layers)])

    def __call__(self, patches_BxTxD: jax.Array, span_ids_BxT: jax.Array, gathered: bool = False) -> jax.Array:
        """[B, T, D]: resampler outputs at each image's last K positions, `patches_BxTxD` elsewhere.
        `gathered`: compute only at the outputs (module docstring); the same result."""
        slot_BxT = slots_from_end(span_ids_BxT)
        is_latent_BxT = (slot_BxT >= 0) & (slot_BxT < self.num_tokens)
        # Output k of an image with n >= K patches sits at slot K - 1 - k; fewer patches keep the last ones.
        query_BxT = jnp.clip(self.num_tokens - 1 - slot_BxT, 0, self.num_tokens - 1)
        everywhere = functools.partial(self._everywhere, patches_BxTxD, span_ids_BxT, is_latent_BxT, query_BxT)
        caps = sparse.caps_from_fractions(ROW_CAP_FRACTIONS, span_ids_BxT.shape[1]) if gathered else ()
        if not caps:
            return everywhere()
        branches = [functools.partial(self._gathered, patches_BxTxD, span_ids_BxT, is_latent_BxT, query_BxT, cap)
                    for cap in caps]
        most = jnp.max(jnp.sum(is_latent_BxT.astype(jnp.int32), axis=1))
        return jax.lax.switch(sparse.bucket(most, caps), [*branches, jax.checkpoint(everywhere)])

    def _everywhere(self, patches_BxTxD, span_ids_BxT, is_latent_BxT, query_BxT) -> jax.Array:
        """Every position a latent (masked to its image); the non-latents' results are dropped."""
        latents_BxTxD = jnp.take(self.queries[...].astype(patches_BxTxD.dtype), query_BxT, axis=0)
        same_BxTxT = same_span(span_ids_BxT)
        mask_BxTx2T = jnp.concatenate([same_BxTxT, same_BxTxT & is_latent_BxT[:, None, :]], axis=-1)
        mask_BxTx2T = mask_BxTx2T | jnp.eye(*mask_BxTx2T.shape[1:], dtype=bool)[None]  # No empty rows.
        for layer in self.layers:
            latents_BxTxD = layer(latents_BxTxD, patches_BxTxD, mask_BxTx2T)
        return jnp.where(is_latent_BxT[..., None], latents_BxTxD, patches_BxTxD)

    def _gathered(self, patches_BxTxD, span_ids_BxT, is_latent_BxT, query_BxT, cap: int) -> jax.Array:
        """Each row's first `cap` latents (R = cap) over the row's patches and those latents, scattered back."""
        t = span_ids_BxT.shape[1]
        idx_BxR, valid_BxR = jax.vmap(lambda row: sparse.masked_indices(row, cap))(is_latent_BxT)  # Fill: t.
        at_BxR = jnp.minimum(idx_BxR, t - 1)
        span_BxR = jnp.where(valid_BxR, jnp.take_along_axis(span_ids_BxT, at_BxR, axis=1), -1)  # -1 meets nothing.
        query_BxR = jnp.take_along_axis(query_BxT, at_BxR, axis=1)
        latents_BxRxD = jnp.take(self.queries[...].astype(patches_BxTxD.dtype), query_BxR, axis=0)
        to_patches_BxRxT = span_BxR[:, :, None] == span_ids_BxT[:, None, :]
        to_latents_BxRxR = (span_BxR[:, :, None] == span_BxR[:, None, :]) | jnp.eye(cap, dtype=bool)[None]
        mask_BxRx_TR = jnp.concatenate([to_patches_BxRxT, to_latents_BxRxR], axis=-1)  # Unused slots: each other.
        for layer in self.layers:
            latents_BxRxD = layer(latents_BxRxD, patches_BxTxD, mask_BxRx_TR)
        scatter = jax.vmap(lambda rows_TxD, idx_R, new_RxD: rows_TxD.at[idx_R].set(new_RxD, mode="drop"))
        return scatter(patches_BxTxD, idx_BxR, latents_BxRxD)
