"""The Gato decoder: embeddings, pre-LayerNorm blocks, tied float32 logits; full and cached passes.

Array key: B = batch, T = tokens, t = tokens in a decode chunk, S = cache slots, D = d_model,
V = vocabulary, L = layers, H = heads, K = head_dim.

Two entry points share the weights: `__call__` (scoring) over whole TokenSequences, and `decode`
(acting, sampling) over chunks appended to a KVCache. Tests hold them equal. Both build the attention
mask and, with `model.position_bias="alibi"`, the query-key distances once, outside the scan over
layers. Training calls `hidden` (the stream before the logits), then `logits` only where a target
follows (`train.loss`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gato_jax import sharding
from gato_jax.model import cache as cache_lib
from gato_jax.model import resampler as resampler_lib
from gato_jax.model.attention import Attention, Previous, attention_mask, causal_distance, previous_positions, span_ids
from gato_jax.model.embed import Embedder
from gato_jax.model.layers import Mlp, ModelDims, layer_norm
from gato_jax.tokenizers.sequence import TokenSequence

LAYER_AXIS = "layers"  # Leading axis of stacked block parameters.
ACTIVATION_AXES = ("batch", "length", "act_embed")
LOGIT_AXES = ("batch", "length", "act_vocab")


class Block(nnx.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)); dropout on both residual branches when enabled."""

    def __init__(self, dims: ModelDims, *, rngs: nnx.Rngs):
        self.attn_norm = layer_norm(dims, rngs=rngs)
        self.attn = Attention(dims, smear=dims.smear_keys, rngs=rngs)
        self.mlp_norm = layer_norm(dims, rngs=rngs)
        self.mlp = Mlp(dims, rngs=rngs)
        self.dropout = nnx.Dropout(dims.dropout_rate)

    def __call__(self, x_BxTxD: jax.Array, mask_BxTxS: jax.Array, past=None,
                 dropout_key: jax.Array | None = None,
                 distance_BxTxS: jax.Array | None = None, previous: Previous | None = None,
                 last_key_BxHxK: jax.Array | None = None) -> tuple[jax.Array, tuple]:
        """`dropout_key` None means deterministic; `distance_BxTxS` None means no ALiBi bias; `previous`
        and `last_key_BxHxK` smear keys (`Attention`). Returns the new stream and, for the cache, this
        chunk's keys/values and each row's last raw key (None unless smearing)."""
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        y_BxTxD, kv = self.attn(self.attn_norm(x_BxTxD), mask_BxTxS, past, distance_BxTxS,
                                previous=previous, last_key_BxHxK=last_key_BxHxK)
        x_BxTxD = x_BxTxD + self._drop(y_BxTxD, keys[0])
        x_BxTxD = x_BxTxD + self._drop(self.mlp(self.mlp_norm(x_BxTxD)), keys[1])
        return sharding.constrain(x_BxTxD, ACTIVATION_AXES), kv

    def _drop(self, y: jax.Array, key: jax.Array | None) -> jax.Array:
        if key is None or self.dropout.rate == 0.0:
            return y
        return self.dropout(y, deterministic=False, rngs=key)


def _as_key(rngs: nnx.Rngs | jax.Array | None) -> jax.Array:
    if rngs is None:
        raise ValueError("Gato(..., deterministic=False) samples patch positions and dropout: pass rngs.")
    return rngs() if isinstance(rngs, nnx.Rngs) else jnp.asarray(rngs)


def _prepend_layer_axis(variable: nnx.Variable) -> nnx.Variable:
    names = variable.get_metadata().get("out_sharding") or (None,) * (variable.ndim - 1)
    variable.set_metadata(out_sharding=(LAYER_AXIS,) + tuple(names))
    return variable


def stacked_blocks(dims: ModelDims, rngs: nnx.Rngs) -> Block:
    """All L blocks as one Block whose parameters have a leading layer axis, for `jax.lax.scan`.

    One random draw per parameter kind instead of one per layer: initialisation compiles ~L times
    faster (each draw cost ~0.5 s of XLA compile on CPU), and the forward pass compiles one block.
    """
    keys_L = jax.random.split(rngs.params(), dims.num_layers)
    graphdefs = []  # Static structure, captured while tracing (nnx.eval_shape would need a mesh-free context).

    def init_one(key: jax.Array) -> nnx.State:
        graphdef, state = nnx.split(Block(dims, rngs=nnx.Rngs(params=key)))
        graphdefs.append(graphdef)
        return state

    state = jax.vmap(init_one)(keys_L)
    state = jax.tree.map(_prepend_layer_axis, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    graphdef = graphdefs[0]
    return nnx.merge(graphdef, state)


class Gato(nnx.Module):
    """Decoder-only transformer over TokenSequences (docs/TOKEN_FORMAT.md, "Model sizes").

    Output logits are tied to the token table [D] (the paper's sizes are only within 10% that way).
    Blocks are stacked on a leading layer axis and run with `jax.lax.scan`; `model.remat` wraps the
    scanned block in `jax.checkpoint` (what `nnx.remat` does, applied to the pure per-layer function).
    """

    def __init__(self, model_config: ml_collections.ConfigDict, vocab_size: int, *, rngs: nnx.Rngs):
        self.dims = ModelDims.from_config(model_config)
        self.vocab_size = vocab_size
        self.embed = Embedder(self.dims, vocab_size, rngs=rngs)
        self.blocks = stacked_blocks(self.dims, rngs)
        self.final_norm = layer_norm(self.dims, rngs=rngs)

    def __call__(self, seq: TokenSequence, deterministic: bool = True,
                 rngs: nnx.Rngs | jax.Array | None = None, mask: jax.Array | None = None,
                 distance: jax.Array | None = None) -> jax.Array:
        """Logits float32 [B, T, V]; position t predicts token t+1.

        `rngs` (an nnx.Rngs or a key) is needed when `deterministic` is False (patch-position sampling,
        dropout). `mask` (bool [B, T, T], query x key) replaces the causal segment mask, e.g. to state
        what a ring cache sees; every row must keep its diagonal. `distance` (int [B, T, T], query x key)
        replaces the ALiBi distances query index - key index, e.g. with the re-based prompt distances of a
        ring cache (`cache.pinned_prefix_distance`); it is ignored when `model.position_bias="none"`.
        """
        return self.logits(self.hidden(seq, deterministic, rngs, mask, distance))

    def hidden(self, seq: TokenSequence, deterministic: bool = True,
               rngs: nnx.Rngs | jax.Array | None = None, mask: jax.Array | None = None,
               distance: jax.Array | None = None, image_caps: tuple[int, ...] | None = None,
               unroll: int = 1) -> jax.Array:
        """The residual stream after the last block, [B, T, D] (before the final norm): `logits` of it
        is `__call__`. Training takes logits only where a target follows (`train.loss`).

        Arguments as `__call__`; `image_caps` (a tuple, possibly empty) runs the patch ResNet as matrix
        products on image positions only and the perceiver resampler only at its outputs
        (`Embedder.__call__`): the same embeddings, faster. `unroll`:
        layers per iteration of the scan over layers, 0 for all (the backward pass then stacks no
        per-layer residuals; on CPU that was ~15% of a train step).
        """
        seq = TokenSequence(*(jnp.asarray(field) for field in seq))
        embed_key, keys_L = None, None
        if not deterministic:
            embed_key, layers_key = jax.random.split(_as_key(rngs))
            keys_L = jax.random.split(layers_key, self.dims.num_layers)
        image_spans_BxT = span_ids(seq.modality, seq.local_pos, seq.segment_ids, "images")
        x_BxTxD = self.embed(seq, key=embed_key, image_caps=image_caps, image_spans=image_spans_BxT)
        x_BxTxD = sharding.constrain(x_BxTxD, ACTIVATION_AXES)
        seq = self._without_holes(seq, image_spans_BxT)
        mask_BxTxT = attention_mask(seq.segment_ids, self._spans(seq)) if mask is None else jnp.asarray(mask)
        distance_BxTxT = None
        if self.dims.position_bias == "alibi":
            distance_BxTxT = causal_distance(x_BxTxD.shape[1]) if distance is None else jnp.asarray(distance)
        previous = previous_positions(seq.segment_ids) if self.dims.smear_keys else None
        graphdef, state_L = nnx.split(self.blocks)

        def body(x_BxTxD, layer):
            state, key = layer
            block = nnx.merge(graphdef, state)
            x_BxTxD, _ = block(x_BxTxD, mask_BxTxT, dropout_key=key, distance_BxTxS=distance_BxTxT, previous=previous)
            return x_BxTxD, None

        if self.dims.remat:  # Keep only each block's input; recompute the rest in the backward pass.
            body = jax.checkpoint(body, prevent_cse=False)
        x_BxTxD, _ = jax.lax.scan(body, x_BxTxD, (state_L, keys_L), unroll=unroll or self.dims.num_layers)
        return x_BxTxD

    def _without_holes(self, seq: TokenSequence, image_spans_BxT: jax.Array) -> TokenSequence:
        """With the resampler, the image positions that carry no output become padding (segment 0)."""
        if self.dims.image_encoder != "resampler":
            return seq
        holes_BxT = resampler_lib.holes(image_spans_BxT, self.dims.resampler_tokens)
        return seq._replace(segment_ids=jnp.where(holes_BxT, 0, seq.segment_ids))

    def _spans(self, seq: TokenSequence) -> jax.Array | None:
        """Span ids of the semi-causal mask (`attention.attention_mask`); None for a causal model."""
        if self.dims.attention == "causal":
            return None
        return span_ids(seq.modality, seq.local_pos, seq.segment_ids, self.dims.semi_causal_spans)

    def logits(self, x_BxTxD: jax.Array) -> jax.Array:
        """Final norm and tied projection of a residual stream [B, T, D]: float32 logits [B, T, V]."""
        logits_BxTxV = self.embed.attend(self.final_norm(x_BxTxD))
        return sharding.constrain(logits_BxTxV, LOGIT_AXES)

    def init_cache(self, batch_size: int, size: int) -> cache_lib.KVCache:
        """An empty KVCache of `size` slots in the compute dtype."""
        d = self.dims
        return cache_lib.init_cache(d.num_layers, batch_size, size, d.num_heads, d.head_dim, d.compute_dtype,
                                    smear_keys=d.smear_keys)

    def decode(self, seq_chunk: TokenSequence, cache: cache_lib.KVCache) -> tuple[jax.Array, cache_lib.KVCache]:
        """Appends `seq_chunk` [B, t] after the cache's tokens: logits float32 [B, t, V] and the new cache.

        New tokens attend to every live cache slot and causally within the chunk (both ways inside a span
        of a semi-causal model: write each span, e.g. one observation, within one chunk); segment ids only
        mark padding (the cache holds one segment). ALiBi distances count write numbers, with the pinned prompt
        re-based before the oldest live token (`cache` module docstring). Shapes are fixed by (B, t, S),
        so jit compiles once per t.
        """
        x_BxtxD, cache = self.decode_hidden(seq_chunk, cache)
        return self.logits(x_BxtxD), cache

    def decode_hidden(self, seq_chunk: TokenSequence,
                      cache: cache_lib.KVCache) -> tuple[jax.Array, cache_lib.KVCache]:
        """`decode` without the logits: the stream [B, t, D] and the new cache. Acting samples only from a
        chunk's last position, so it projects just that one onto the vocabulary (`logits`)."""
        seq_chunk = TokenSequence(*(jnp.asarray(field) for field in seq_chunk))
        image_spans_Bxt = span_ids(seq_chunk.modality, seq_chunk.local_pos, seq_chunk.segment_ids, "images")
        x_BxtxD = self.embed(seq_chunk, image_spans=image_spans_Bxt)
        seq_chunk = self._without_holes(seq_chunk, image_spans_Bxt)
        mask_Bxtx_S_t = cache_lib.chunk_mask(cache, seq_chunk.segment_ids, self._spans(seq_chunk))
        distance_Bxtx_S_t = None
        if self.dims.position_bias == "alibi":
            distance_Bxtx_S_t = cache_lib.chunk_distance(cache, mask_Bxtx_S_t)
        previous = previous_positions(seq_chunk.segment_ids, cache.has_last) if self.dims.smear_keys else None
        graphdef, state_L = nnx.split(self.blocks)

        def body(x_BxtxD, layer):
            state, past_k_BxSxHxK, past_v_BxSxHxK, last_key_BxHxK = layer
            block = nnx.merge(graphdef, state)
            return block(x_BxtxD, mask_Bxtx_S_t, (past_k_BxSxHxK, past_v_BxSxHxK),
                         distance_BxTxS=distance_Bxtx_S_t, previous=previous, last_key_BxHxK=last_key_BxHxK)

        layers = (state_L, cache.keys, cache.values, cache.last_keys)
        x_BxtxD, (k_LxBxtxHxK, v_LxBxtxHxK, last_LxBxHxK) = jax.lax.scan(body, x_BxtxD, layers)
        cache = cache_lib.append(cache, k_LxBxtxHxK, v_LxBxtxHxK, seq_chunk.segment_ids, last_LxBxHxK)
        return x_BxtxD, cache
