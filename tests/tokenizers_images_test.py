"""Golden tests for gato_jax.tokenizers.images (docs/TOKEN_FORMAT.md, "Images")."""
import numpy as np
import pytest

from gato_jax.tokenizers import images, sequence


def test_normalisation_golden():
    white = np.full((16, 16, 3), 255, np.uint8)
    black = np.zeros((16, 16, 1), np.uint8)
    np.testing.assert_allclose(images.image_to_patches(white), 0.25)  # 1 / sqrt(16)
    np.testing.assert_allclose(images.image_to_patches(black), -0.25)
    assert images.image_to_patches(white).dtype == np.float32
    assert images.image_to_patches(white).shape == (1, 768)
    assert images.image_to_patches(black).shape == (1, 256)


def test_patches_match_sequence_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    expected = sequence.normalize_patches(images.image_to_patch_pixels(image, 16), 16)
    np.testing.assert_allclose(images.image_to_patches(image, 16), expected, rtol=1e-6)


def test_raster_order_over_patches():
    index_HxW = np.arange(6).reshape(2, 3).repeat(16, axis=0).repeat(16, axis=1)
    patches = images.image_to_patch_pixels(index_HxW[..., None].astype(np.uint8), 16)
    assert patches.shape == (6, 768)
    np.testing.assert_array_equal(patches, np.arange(6)[:, None].repeat(768, axis=1))


def test_row_major_pixels_channels_last_within_patch():
    pixel_index = np.arange(256).reshape(16, 16)
    image = np.stack([pixel_index, 255 - pixel_index, np.full_like(pixel_index, 7)], axis=-1).astype(np.uint8)
    patch = images.image_to_patch_pixels(image, 16)[0]
    np.testing.assert_array_equal(patch[0::3], np.arange(256))
    np.testing.assert_array_equal(patch[1::3], 255 - np.arange(256))
    np.testing.assert_array_equal(patch[2::3], 7)


def test_grayscale_replicated_to_three_channels():
    image = np.random.default_rng(1).integers(0, 256, (16, 32, 1), dtype=np.uint8)
    pixels = images.image_to_patch_pixels(image, 16)
    assert pixels.shape == (2, 16 * 16 * sequence.IMAGE_CHANNELS) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[:, 0::3], pixels[:, 1::3])
    np.testing.assert_array_equal(pixels[:, 0::3], pixels[:, 2::3])


def test_patch_intervals_exact_grid():
    pos = images.patch_intervals(128, 64, 16)  # 8 x 4 patches; 128 px -> 16 buckets each row.
    assert pos.shape == (32, 4) and pos.dtype == np.int32
    np.testing.assert_array_equal(pos[0], [0, 16, 0, 32])
    np.testing.assert_array_equal(pos[5], [16, 32, 32, 64])  # Row 1, column 1.
    np.testing.assert_array_equal(pos[-1], [112, 128, 96, 128])


def test_patch_intervals_atari_80x80():
    pos = images.patch_intervals(80, 80, 16)
    assert pos.shape == (25, 4)
    rows = [tuple(r) for r in pos[::5, :2]]
    assert rows == [(0, 26), (25, 52), (51, 77), (76, 103), (102, 128)]  # floor(start*1.6), ceil(end*1.6)
    np.testing.assert_array_equal(pos[:5, 2:], pos[::5, :2])  # Columns mirror rows on a square image.
    np.testing.assert_array_equal(pos[:5, :2], np.tile(pos[0, :2], (5, 1)))  # Raster: first row shares rows.


@pytest.mark.parametrize("height,width", [(16, 16), (224, 224), (2048, 32)])
def test_patch_intervals_are_valid(height, width):
    pos = images.patch_intervals(height, width, 16)
    assert np.all(pos[:, 0] < pos[:, 1]) and np.all(pos[:, 2] < pos[:, 3])
    assert pos.min() >= 0 and pos.max() <= sequence.PATCH_POS_BUCKETS
    assert pos[0, 0] == 0 and pos[-1, 1] == 128 and pos[0, 2] == 0 and pos[-1, 3] == 128


@pytest.mark.parametrize("image,match", [
    (np.zeros((16, 16, 3), np.float32), "uint8"),
    (np.zeros((16, 16), np.uint8), "channel axis"),
    (np.zeros((30, 32, 3), np.uint8), "multiples of patch_size"),
    (np.zeros((16, 16, 2), np.uint8), "1 or 3 channels"),
])
def test_bad_images_raise_with_a_fix(image, match):
    with pytest.raises(ValueError, match=match):
        images.image_to_patches(image, 16)
    with pytest.raises(ValueError, match=match):
        images.image_to_patch_pixels(image, 16)


def test_patch_intervals_rejects_bad_sides():
    with pytest.raises(ValueError, match="multiples"):
        images.patch_intervals(30, 32, 16)
