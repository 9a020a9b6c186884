"""Images to patches and patch positions (docs/TOKEN_FORMAT.md, "Images").

Array key: N = patches per image, P = patch side in pixels, C = channels, B = images in a batch.

Patches are non-overlapping P x P squares in raster order (row-major over patches); inside a patch the
pixels are row-major with channels last, so a patch flattens to P*P*C values. TokenSequence stores the raw
uint8 pixels (compact; grayscale replicated to IMAGE_CHANNELS) and the model normalises them with
`sequence.normalize_patches`; `image_to_patches` applies the same normalisation for direct use.
"""
from __future__ import annotations

import numpy as np

from gato_jax.tokenizers.sequence import (
    IMAGE_CHANNELS,
    PATCH_POS_BUCKETS,
    normalize_patches,
)


def check_images(images, patch_size: int, field: str = "image", batched: bool = False) -> np.ndarray:
    """Validates uint8 images [(B,) H, W, C] with C in {1, 3} and sides multiple of `patch_size`."""
    images = np.asarray(images)
    rank = 4 if batched else 3
    if images.ndim != rank:
        layout = "[B, H, W, C]" if batched else "[H, W, C]"
        raise ValueError(
            f"Field {field!r}: images must have shape {layout}, got {images.shape}; "
            "add a channel axis (x[..., None]) for grayscale."
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"Field {field!r}: images must be uint8 pixels in [0, 255], got dtype {images.dtype}; "
            "convert with np.clip(x, 0, 255).astype(np.uint8)."
        )
    height, width, channels = images.shape[-3:]
    if channels not in (1, 3):
        raise ValueError(f"Field {field!r}: images need 1 or 3 channels, got {channels}.")
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"Field {field!r}: image sides {height}x{width} must be positive multiples of "
            f"patch_size={patch_size}; resize or crop the frames."
        )
    return images


def patchify(images_BxHxWxC: np.ndarray, patch_size: int) -> np.ndarray:
    """Splits already-checked images into raster-order patches: [B, H, W, C] -> [B, N, P*P*C]."""
    b, h, w, c = images_BxHxWxC.shape
    p = patch_size
    x = images_BxHxWxC.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def to_image_channels(images: np.ndarray) -> np.ndarray:
    """Replicates grayscale to IMAGE_CHANNELS so every patch has the same width in TokenSequence."""
    if images.shape[-1] == IMAGE_CHANNELS:
        return images
    return np.repeat(images, IMAGE_CHANNELS, axis=-1)


def channel_lags(history: int) -> np.ndarray:
    """int [IMAGE_CHANNELS]: how many steps back each channel's frame is (0, 1, ..., history - 1, then the
    oldest repeated). The one rule training windows (`frame_history`) and rollouts (`FrameHistory`) share."""
    if not 1 <= history <= IMAGE_CHANNELS:
        raise ValueError(f"frame_history={history} must be 1 to {IMAGE_CHANNELS} (one frame per channel).")
    return np.minimum(np.arange(IMAGE_CHANNELS), history - 1)


def frame_history(frames_NxHxWx1: np.ndarray, history: int, lead: int = 0) -> np.ndarray:
    """Consecutive grayscale frames -> uint8 [N - lead, H, W, IMAGE_CHANNELS] with motion in the channels.

    Channel c of step i is frame i - min(c, history - 1): the current frame, then the ones before it, the
    oldest repeated to fill the channels (history 1 is plain replication). Before the first frame given
    the first one stands in, so a window starting an episode repeats its first frame, as a rollout does
    at reset. `lead` frames in front only feed the history of the steps after them and are dropped. Why:
    one frame shows where things are but not where they go (the experts read velocities), and a
    patch that holds both asks no cross-timestep attention of the model to see a ball's direction.
    """
    frames = np.asarray(frames_NxHxWx1)
    if frames.ndim != 4 or frames.shape[-1] != 1:
        raise ValueError(f"frame_history stacks grayscale frames [N, H, W, 1], got shape {frames.shape}.")
    back_C = channel_lags(history)
    steps_N = np.arange(lead, frames.shape[0])
    index_NxC = np.maximum(steps_N[:, None] - back_C[None, :], 0)
    return np.moveaxis(frames[index_NxC, ..., 0], 1, -1)


def image_to_patches(image, patch_size: int = 16) -> np.ndarray:
    """uint8 image [H, W, C] -> float32 [N, P*P*C]: pixels in [-1, 1] divided by sqrt(patch_size)."""
    image = check_images(image, patch_size)
    return normalize_patches(patchify(image[None], patch_size)[0], patch_size).astype(np.float32)


def image_to_patch_pixels(image, patch_size: int = 16) -> np.ndarray:
    """uint8 image [H, W, C] -> raw uint8 pixels [N, P*P*3] for `TokenSequence.patches`."""
    image = check_images(image, patch_size)
    return patchify(to_image_channels(image)[None], patch_size)[0]


def _intervals_1d(side: int, patch_size: int, buckets: int) -> np.ndarray:
    """[side // P, 2] bucket intervals of each patch row (or column).

    The pixel interval [start, end) normalised to [0, 1] is mapped to buckets [lo, hi) with
    lo = floor(start / side * buckets) and hi = max(lo + 1, ceil(end / side * buckets)): the smallest
    bucket range covering the interval, never empty. Integer arithmetic keeps it exact.
    """
    start = np.arange(side // patch_size, dtype=np.int64) * patch_size
    end = start + patch_size
    lo = start * buckets // side
    hi = np.maximum(lo + 1, -(-end * buckets // side))
    return np.stack([lo, np.minimum(hi, buckets)], axis=-1)


def patch_intervals(height: int, width: int, patch_size: int = 16, buckets: int = PATCH_POS_BUCKETS) -> np.ndarray:
    """int32 [N, 4] (row_lo, row_hi, col_lo, col_hi) per patch in raster order; hi exclusive."""
    if height <= 0 or width <= 0 or height % patch_size or width % patch_size:
        raise ValueError(f"Image {height}x{width} must have positive sides that are multiples of {patch_size}.")
    rows = _intervals_1d(height, patch_size, buckets)
    cols = _intervals_1d(width, patch_size, buckets)
    n_rows, n_cols = len(rows), len(cols)
    rows_N = np.repeat(rows, n_cols, axis=0)
    cols_N = np.tile(cols, (n_rows, 1))
    return np.concatenate([rows_N, cols_N], axis=-1).astype(np.int32)
