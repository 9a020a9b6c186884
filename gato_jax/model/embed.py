"""Input embedding: one token table, a ResNet v2 block for image patches, and position tables.

Array key: B = batch, T = tokens, D = d_model, P = patch pixels (patch_size**2 * 3), N = B*T patches,
G = patch side after the stem (patch_size / stem stride), C = resnet_channels, V = vocabulary.

Decisions:
- [D] The token table is tied with the output logits (see `Gato.logits`); it is initialised with
  stddev 1/sqrt(D) and scaled by sqrt(D) on input, so inputs have unit-scale components like the patch
  embedding, while tied logits start with unit variance.
- [D] Patch block: strided stem conv (kernel = stride = `patch_stem_stride`, default 4) to C channels, then
  the pre-activation block GroupNorm(32) -> GELU -> conv3x3 -> GroupNorm(32) -> GELU -> conv3x3 plus the
  stem as residual, flattened (G*G*C) and projected to D. The block runs at every position (fixed shapes)
  and `jnp.where` keeps it only at IMAGE positions; the stem keeps that cheap.
- Patch positions [A]: row and column tables of PATCH_POS_BUCKETS entries. Training samples an integer
  uniformly in [lo, hi); evaluation uses the rounded mean (lo + hi) // 2 (clipped into [lo, hi)).
- No global position embedding [D]: order enters only as the relative ALiBi bias in attention
  (`model.position_bias`, attention.py), or not at all with "none". A token's embedding therefore never
  depends on its absolute index, which keeps the ring KV cache with a pinned prompt exact (a token
  evicted from the ring leaves no trace in the others' positions).
"""
from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
from flax import nnx

from gato_jax import sharding
from gato_jax.model import sparse
from gato_jax.model.layers import ModelDims, fan_in_init, partitioned
from gato_jax.model.resampler import PerceiverResampler
from gato_jax.tokenizers.sequence import (
    IMAGE_CHANNELS,
    MAX_LOCAL_POSITIONS,
    PATCH_POS_BUCKETS,
    Modality,
    TokenSequence,
    normalize_patches,
)

GROUPS = 32  # GroupNorm groups in the patch block [P/A].
# Widest grid (G*G*C) whose 3x3 conv `PatchResNet(as_matmuls=True)` runs as one dense matrix; wider ones
# (a stem stride under 4) keep the conv.
MAX_DENSE_CONV_WIDTH = 2048
_LOG = logging.getLogger(__name__)


def _conv(dims: ModelDims, c_in: int, c_out: int, kernel: int, stride: int, *, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        c_in, c_out, (kernel, kernel), (stride, stride), padding="VALID" if stride > 1 else "SAME",
        kernel_init=partitioned(fan_in_init(), ("conv", "conv", "conv", "conv")),
        bias_init=partitioned(nnx.initializers.zeros, ("conv",)), rngs=rngs, **dims.dtypes())


def _group_norm(dims: ModelDims, channels: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(
        channels, num_groups=GROUPS,
        scale_init=partitioned(nnx.initializers.ones, ("conv",)),
        bias_init=partitioned(nnx.initializers.zeros, ("conv",)), rngs=rngs, **dims.dtypes())


class PatchResNet(nnx.Module):
    """One pre-activation ResNet v2 block that turns a uint8 patch into a D-wide embedding."""

    def __init__(self, dims: ModelDims, *, rngs: nnx.Rngs):
        c, s = dims.resnet_channels, dims.patch_stem_stride
        self.patch_size = dims.patch_size
        self.grid = dims.patch_size // s
        width = self.grid * self.grid * c
        if width > MAX_DENSE_CONV_WIDTH and jax.default_backend() == "cpu":
            # A 40-px patch with the stride-4 stem (10x10 grid) ran ~69 s per atari_mix step, against ~1.7 s
            # with stride 8 (5x5), and nothing said why.
            _LOG.warning("The patch ResNet's %dx%d grid of %d channels (%d > %d) keeps XLA's 3x3 convolutions, "
                         "tens of times slower on CPU than the matrix products; raise model.patch_stem_stride "
                         "(e.g. to %d) or lower model.resnet_channels.", self.grid, self.grid, c, width,
                         MAX_DENSE_CONV_WIDTH, 2 * s)
        self.stem = _conv(dims, IMAGE_CHANNELS, c, s, s, rngs=rngs)
        self.norm1 = _group_norm(dims, c, rngs=rngs)
        self.conv1 = _conv(dims, c, c, 3, 1, rngs=rngs)
        self.norm2 = _group_norm(dims, c, rngs=rngs)
        self.conv2 = _conv(dims, c, c, 3, 1, rngs=rngs)
        self.proj = nnx.Linear(
            self.grid * self.grid * c, dims.d_model,
            kernel_init=partitioned(fan_in_init(), ("patch_flat", "embed")),
            bias_init=partitioned(nnx.initializers.zeros, ("embed",)), rngs=rngs, **dims.dtypes())

    def __call__(self, patches_BxTxP: jax.Array, as_matmuls: bool = False) -> jax.Array:
        """Embeddings [B, T, D]. `as_matmuls` computes the same convolutions as matrix products
        (`_stem_matmul`, `_conv3x3_matmul`): XLA's CPU convolutions on a 4x4 grid ran at a fraction of
        its matmul speed, and their kernel gradients inside `lax.switch` far slower still."""
        b, t, _ = patches_BxTxP.shape
        p = self.patch_size
        x_NxPxPx3 = normalize_patches(patches_BxTxP, p).reshape(b * t, p, p, IMAGE_CHANNELS)
        dense = as_matmuls and self.grid * self.grid * self.conv1.out_features <= MAX_DENSE_CONV_WIDTH
        conv = self._conv3x3_matmul if dense else (lambda layer, x: layer(x))
        h_NxGxGxC = self._stem_matmul(x_NxPxPx3) if as_matmuls else self.stem(x_NxPxPx3)
        r_NxGxGxC = conv(self.conv1, jax.nn.gelu(self.norm1(h_NxGxGxC), approximate=True))
        r_NxGxGxC = conv(self.conv2, jax.nn.gelu(self.norm2(r_NxGxGxC), approximate=True))
        h_NxGxGxC = h_NxGxGxC + r_NxGxGxC
        return self.proj(h_NxGxGxC.reshape(b, t, -1))

    def _stem_matmul(self, x_NxPxPx3: jax.Array) -> jax.Array:
        """The stem conv (kernel = stride = S, no padding): each S x S block times the kernel."""
        n, g = x_NxPxPx3.shape[0], self.grid
        s = self.patch_size // g
        dtype = self.stem.dtype or x_NxPxPx3.dtype
        x_NxGxSxGxSx3 = x_NxPxPx3.reshape(n, g, s, g, s, IMAGE_CHANNELS).astype(dtype)
        kernel_SxSx3xC = self.stem.kernel[...].astype(dtype)
        h_NxGxGxC = jnp.einsum("nasbtc,stcd->nabd", x_NxGxSxGxSx3, kernel_SxSx3xC)
        return h_NxGxGxC + self.stem.bias[...].astype(dtype)[None, None, None, :]

    def _conv3x3_matmul(self, layer: nnx.Conv, x_NxGxGxC: jax.Array) -> jax.Array:
        """A 3x3 'SAME' conv over the G x G grid as one [G*G*C, G*G*C] matrix (zeros where a kernel tap
        falls off the grid): 9/4 the FLOPs of the conv at G=4, at dense-matmul speed."""
        n, g, _, c = x_NxGxGxC.shape
        dtype = layer.dtype or x_NxGxGxC.dtype
        i_G = jnp.arange(g)
        # tap_GxGx3[i, o, k]: input i feeds output o through kernel tap k (k = i - o + 1).
        tap_GxGx3 = (i_G[:, None, None] - i_G[None, :, None] + 1 == jnp.arange(3)[None, None, :]).astype(dtype)
        kernel_3x3xCxC = layer.kernel[...].astype(dtype)
        matrix = jnp.einsum("iok,jpl,klcd->ijcopd", tap_GxGx3, tap_GxGx3, kernel_3x3xCxC).reshape(g * g * c, -1)
        y_NxF = x_NxGxGxC.reshape(n, g * g * c).astype(dtype) @ matrix
        return y_NxF.reshape(n, g, g, -1) + layer.bias[...].astype(dtype)[None, None, None, :]


def _table(dims: ModelDims, entries: int, *, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        entries, dims.d_model,
        embedding_init=partitioned(nnx.initializers.normal(0.02), ("table", "embed")), rngs=rngs, **dims.dtypes())


def lookup(table: nnx.Embed, ids: jax.Array, row_axis: str = "table") -> jax.Array:
    """Rows of `table` for integer `ids`, in the compute dtype.

    The table is gathered over its width (FSDP) before the lookup: left sharded on 'embed' while the
    ids are sharded over (data, fsdp), the gather needs a full rematerialisation (XLA warns).
    """
    table_NxD = sharding.constrain(table.embedding[...], (row_axis, None))
    return jnp.take(table_NxD.astype(table.dtype or table_NxD.dtype), ids, axis=0)


def patch_position_index(lo: jax.Array, hi: jax.Array, key: jax.Array | None) -> jax.Array:
    """Table index inside [lo, hi): uniform sample when `key` is given (training), else rounded mean."""
    top = jnp.maximum(hi, lo + 1)  # Non-image positions carry (0, 0); keep their range non-empty.
    if key is None:
        index = jnp.clip((lo + hi) // 2, lo, top - 1)
    else:
        index = jax.random.randint(key, lo.shape, lo, top)
    return jnp.clip(index, 0, PATCH_POS_BUCKETS - 1)


class Embedder(nnx.Module):
    """TokenSequence -> x_BxTxD: token or patch embedding by modality, plus position embeddings."""

    def __init__(self, dims: ModelDims, vocab_size: int, *, rngs: nnx.Rngs):
        self.scale = math.sqrt(dims.d_model)
        self.token = nnx.Embed(
            vocab_size, dims.d_model,
            embedding_init=partitioned(nnx.initializers.normal(1.0 / self.scale), ("vocab", "embed")),
            rngs=rngs, **dims.dtypes())
        self.patch = PatchResNet(dims, rngs=rngs)
        self.local_pos = _table(dims, MAX_LOCAL_POSITIONS + 1, rngs=rngs)
        self.patch_row = _table(dims, PATCH_POS_BUCKETS, rngs=rngs)
        self.patch_col = _table(dims, PATCH_POS_BUCKETS, rngs=rngs)
        # `model.image_encoder="resampler"`: K tokens per image (resampler.py); None keeps one per patch.
        self.resampler = PerceiverResampler(dims, rngs=rngs) if dims.image_encoder == "resampler" else None

    def __call__(self, seq: TokenSequence, *, key: jax.Array | None = None,
                 image_caps: tuple[int, ...] | None = None, image_spans: jax.Array | None = None) -> jax.Array:
        """`key` samples patch positions (training); None uses interval means (evaluation).

        `image_caps` None runs the patch ResNet (convolutions) at every position. A tuple (static ints,
        ascending) runs it as matrix products, only on the image positions, gathered up to the smallest
        cap that holds them (at every position when none does), and the resampler only at its outputs:
        the same embeddings, faster.
        `image_spans` (int [B, T], `attention.span_ids(..., "images")`) is required by the resampler.
        """
        token_BxTxD = lookup(self.token, seq.tokens, "vocab") * jnp.asarray(self.scale, self.token.dtype)
        is_image_BxT = seq.modality == Modality.IMAGE
        image_BxTxD = self._patch_embeddings(seq.patches, is_image_BxT, image_caps)
        image_BxTxD = image_BxTxD + self._patch_positions(seq.patch_pos, key)
        if self.resampler is not None:
            if image_spans is None:
                raise ValueError("The perceiver resampler needs each image's span ids (image_spans).")
            image_BxTxD = self.resampler(image_BxTxD, image_spans, gathered=image_caps is not None)
        x_BxTxD = jnp.where(is_image_BxT[..., None], image_BxTxD, token_BxTxD)
        local_BxT = seq.local_pos
        local_BxTxD = lookup(self.local_pos, jnp.clip(local_BxT, 0, MAX_LOCAL_POSITIONS))
        return x_BxTxD + jnp.where((local_BxT >= 0)[..., None], local_BxTxD, jnp.zeros_like(local_BxTxD))

    def _patch_embeddings(self, patches_BxTxP: jax.Array, is_image_BxT: jax.Array,
                          image_caps: tuple[int, ...] | None) -> jax.Array:
        """Patch ResNet output [B, T, D]; with caps, zeros at non-image positions (masked out anyway)."""
        if image_caps is None:
            return self.patch(patches_BxTxP)
        b, t, p = patches_BxTxP.shape
        patches_NxP = patches_BxTxP.reshape(b * t, p)

        def gathered(idx_K: jax.Array, valid_K: jax.Array) -> jax.Array:
            del valid_K  # Fill indices (N) gather zeros and are dropped on the scatter back.
            patches_1xKxP = patches_NxP.at[idx_K].get(mode="fill", fill_value=0)[None]
            emb_KxD = self.patch(patches_1xKxP, as_matmuls=True)[0]
            return jnp.zeros((b * t, emb_KxD.shape[-1]), emb_KxD.dtype).at[idx_K].set(emb_KxD, mode="drop")

        def everywhere() -> jax.Array:
            return self.patch(patches_BxTxP, as_matmuls=True).reshape(b * t, -1)

        emb_NxD = sparse.at_masked_positions(is_image_BxT.reshape(-1), image_caps, gathered, everywhere)
        return emb_NxD.reshape(b, t, -1)

    def _patch_positions(self, patch_pos_BxTx4: jax.Array, key: jax.Array | None) -> jax.Array:
        row_key, col_key = (None, None) if key is None else jax.random.split(key)
        row_BxT = patch_position_index(patch_pos_BxTx4[..., 0], patch_pos_BxTx4[..., 1], row_key)
        col_BxT = patch_position_index(patch_pos_BxTx4[..., 2], patch_pos_BxTx4[..., 3], col_key)
        return lookup(self.patch_row, row_BxT) + lookup(self.patch_col, col_BxT)

    def attend(self, x_BxTxD: jax.Array) -> jax.Array:
        """Tied output projection: float32 logits [B, T, V] (accumulated in float32 for bf16 compute)."""
        table_VxD = self.token.embedding[...].astype(x_BxTxD.dtype)
        return jnp.einsum("btd,vd->btv", x_BxTxD, table_VxD, preferred_element_type=jnp.float32)
