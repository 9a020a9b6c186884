"""PrismerGato (`model.kind = "prismer"`): the Gato decoder reading a vision encoder of frozen experts
through gated cross-attention (Prismer, Liu et al. 2023; the gating of Flamingo, Alayrac et al. 2022).

Array key: B = batch, T = tokens, D = d_model, V = vocabulary, L = layers, M = image slots per row,
R = patches per image, P = patch pixels, N = B*M images, E = experts, Q = queries per expert,
U = encoder tokens per image (R RGB tokens, if on, then E*Q expert tokens), C = M*U context tokens.

What the decoder sees. It reads the same TokenSequence as Gato, but IMAGE positions are taken out of
its view: they are embedded as the `<image>` placeholder token they hold, no other position attends to
them (the mask), and ALiBi distances count only the other positions. So at every non-image position the
decoder computes exactly what a Gato with the same weights computes on the sequence with its image
positions deleted, plus the gated cross-attention; a decoder warm-started from a text-only run starts
unchanged (gates are zero). Outputs at image positions are meaningless; they are never targets.

What the cross-attention sees. Each row's images are its maximal runs of IMAGE positions, at most
`max_images` (later ones are not seen), each exactly R = (image_size / patch_size)^2 patches in raster
order (as `tokenize_caption` and episodes lay them out). An image is reassembled from its patches, run
through the frozen experts, and encoded (`VisionEncoder`); a position attends to the encoder tokens of
every image of its own segment whose last patch comes before it. Where it sees none (text rows, the
`<image>` token), cross-attention adds exactly zero, so text is untouched even after training.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gato_jax import sharding
from gato_jax.model.attention import Attention, attention_mask, span_ids
from gato_jax.model.embed import Embedder, lookup, patch_position_index
from gato_jax.model.expert_resampler import ExpertResampler
from gato_jax.model.layers import Mlp, ModelDims, layer_norm, partitioned
from gato_jax.model.transformer import ACTIVATION_AXES, LAYER_AXIS, LOGIT_AXES, Gato, stacked_blocks
from gato_jax.perception import registry
from gato_jax.perception.patches import unpatchify
from gato_jax.perception.shape_expert import FrozenExpertParam, ShapeNet, load_shape_expert_into
from gato_jax.tokenizers.sequence import MAX_LOCAL_POSITIONS, Modality, TokenSequence

MODEL_KINDS = ("gato", "prismer")  # Values of `model.kind`.


@dataclasses.dataclass(frozen=True)
class PrismerDims:
    """Hashable copy of `model.prismer` (see `prismer_config` for the fields)."""

    experts: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    image_size: int
    max_images: int
    num_queries: int
    resampler_layers: int
    resampler_mlp_dim: int
    expert_pool: int
    rgb_tokens: bool
    cross_attention_every: int
    cross_attention_mlp: bool

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict) -> PrismerDims:
        p = model_config.prismer
        dims = cls(tuple(p.experts), tuple(tuple(int(v) for v in c) for c in p.palette), int(p.image_size),
                   int(p.max_images), int(p.num_queries), int(p.resampler_layers),
                   int(p.resampler_mlp_dim) or int(model_config.d_model), int(p.expert_pool), bool(p.rgb_tokens),
                   int(p.cross_attention_every), bool(p.cross_attention_mlp))
        dims.validate(int(model_config.num_layers), int(model_config.patch_size))
        return dims

    def validate(self, num_layers: int, patch_size: int) -> None:
        registry.check_names(self.experts)
        if not self.experts and not self.rgb_tokens:
            raise ValueError("model.prismer needs experts or rgb_tokens=True: the encoder would be empty.")
        if self.image_size % patch_size or patch_size % self.expert_pool:
            raise ValueError(f"model.prismer.image_size={self.image_size} must be a multiple of model.patch_size="
                             f"{patch_size}, and that of expert_pool={self.expert_pool}.")
        if self.cross_attention_every < 1 or num_layers % self.cross_attention_every:
            raise ValueError(f"model.prismer.cross_attention_every={self.cross_attention_every} must divide "
                             f"model.num_layers={num_layers}.")

    def patches_per_image(self, patch_size: int) -> int:
        return (self.image_size // patch_size) ** 2


def prismer_config() -> ml_collections.ConfigDict:
    """Defaults of `model.prismer` (what the lead adds to configs.model_config)."""
    p = ml_collections.ConfigDict()
    p.experts = ("edges", "segments", "shapes")  # Frozen experts that run, from perception.EXPERTS.
    p.palette = ((0, 0, 0),)  # RGB colours of the 'segments' expert (experiments: captions.COLOURS + black).
    p.shape_expert_dir = ""  # Orbax checkpoint of the learned 'shapes' expert (perception.train_shape_expert).
    p.image_size = 32  # Side of every image in pixels (R = (image_size / patch_size)^2 patches).
    p.max_images = 24  # Image slots per row; images past this many in a row are not seen.
    p.num_queries = 4  # Resampler tokens Q per expert.
    p.resampler_layers = 1  # Perceiver-resampler layers (shared by the experts).
    p.resampler_mlp_dim = 0  # Hidden width of the resampler's MLPs; 0 = d_model (a quarter of the decoder's).
    p.expert_pool = 2  # Expert maps are average-pooled by this factor before their patch projection.
    p.rgb_tokens = True  # Also give the decoder the image's own patch embeddings (R tokens).
    # A gated cross-attention layer before every k-th decoder block (k divides num_layers), with a gated
    # MLP after it or not. 2 and False keep cpu_small's trainable fraction under 0.3 with a frozen decoder.
    p.cross_attention_every = 2
    p.cross_attention_mlp = False
    return p


class ImageSlots(NamedTuple):
    """Where each row's images are and their pixels (see the module docstring)."""

    start_BxM: jax.Array  # int32: position of the image's first patch (T when the slot is empty).
    valid_BxM: jax.Array  # bool
    segment_BxM: jax.Array  # int32: the image's segment (0 when empty).
    previous_BxM: jax.Array  # int32: slot of the frame before (the same slot for a segment's first image).
    patches_BxMxRxP: jax.Array  # uint8
    patch_pos_BxMxRx4: jax.Array  # int32


def image_slots(seq: TokenSequence, max_images: int, patches_per_image: int) -> ImageSlots:
    """Finds up to M image runs per row and gathers their R patches each."""
    b, t = seq.modality.shape
    is_image_BxT = seq.modality == Modality.IMAGE
    starts_BxT = is_image_BxT & ~jnp.pad(is_image_BxT[:, :-1], ((0, 0), (1, 0)))
    start_BxM = jax.vmap(lambda s: jnp.nonzero(s, size=max_images, fill_value=t)[0])(starts_BxT).astype(jnp.int32)
    valid_BxM = start_BxM < t
    index_BxMxR = jnp.clip(start_BxM[..., None] + jnp.arange(patches_per_image)[None, None], 0, t - 1)
    keep_BxMxR = valid_BxM[..., None]
    rows_Bx1x1 = jnp.arange(b)[:, None, None]
    patches_BxMxRxP = jnp.where(keep_BxMxR[..., None], seq.patches[rows_Bx1x1, index_BxMxR], 0)
    patch_pos_BxMxRx4 = jnp.where(keep_BxMxR[..., None], seq.patch_pos[rows_Bx1x1, index_BxMxR], 0)
    segment_BxM = jnp.where(valid_BxM, jnp.take_along_axis(seq.segment_ids, jnp.minimum(start_BxM, t - 1), 1), 0)
    same_as_last_BxM = jnp.pad(segment_BxM[:, 1:] == segment_BxM[:, :-1], ((0, 0), (1, 0))) & valid_BxM
    m_M = jnp.arange(max_images, dtype=jnp.int32)
    previous_BxM = jnp.where(same_as_last_BxM, m_M[None] - 1, m_M[None])
    return ImageSlots(start_BxM, valid_BxM, segment_BxM, previous_BxM, patches_BxMxRxP.astype(jnp.uint8),
                      patch_pos_BxMxRx4)


def decoder_mask(seq: TokenSequence, dims: ModelDims) -> jax.Array:
    """bool [B, T, T]: Gato's mask (`model.attention`: causal, or semi-causal over observation spans) with
    image positions hidden as keys (the diagonal kept, so no row is empty)."""
    spans_BxT = None
    if dims.attention == "semi_causal":
        spans_BxT = span_ids(seq.modality, seq.local_pos, seq.segment_ids, dims.semi_causal_spans)
    visible_BxT = seq.modality != Modality.IMAGE
    t = visible_BxT.shape[1]
    return (attention_mask(seq.segment_ids, spans_BxT) & visible_BxT[:, None, :]) | jnp.eye(t, dtype=bool)[None]


def visible_distance(seq: TokenSequence) -> jax.Array:
    """int32 [B, T, T]: query - key distance counted in non-image positions (what ALiBi reads)."""
    count_BxT = jnp.cumsum(seq.modality != Modality.IMAGE, axis=1).astype(jnp.int32)
    return count_BxT[:, :, None] - count_BxT[:, None, :]


def context_mask(seq: TokenSequence, slots: ImageSlots, patches_per_image: int, tokens_per_image: int) -> jax.Array:
    """bool [B, T, C]: position t sees image m's U tokens when m is in t's segment and ends before t."""
    t_T = jnp.arange(seq.segment_ids.shape[1])
    sees_BxTxM = (slots.valid_BxM[:, None, :]
                  & (seq.segment_ids[:, :, None] == slots.segment_BxM[:, None, :])
                  & (slots.start_BxM[:, None, :] + patches_per_image <= t_T[None, :, None]))
    return jnp.repeat(sees_BxTxM, tokens_per_image, axis=2)


class VisionEncoder(nnx.Module):
    """Image slots -> U tokens per image: the RGB patch embeddings (the decoder's own patch ResNet and
    patch positions) and, per expert, Q tokens of the trainable resampler over its frozen map."""

    def __init__(self, dims: ModelDims, pdims: PrismerDims, *, rngs: nnx.Rngs):
        self.pdims = pdims
        self.patch_size = dims.patch_size
        self.shape_net = (ShapeNet(rngs=rngs, variable_type=FrozenExpertParam)
                          if "shapes" in pdims.experts else None)
        channels_E = registry.expert_channels(pdims.experts, self._context())
        resampler_dims = dataclasses.replace(dims, mlp_dim=pdims.resampler_mlp_dim)
        self.resampler = (ExpertResampler(resampler_dims, channels_E, pdims.num_queries, pdims.resampler_layers,
                                          pool=pdims.expert_pool, rngs=rngs) if pdims.experts else None)
        self.norm = layer_norm(dims, rngs=rngs)

    def _context(self) -> registry.ExpertContext:
        return registry.ExpertContext(self.pdims.palette, self.shape_net)

    @property
    def tokens_per_image(self) -> int:
        p = self.pdims
        return p.patches_per_image(self.patch_size) * p.rgb_tokens + len(p.experts) * p.num_queries

    def __call__(self, slots: ImageSlots, embed: Embedder, key: jax.Array | None = None) -> jax.Array:
        """Encoder tokens [B, M, U, D]; `key` samples patch positions as Gato's training does."""
        b, m, r, p = slots.patches_BxMxRxP.shape
        patches_NxRxP = slots.patches_BxMxRxP.reshape(b * m, r, p)
        position_NxRxD = self._positions(slots.patch_pos_BxMxRx4.reshape(b * m, r, 4), embed, key)
        tokens = []
        if self.pdims.rgb_tokens:
            rgb_1xNRxD = embed.patch(patches_NxRxP.reshape(1, b * m * r, p), as_matmuls=True)
            tokens.append(rgb_1xNRxD.reshape(b * m, r, -1) + position_NxRxD)
        if self.resampler is not None:
            maps_E = registry.run_experts(self.pdims.experts, self._frames(slots, patches_NxRxP), self._context())
            tokens.append(self.resampler(maps_E, position_NxRxD).reshape(b * m, -1, position_NxRxD.shape[-1]))
        return self.norm(jnp.concatenate(tokens, axis=1)).reshape(b, m, self.tokens_per_image, -1)

    def _frames(self, slots: ImageSlots, patches_NxRxP: jax.Array) -> registry.Frames:
        s = self.pdims.image_size
        images_NxSxSx3 = unpatchify(patches_NxRxP, s, s, self.patch_size)
        b, m = slots.previous_BxM.shape
        flat_previous_N = (jnp.arange(b)[:, None] * m + slots.previous_BxM).reshape(-1)
        return registry.Frames(images_NxSxSx3, images_NxSxSx3[flat_previous_N])

    @staticmethod
    def _positions(patch_pos_NxRx4: jax.Array, embed: Embedder, key: jax.Array | None) -> jax.Array:
        row_key, col_key = (None, None) if key is None else jax.random.split(key)
        row_NxR = patch_position_index(patch_pos_NxRx4[..., 0], patch_pos_NxRx4[..., 1], row_key)
        col_NxR = patch_position_index(patch_pos_NxRx4[..., 2], patch_pos_NxRx4[..., 3], col_key)
        return lookup(embed.patch_row, row_NxR) + lookup(embed.patch_col, col_NxR)


class GatedCrossAttention(nnx.Module):
    """x + tanh(a) * CrossAttn(LN(x), context), then (`with_mlp`) x + tanh(b) * MLP(LN(x)); a = b = 0 at
    init, so the layer starts as the identity (exactly: tanh(0) * y = 0). Both branches are zero at
    positions that see no image."""

    def __init__(self, dims: ModelDims, with_mlp: bool = True, *, rngs: nnx.Rngs):
        gate = partitioned(nnx.initializers.zeros, ("norm",))
        self.attn_norm = layer_norm(dims, rngs=rngs)
        self.attn = Attention(dims, rngs=rngs)
        self.attn_gate = nnx.Param(gate(rngs.params(), (1,), dims.params_dtype))
        self.mlp_norm = layer_norm(dims, rngs=rngs) if with_mlp else None
        self.mlp = Mlp(dims, rngs=rngs) if with_mlp else None
        self.mlp_gate = nnx.Param(gate(rngs.params(), (1,), dims.params_dtype)) if with_mlp else None

    def __call__(self, x_BxTxD: jax.Array, context_BxCxD: jax.Array, mask_BxTxC: jax.Array) -> jax.Array:
        sees_BxTx1 = jnp.any(mask_BxTxC, axis=-1, keepdims=True)
        # A row that sees no key averages every value: finite, then zeroed below.
        y_BxTxD, _ = self.attn(self.attn_norm(x_BxTxD), mask_BxTxC, context_BxSxD=context_BxCxD)
        x_BxTxD = x_BxTxD + jnp.tanh(self.attn_gate[...][0]).astype(y_BxTxD.dtype) * jnp.where(sees_BxTx1, y_BxTxD, 0)
        if self.mlp is None:
            return x_BxTxD
        y_BxTxD = self.mlp(self.mlp_norm(x_BxTxD))
        return x_BxTxD + jnp.tanh(self.mlp_gate[...][0]).astype(y_BxTxD.dtype) * jnp.where(sees_BxTx1, y_BxTxD, 0)


def _stacked_cross_attention(dims: ModelDims, pdims: PrismerDims, rngs: nnx.Rngs) -> GatedCrossAttention:
    """One GatedCrossAttention per `cross_attention_every` decoder blocks, stacked on a leading layer axis
    (as `stacked_blocks`)."""
    graphdefs = []

    def init_one(key: jax.Array) -> nnx.State:
        layer = GatedCrossAttention(dims, pdims.cross_attention_mlp, rngs=nnx.Rngs(params=key))
        graphdef, state = nnx.split(layer)
        graphdefs.append(graphdef)
        return state

    state = jax.vmap(init_one)(jax.random.split(rngs.params(), dims.num_layers // pdims.cross_attention_every))

    def prepend_layer_axis(variable: nnx.Variable) -> nnx.Variable:
        names = variable.get_metadata().get("out_sharding") or (None,) * (variable.ndim - 1)
        variable.set_metadata(out_sharding=(LAYER_AXIS,) + tuple(names))
        return variable

    state = jax.tree.map(prepend_layer_axis, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdefs[0], state)


class PrismerGato(nnx.Module):
    """Gato's decoder (`embed`, `blocks`, `final_norm`: the same parameter paths, so a Gato checkpoint
    warm-starts it) with a `vision` encoder and a gated cross-attention layer (`xattn`) before every
    `cross_attention_every`-th block. Same entry points as Gato's full pass (`__call__`, `hidden`,
    `logits`); no cached decode."""

    def __init__(self, model_config: ml_collections.ConfigDict, vocab_size: int, *, rngs: nnx.Rngs):
        self.dims = ModelDims.from_config(model_config)
        self.pdims = PrismerDims.from_config(model_config)
        if self.dims.image_encoder != "patches":
            raise ValueError("model.kind='prismer' encodes images itself: set model.image_encoder='patches'.")
        if self.dims.smear_keys:
            raise ValueError("model.kind='prismer' does not smear keys yet: set model.smear_keys=False.")
        self.vocab_size = vocab_size
        self.embed = Embedder(self.dims, vocab_size, rngs=rngs)
        self.blocks = stacked_blocks(self.dims, rngs)
        self.final_norm = layer_norm(self.dims, rngs=rngs)
        self.vision = VisionEncoder(self.dims, self.pdims, rngs=rngs)
        self.xattn = _stacked_cross_attention(self.dims, self.pdims, rngs)

    def __call__(self, seq: TokenSequence, deterministic: bool = True,
                 rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
        """Logits float32 [B, T, V]; position t predicts token t+1 (meaningless at image positions)."""
        return self.logits(self.hidden(seq, deterministic, rngs))

    def hidden(self, seq: TokenSequence, deterministic: bool = True, rngs: nnx.Rngs | jax.Array | None = None,
               mask: jax.Array | None = None, distance: jax.Array | None = None,
               image_caps: tuple[int, ...] | None = None, unroll: int = 1) -> jax.Array:
        """The stream after the last block [B, T, D], as `Gato.hidden`. `image_caps` is accepted and
        unused (the RGB patch ResNet already runs on the image slots only); `mask` and `distance`
        (ring-cache views) are not supported."""
        del image_caps
        if mask is not None or distance is not None:
            raise NotImplementedError("PrismerGato builds its own mask and distances (no cached decode yet).")
        seq = TokenSequence(*(jnp.asarray(field) for field in seq))
        embed_key, keys_L = self._keys(deterministic, rngs)
        context_BxCxD, context_mask_BxTxC = self.encode(seq, embed_key)
        x_BxTxD = sharding.constrain(self._text_embeddings(seq), ACTIVATION_AXES)
        mask_BxTxT = decoder_mask(seq, self.dims)
        distance_BxTxT = visible_distance(seq) if self.dims.position_bias == "alibi" else None
        k = self.pdims.cross_attention_every
        (block_def, block_L), (xattn_def, xattn_G) = nnx.split(self.blocks), nnx.split(self.xattn)
        block_GxK, keys_GxK = jax.tree.map(lambda a: a.reshape((-1, k) + a.shape[1:]), (block_L, keys_L))

        def body(x_BxTxD, group):  # One cross-attention layer, then k blocks.
            xattn_state, block_K, key_K = group
            x_BxTxD = nnx.merge(xattn_def, xattn_state)(x_BxTxD, context_BxCxD, context_mask_BxTxC)
            for i in range(k):
                block = nnx.merge(block_def, jax.tree.map(lambda a, i=i: a[i], block_K))
                key = None if key_K is None else key_K[i]
                x_BxTxD = block(x_BxTxD, mask_BxTxT, dropout_key=key, distance_BxTxS=distance_BxTxT)[0]
            return x_BxTxD, None

        if self.dims.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        groups = self.dims.num_layers // k
        x_BxTxD, _ = jax.lax.scan(body, x_BxTxD, (xattn_G, block_GxK, keys_GxK), unroll=unroll or groups)
        return x_BxTxD

    def encode(self, seq: TokenSequence, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Encoder tokens [B, C, D] of every image slot, and which positions see which (bool [B, T, C])."""
        r = self.pdims.patches_per_image(self.dims.patch_size)
        slots = image_slots(seq, self.pdims.max_images, r)
        tokens_BxMxUxD = self.vision(slots, self.embed, key)
        b, m, u, d = tokens_BxMxUxD.shape
        return tokens_BxMxUxD.reshape(b, m * u, d), context_mask(seq, slots, r, u)

    def _keys(self, deterministic: bool, rngs) -> tuple[jax.Array | None, jax.Array | None]:
        if deterministic:
            return None, None
        if rngs is None:
            raise ValueError("PrismerGato(..., deterministic=False) samples patch positions and dropout: pass rngs.")
        key = rngs() if isinstance(rngs, nnx.Rngs) else jnp.asarray(rngs)
        embed_key, layers_key = jax.random.split(key)
        return embed_key, jax.random.split(layers_key, self.dims.num_layers)

    def _text_embeddings(self, seq: TokenSequence) -> jax.Array:
        """`Embedder` at non-image positions (token table, scaled, plus local position); image positions
        get their `<image>` placeholder token the same way (nothing attends to them)."""
        embed = self.embed
        token_BxTxD = lookup(embed.token, seq.tokens, "vocab") * jnp.asarray(embed.scale, embed.token.dtype)
        local_BxT = seq.local_pos
        local_BxTxD = lookup(embed.local_pos, jnp.clip(local_BxT, 0, MAX_LOCAL_POSITIONS))
        return token_BxTxD + jnp.where((local_BxT >= 0)[..., None], local_BxTxD, jnp.zeros_like(local_BxTxD))

    def logits(self, x_BxTxD: jax.Array) -> jax.Array:
        """Final norm and tied projection: float32 logits [B, T, V]."""
        return sharding.constrain(self.embed.attend(self.final_norm(x_BxTxD)), LOGIT_AXES)


def make_model(model_config: ml_collections.ConfigDict, vocab_size: int, *, rngs: nnx.Rngs) -> Gato | PrismerGato:
    """The model `model.kind` names ("gato" when the field is absent)."""
    kind = str(model_config.get("kind", "gato"))
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind must be one of {MODEL_KINDS}, got {kind!r}.")
    return PrismerGato(model_config, vocab_size, rngs=rngs) if kind == "prismer" else Gato(model_config, vocab_size,
                                                                                            rngs=rngs)


def load_frozen_experts(model: PrismerGato, shape_expert_dir: str) -> None:
    """Reads the learned experts' weights into a built model (its frozen variables); nothing to do
    when no learned expert runs. Call after creating the model, before splitting it for training."""
    if model.vision.shape_net is None:
        return
    if not shape_expert_dir:
        raise ValueError("model.prismer.experts includes 'shapes': set model.prismer.shape_expert_dir to the "
                         "directory train_shape_expert wrote.")
    load_shape_expert_into(model.vision.shape_net, shape_expert_dir)

