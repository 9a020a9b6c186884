"""The expert resampler: frozen experts' maps to Q trainable tokens per expert (Prismer's "experts
resampler", built as Flamingo's perceiver resampler).

Array key: N = images, E = experts, R = patches per image, P = patch side, C = channels, Q = learned
queries (tokens per expert), D = d_model, S = R + Q keys of a resampler layer.

A map [N, H, W, C] is average-pooled by `pool` (P a multiple of it) and cut into raster-order P/pool-side
patches exactly as `tokenizers.images.patchify` cuts an image (`perception.patches`), so patch r of a map
covers patch r of the image; each patch is projected to D by the expert's own linear layer, plus the
image patch's position embedding. Q learned queries per expert then cross-attend to that expert's R patch
embeddings and to themselves, through layers shared by all experts (`model.resampler.ResamplerLayer`, the
KOSMOS-1 image encoder's): Q tokens per expert whatever the image size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gato_jax.model.layers import ModelDims, fan_in_init, layer_norm, partitioned
from gato_jax.model.resampler import ResamplerLayer
from gato_jax.perception.patches import average_pool, patchify_maps


class ExpertResampler(nnx.Module):
    """Expert maps -> Q tokens per expert, [N, E, Q, D]: per-expert patch projection, shared layers,
    per-expert queries. The layers are shared so that adding an expert adds only its projection and its
    Q queries (trainable parts stay few)."""

    def __init__(self, dims: ModelDims, channels_E: tuple[int, ...], num_queries: int, num_layers: int,
                 pool: int = 1, *, rngs: nnx.Rngs):
        p, d = dims.patch_size // pool, dims.d_model
        self.pool, self.patch_size = pool, p
        self.project = nnx.List([
            nnx.Linear(p * p * c, d, kernel_init=partitioned(fan_in_init(), ("patch_flat", "embed")),
                       bias_init=partitioned(nnx.initializers.zeros, ("embed",)), rngs=rngs, **dims.dtypes())
            for c in channels_E])
        queries = nnx.initializers.normal(1.0)(rngs.params(), (max(1, len(channels_E)), num_queries, d),
                                               dims.params_dtype)
        self.queries = nnx.Param(queries, out_sharding=(None, None, "embed"), eager_sharding=False)
        self.layers = nnx.List([ResamplerLayer(dims, rngs=rngs) for _ in range(num_layers)])
        self.out_norm = layer_norm(dims, rngs=rngs)

    def __call__(self, maps_E: list[jax.Array], position_NxRxD: jax.Array) -> jax.Array:
        """`maps_E`: each expert's map [N, H, W, C_e]; `position_NxRxD`: each patch's position embedding.
        Returns [N, E, Q, D]."""
        x_NxExRxD = jnp.stack([
            project(patchify_maps(average_pool(map_NxHxWxC, self.pool), self.patch_size)) + position_NxRxD
            for project, map_NxHxWxC in zip(self.project, maps_E)], axis=1)
        n, e, r, d = x_NxExRxD.shape
        queries_ExQxD = self.queries[...][:e].astype(x_NxExRxD.dtype)
        latents_NExQxD = jnp.broadcast_to(queries_ExQxD[None], (n,) + queries_ExQxD.shape).reshape(n * e, -1, d)
        x_NExRxD = x_NxExRxD.reshape(n * e, r, d)
        mask_NExQxS = jnp.ones((n * e, latents_NExQxD.shape[1], r + latents_NExQxD.shape[1]), bool)
        for layer in self.layers:
            latents_NExQxD = layer(latents_NExQxD, x_NExRxD, mask_NExQxS)
        return self.out_norm(latents_NExQxD).reshape(n, e, -1, d)
