"""Classical frozen experts in jax.numpy (they run inside jit): Sobel edges, palette segmentation, motion.

Array key: N = images, H = height, W = width, C = output channels, K = palette colours.

Every expert maps uint8 RGB images [N, H, W, 3] to float32 maps [N, H, W, C] and has no parameters, so
training can never change it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# ITU-R 709 luma weights: what `skimage.color.rgb2gray` uses, so edges match scikit-image's Sobel.
LUMA_WEIGHTS = (0.2125, 0.7154, 0.0721)
_SMOOTH = np.array([1.0, 2.0, 1.0]) / 4.0  # scikit-image's Sobel smoothing weights.
_DERIVATIVE = np.array([1.0, 0.0, -1.0])


def grayscale(images_NxHxWx3: jax.Array) -> jax.Array:
    """float32 [N, H, W] in [0, 1] (rgb2gray's luma)."""
    x_NxHxWx3 = jnp.asarray(images_NxHxWx3).astype(jnp.float32) / 255.0
    return jnp.einsum("nhwc,c->nhw", x_NxHxWx3, jnp.asarray(LUMA_WEIGHTS, jnp.float32))


def _correlate3(x_NxHxW: jax.Array, kernel_3x3: np.ndarray) -> jax.Array:
    """3x3 convolution (scipy.ndimage.convolve: the kernel flipped) with 'reflect' (half-sample
    symmetric) borders, as nine shifted sums: exact in float32 and cheap at these sizes."""
    h, w = x_NxHxW.shape[1:]
    padded_NxH2xW2 = jnp.pad(x_NxHxW, ((0, 0), (1, 1), (1, 1)), mode="symmetric")
    flipped_3x3 = kernel_3x3[::-1, ::-1]
    out_NxHxW = jnp.zeros_like(x_NxHxW)
    for i in range(3):
        for j in range(3):
            if flipped_3x3[i, j]:
                out_NxHxW = out_NxHxW + float(flipped_3x3[i, j]) * padded_NxH2xW2[:, i:i + h, j:j + w]
    return out_NxHxW


def sobel_edges(images_NxHxWx3: jax.Array) -> jax.Array:
    """Sobel gradient magnitude of the grayscale image, float32 [N, H, W, 1]: equal to
    `skimage.filters.sobel(skimage.color.rgb2gray(image))` (sqrt of the mean of the two squared
    derivatives, reflected borders); in [0, 1] for uint8 input."""
    gray_NxHxW = grayscale(images_NxHxWx3)
    rows_NxHxW = _correlate3(gray_NxHxW, np.outer(_DERIVATIVE, _SMOOTH))
    cols_NxHxW = _correlate3(gray_NxHxW, np.outer(_SMOOTH, _DERIVATIVE))
    return jnp.sqrt((rows_NxHxW ** 2 + cols_NxHxW ** 2) / 2.0)[..., None]


def palette_indices(images_NxHxWx3: jax.Array, palette_Kx3) -> jax.Array:
    """int32 [N, H, W]: index of the nearest palette colour (squared RGB distance; ties to the first)."""
    x_NxHxWx1x3 = jnp.asarray(images_NxHxWx3).astype(jnp.float32)[..., None, :]
    palette_1x1x1xKx3 = jnp.asarray(palette_Kx3, jnp.float32)[None, None, None]
    distance_NxHxWxK = jnp.sum((x_NxHxWx1x3 - palette_1x1x1xKx3) ** 2, axis=-1)
    return jnp.argmin(distance_NxHxWxK, axis=-1).astype(jnp.int32)


def colour_segments(images_NxHxWx3: jax.Array, palette_Kx3) -> jax.Array:
    """One-hot nearest palette colour, float32 [N, H, W, K]. The palette is passed in (the captions
    module's colours plus black background, from the experiment config): the core never imports data."""
    k = len(palette_Kx3)
    return jax.nn.one_hot(palette_indices(images_NxHxWx3, palette_Kx3), k, dtype=jnp.float32)


def frame_difference(images_NxHxWx3: jax.Array, previous_NxHxWx3: jax.Array) -> jax.Array:
    """Grayscale current minus previous frame, float32 [N, H, W, 1] in [-1, 1]: where things moved.

    The previous frame is the image before this one in the same segment of the TokenSequence (the last
    observation, for Atari); the first image of a segment is its own previous frame, so shows no motion
    (`prismer.image_slots` builds that pairing).
    """
    return (grayscale(images_NxHxWx3) - grayscale(previous_NxHxWx3))[..., None]
