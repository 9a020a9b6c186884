"""Frozen perception experts: Sobel edges equal scikit-image's, palette segments, motion, the patch path,
shape masks that match the drawn scenes, and the learned shape expert trained, saved, reloaded frozen.

Array key: N = images, H = height, W = width, C = channels, E = experts, Q = queries, D = d_model.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.color
import skimage.filters
from flax import nnx

from data_pipelines import captions, shape_masks
from gato_jax import configs
from gato_jax.model.expert_resampler import ExpertResampler
from gato_jax.model.layers import ModelDims
from gato_jax.perception import (
    SHAPE_CLASSES,
    ExpertContext,
    Frames,
    FrozenExpertParam,
    ShapeNet,
    colour_segments,
    expert_channels,
    frame_difference,
    load_frozen_shape_expert,
    patchify_maps,
    pixel_accuracy,
    run_experts,
    sobel_edges,
    train_shape_expert,
    unpatchify,
)
from gato_jax.perception.shape_expert import load_shape_expert_into, shape_probabilities
from gato_jax.tokenizers import images as images_lib

PALETTE = ((0, 0, 0),) + tuple(captions.COLOURS.values())  # Background first: index 0.


def random_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3)).astype(np.uint8)


def test_sobel_edges_equal_scikit_image():
    images = np.concatenate([random_images(3, 16, 24), np.stack([
        captions.draw_scene(captions.Scene(2, "red", "triangle", "left"), 16 * 2, np.random.default_rng(1))[:16, :24]
    ])])
    edges_NxHxWx1 = np.asarray(jax.jit(sobel_edges)(images))
    for image, edges_HxWx1 in zip(images, edges_NxHxWx1):
        expected_HxW = skimage.filters.sobel(skimage.color.rgb2gray(image))
        np.testing.assert_allclose(edges_HxWx1[..., 0], expected_HxW, atol=1e-5)


def test_colour_segments_find_each_scene_pixels_palette_colour():
    image = captions.draw_scene(captions.Scene(3, "purple", "circle", "top"), 32, np.random.default_rng(0))
    noisy = np.clip(image.astype(int) + np.random.default_rng(1).integers(-20, 21, image.shape), 0, 255)
    for pixels in (image, noisy.astype(np.uint8)):
        onehot_1xHxWxK = np.asarray(colour_segments(pixels[None], PALETTE))
        assert onehot_1xHxWxK.shape == (1, 32, 32, len(PALETTE)) and np.all(onehot_1xHxWxK.sum(-1) == 1)
        np.testing.assert_array_equal(np.asarray(PALETTE)[onehot_1xHxWxK[0].argmax(-1)], image)


def test_frame_difference_shows_only_what_moved():
    before = np.zeros((1, 16, 16, 3), np.uint8)
    after = before.copy()
    after[0, 4:8, 4:8] = 255
    moved_1xHxWx1 = np.asarray(frame_difference(after, before))
    np.testing.assert_allclose(moved_1xHxWx1[0, 4:8, 4:8, 0], 1.0, atol=1e-6)
    assert np.count_nonzero(moved_1xHxWx1) == 16
    assert not np.any(frame_difference(after, after))


def test_map_patches_are_the_tokenizers_patches_and_reassemble():
    images = random_images(2, 32, 48)
    patches_NxRxF = np.asarray(patchify_maps(jnp.asarray(images), 16))
    np.testing.assert_array_equal(patches_NxRxF, images_lib.patchify(images, 16))
    np.testing.assert_array_equal(unpatchify(patches_NxRxF, 32, 48, 16), images)


@pytest.mark.parametrize("size", [32, 48])
def test_shape_masks_cover_exactly_the_drawn_objects(size):
    images, masks = shape_masks.shape_mask_examples(40, size, seed=3)
    np.testing.assert_array_equal(masks > 0, images.max(-1) > 0)
    scenes = captions.sample_scenes(40, np.random.default_rng([3, 0]), novel=False)
    for mask, scene in zip(masks, scenes):
        assert set(np.unique(mask)) == {0, SHAPE_CLASSES.index(scene.shape)}


def test_registry_runs_in_jit_and_names_its_errors():
    context = ExpertContext(PALETTE, None)
    names = ("edges", "segments", "motion")
    assert expert_channels(names, context) == (1, len(PALETTE), 1)
    frames = Frames(jnp.asarray(random_images(2, 32, 32)), jnp.asarray(random_images(2, 32, 32, seed=1)))
    maps = jax.jit(lambda f: run_experts(names, f, context))(frames)
    assert [m.shape for m in maps] == [(2, 32, 32, 1), (2, 32, 32, len(PALETTE)), (2, 32, 32, 1)]
    with pytest.raises(ValueError, match="from"):
        expert_channels(("depth",), context)
    with pytest.raises(ValueError, match="shape_expert_dir"):
        run_experts(("shapes",), frames, context)
    with pytest.raises(ValueError, match="palette"):
        run_experts(("segments",), frames, ExpertContext())


def test_resampler_gives_q_tokens_per_expert_whatever_the_image_size():
    dims = ModelDims.from_config(configs.model_config("tiny"))
    resampler = ExpertResampler(dims, (1, 3), num_queries=2, num_layers=1, rngs=nnx.Rngs(0))
    for side in (32, 48):
        r = (side // 16) ** 2
        maps = [jnp.ones((3, side, side, 1)), jnp.zeros((3, side, side, 3))]
        assert resampler(maps, jnp.zeros((3, r, dims.d_model))).shape == (3, 2, 2, dims.d_model)


@pytest.fixture(scope="module")
def shape_expert(tmp_path_factory):
    """A shape expert trained briefly on seen-pair scenes (the real one trains 400 steps, ~25 s)."""
    images, masks = shape_masks.shape_mask_examples(400, 32, seed=0)
    heldout = shape_masks.shape_mask_examples(60, 32, seed=1, novel=True)
    out_dir = str(tmp_path_factory.mktemp("shape_expert"))
    info = train_shape_expert(images, masks, 120, out_dir, heldout=heldout, batch_size=16)
    return out_dir, info, heldout


def test_shape_expert_beats_the_background_baseline_on_never_seen_pairs(shape_expert):
    _, info, _ = shape_expert
    assert info["heldout"]["pixel_accuracy"] > info["heldout"]["background_baseline"] + 0.02


def test_shape_expert_reloads_frozen_and_passes_no_gradient(shape_expert):
    out_dir, info, (images, masks) = shape_expert
    net = load_frozen_shape_expert(out_dir)
    assert not jax.tree.leaves(nnx.state(net, nnx.Param))
    assert jax.tree.leaves(nnx.state(net, FrozenExpertParam))
    assert pixel_accuracy(net, images, masks) == info["heldout"]
    graphdef, state = nnx.split(net)
    grads = jax.grad(lambda s: shape_probabilities(nnx.merge(graphdef, s), images[:2]).sum())(state)
    assert all(not np.any(g) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="retrain"):
        load_shape_expert_into(ShapeNet(rngs=nnx.Rngs(0), width=8), out_dir)
