"""The patch path of expert maps: the same raster-order patches as images, pooling, and reassembly.

Array key: N = images, H = height, W = width, C = channels, R = patches per image, P = patch side,
F = P*P*C (a flattened patch).

Pure jax.numpy, no parameters: `model.expert_resampler` projects these patches and resamples them to a
fixed number of tokens per expert; `model.prismer` reassembles images from a TokenSequence's patches.
"""
from __future__ import annotations

import jax


def patchify_maps(maps_NxHxWxC: jax.Array, patch_size: int) -> jax.Array:
    """[N, H, W, C] -> [N, R, P*P*C]: raster-order patches, row-major pixels, channels last."""
    n, h, w, c = maps_NxHxWxC.shape
    p = patch_size
    x = maps_NxHxWxC.reshape(n, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // p) * (w // p), p * p * c)


def average_pool(maps_NxHxWxC: jax.Array, factor: int) -> jax.Array:
    """Means over factor x factor blocks: [N, H, W, C] -> [N, H/f, W/f, C]. A patch then projects
    (P/f)^2 C values instead of P^2 C: the projection, most of an expert's new parameters, shrinks f^2-fold."""
    if factor == 1:
        return maps_NxHxWxC
    n, h, w, c = maps_NxHxWxC.shape
    return maps_NxHxWxC.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def unpatchify(patches_NxRxF: jax.Array, height: int, width: int, patch_size: int) -> jax.Array:
    """Inverse of `patchify_maps`: raster-order patches [N, R, P*P*C] back to images [N, H, W, C]."""
    n, _, f = patches_NxRxF.shape
    p = patch_size
    c = f // (p * p)
    x = patches_NxRxF.reshape(n, height // p, width // p, p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, height, width, c)
