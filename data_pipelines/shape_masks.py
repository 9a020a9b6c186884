"""Per-pixel shape-class masks of the caption scenes: the training data of the learned shape expert.

A mask is the scene drawn again with the same random size and layout as `captions.draw_scene`, each
object filled with its class index (0 background, 1 circle, 2 square, 3 triangle: the order of
`gato_jax.perception.shape_expert.SHAPE_CLASSES`) instead of its colour. It reuses captions' own layout
and drawing helpers, consuming the random generator in the same order, so mask and image agree pixel
for pixel (tests/perception_test.py checks it).

`prepare_shape_expert` is the data-preparation step that trains the expert on such masks, once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines import captions
from gato_jax.perception import shape_expert

MASK_CLASSES = ("background",) + captions.SHAPES  # Mask value = index here.


def draw_shape_mask(scene: captions.Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [S, S] class mask of the image `captions.draw_scene(scene, image_size, rng)` would draw
    from a generator in the same state."""
    captions.check_image_size(image_size)
    img = Image.new("L", (image_size, image_size))
    draw = ImageDraw.Draw(img)
    size = captions._object_size(image_size, rng)
    for x, y in captions._layout(scene, image_size, size, rng):
        captions._draw_shape(draw, scene.shape, x, y, size, MASK_CLASSES.index(scene.shape))
    return np.asarray(img, np.uint8)


def scene_with_mask(scene: captions.Scene, image_size: int, seed) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [S, S, 3], mask uint8 [S, S]) of one scene drawn from `np.random.default_rng(seed)`."""
    image = captions.draw_scene(scene, image_size, np.random.default_rng(seed))
    return image, draw_shape_mask(scene, image_size, np.random.default_rng(seed))


def shape_mask_examples(num: int, image_size: int, seed: int, *, novel: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
    """num random scenes and their masks: images uint8 [N, S, S, 3], masks uint8 [N, S, S].

    `novel` False draws only colour-shape pairs seen in caption training, so the expert learns shapes
    without ever seeing a held-out pair; True draws only held-out pairs (to test it on them).
    """
    rng = np.random.default_rng([seed, int(novel)])
    scenes = captions.sample_scenes(num, rng, novel=novel)
    pairs = [scene_with_mask(scene, image_size, [seed, int(novel), i]) for i, scene in enumerate(scenes)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def stored_settings(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a prepared shape expert in `out_dir` was trained with; None when there is none."""
    path = Path(out_dir) / shape_expert.INFO_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("settings")


def prepare_shape_expert(out_dir: str | os.PathLike, *, image_size: int = 32, num_train: int = 2000,
                         num_heldout: int = 200, steps: int = 400, seed: int = 0) -> dict[str, Any]:
    """Trains the learned 'shapes' expert once on seen-pair scenes and saves it in `out_dir`; returns its
    figures. A second call with the same settings reads them back and trains nothing.

    Figures: pixel accuracy on held-out scenes of seen pairs (`heldout`) and of the held-out colour-shape
    pairs (`heldout_novel`), each beside the all-background baseline. 400 steps took ~25 s on 2 CPU cores.
    """
    settings = {"image_size": image_size, "num_train": num_train, "num_heldout": num_heldout, "steps": steps,
                "seed": seed}
    if stored_settings(out_dir) == settings:
        return json.loads((Path(out_dir) / shape_expert.INFO_FILE).read_text())
    images, masks = shape_mask_examples(num_train, image_size, seed)
    seen = shape_mask_examples(num_heldout, image_size, seed + 1)
    novel = shape_mask_examples(num_heldout, image_size, seed + 1, novel=True)
    info = shape_expert.train_shape_expert(images, masks, steps, out_dir, heldout=seen, seed=seed)
    net = shape_expert.load_frozen_shape_expert(out_dir)
    info = {**info, "heldout_novel": shape_expert.pixel_accuracy(net, *novel), "settings": settings}
    shape_expert.save_shape_expert(net, out_dir, info)
    return info
