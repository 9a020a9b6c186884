"""The learned frozen expert: a small dilated conv net for per-pixel shape class, trained once, then frozen.

Array key: N = images, H = height, W = width, F = feature channels, S = shape classes (background,
circle, square, triangle).

It is trained on its own task (`train_shape_expert`, called by a data-preparation step on drawn scenes
and their masks, `data_pipelines/shape_masks.py`), saved as an orbax checkpoint, and loaded into a
`ShapeNet` whose weights are `FrozenExpertParam`s: not `nnx.Param`, so `nnx.split(model, nnx.Param, ...)`
leaves them out of the trained parameters and of the optimizer, and its output passes
`jax.lax.stop_gradient`. Dilations 1, 2, 4, 1 give a 15-pixel receptive field, enough to see a whole
7-12 px object and tell its outline apart.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

SHAPE_CLASSES = ("background", "circle", "square", "triangle")  # Mask values 0..3.
DILATIONS = (1, 2, 4, 1)  # One 3x3 conv per entry; the last one outputs the class logits.
WIDTH = 16  # Feature channels F of the hidden convs.
PARAMS_DIR = "params"
INFO_FILE = "shape_expert.json"


class FrozenExpertParam(nnx.Variable):
    """Weights of a frozen expert: a Variable type of its own, never an `nnx.Param`, so a trainer that
    splits out `nnx.Param` never differentiates, decays or checkpoints it with the trained parameters."""


class ShapeNet(nnx.Module):
    """3x3 convs (dilations `DILATIONS`, GELU between) from RGB to per-pixel shape-class logits.

    `variable_type` is `nnx.Param` while it is trained and `FrozenExpertParam` inside a model that only
    reads it: one forward pass for both.
    """

    def __init__(self, *, rngs: nnx.Rngs, width: int = WIDTH, variable_type: type = nnx.Param):
        widths = [3] + [width] * (len(DILATIONS) - 1) + [len(SHAPE_CLASSES)]
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1, 2), out_axis=3)
        self.kernels = nnx.List([
            variable_type(init(rngs.params(), (3, 3, c_in, c_out), jnp.float32))
            for c_in, c_out in zip(widths[:-1], widths[1:])])
        self.biases = nnx.List([variable_type(jnp.zeros((c,), jnp.float32)) for c in widths[1:]])
        self.width = width

    def __call__(self, images_NxHxWx3: jax.Array) -> jax.Array:
        """Logits float32 [N, H, W, S] for uint8 RGB images."""
        x_NxHxWxF = jnp.asarray(images_NxHxWx3).astype(jnp.float32) / 127.5 - 1.0
        for i, dilation in enumerate(DILATIONS):
            x_NxHxWxF = jax.lax.conv_general_dilated(
                x_NxHxWxF, self.kernels[i][...], (1, 1), "SAME", rhs_dilation=(dilation, dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC")) + self.biases[i][...][None, None, None, :]
            if i + 1 < len(DILATIONS):
                x_NxHxWxF = jax.nn.gelu(x_NxHxWxF, approximate=True)
        return x_NxHxWxF


def shape_probabilities(net: ShapeNet, images_NxHxWx3: jax.Array) -> jax.Array:
    """The expert's map: class probabilities float32 [N, H, W, S], with no gradient to anything."""
    return jax.lax.stop_gradient(jax.nn.softmax(net(images_NxHxWx3), axis=-1))


def _loss(graphdef, params, images_NxHxWx3, masks_NxHxW) -> jax.Array:
    logits_NxHxWxS = nnx.merge(graphdef, params)(images_NxHxWx3)
    return optax.softmax_cross_entropy_with_integer_labels(logits_NxHxWxS, masks_NxHxW).mean()


def _make_step(graphdef, tx):
    @jax.jit
    def step(params, opt_state, images_NxHxWx3, masks_NxHxW):
        loss, grads = jax.value_and_grad(lambda p: _loss(graphdef, p, images_NxHxWx3, masks_NxHxW))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def recolour(images_BxHxWx3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every non-black pixel of each image painted one random colour.

    Without it the net learned colour as a shortcut: caption training never shows some colour-shape
    pairs, and on scenes with those pairs its object-pixel accuracy fell from 0.85 to 0.23.
    """
    colour_Bx1x1x3 = rng.integers(40, 256, (len(images_BxHxWx3), 1, 1, 3))
    ink_BxHxWx1 = images_BxHxWx3.max(axis=-1, keepdims=True) > 0
    return np.where(ink_BxHxWx1, colour_Bx1x1x3, 0).astype(np.uint8)


def fit_shape_net(images_NxHxWx3: np.ndarray, masks_NxHxW: np.ndarray, steps: int, *, seed: int = 0,
                  batch_size: int = 32, learning_rate: float = 3e-3) -> tuple[ShapeNet, float]:
    """Adam on per-pixel cross-entropy over random minibatches; returns the net and the last loss."""
    net = ShapeNet(rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(net, nnx.Param)
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, max(1, steps), alpha=0.1))
    opt_state, step = tx.init(params), _make_step(graphdef, tx)
    rng = np.random.default_rng(seed)
    loss = jnp.inf
    for _ in range(steps):
        idx = rng.integers(0, len(images_NxHxWx3), batch_size)
        images_BxHxWx3 = recolour(images_NxHxWx3[idx], rng)
        params, opt_state, loss = step(params, opt_state, images_BxHxWx3, masks_NxHxW[idx].astype(np.int32))
    nnx.update(net, params)
    return net, float(loss)


def pixel_accuracy(net: ShapeNet, images_NxHxWx3: np.ndarray, masks_NxHxW: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, the majority (all-background) baseline's, and accuracy on object pixels only."""
    predicted_NxHxW = np.asarray(jnp.argmax(jax.jit(lambda x: net(x))(images_NxHxWx3), axis=-1))
    objects = masks_NxHxW > 0
    return {"pixel_accuracy": float(np.mean(predicted_NxHxW == masks_NxHxW)),
            "background_baseline": float(np.mean(~objects)),
            "object_pixel_accuracy": float(np.mean(predicted_NxHxW[objects] == masks_NxHxW[objects]))}


def save_shape_expert(net: ShapeNet, out_dir: str | os.PathLike, info: dict[str, Any]) -> None:
    """Weights as an orbax checkpoint under out_dir/params, and `info` (settings, figures) as JSON."""
    out_dir = os.path.abspath(out_dir)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(out_dir, PARAMS_DIR), nnx.to_pure_dict(nnx.state(net)), force=True)
    with open(os.path.join(out_dir, INFO_FILE), "w") as f:
        json.dump({**info, "width": net.width, "dilations": list(DILATIONS), "classes": list(SHAPE_CLASSES)}, f,
                  indent=1)


def load_shape_expert_into(net: ShapeNet, directory: str | os.PathLike) -> dict[str, Any]:
    """Fills `net` (any variable type, usually frozen) with a saved expert's weights; returns its info."""
    directory = os.path.abspath(directory)
    info_path = os.path.join(directory, INFO_FILE)
    if not os.path.exists(info_path):
        raise FileNotFoundError(
            f"No shape expert in {directory}; train it first (perception.train_shape_expert, run by the "
            "data-preparation step).")
    with open(info_path) as f:
        info = json.load(f)
    if info["width"] != net.width or tuple(info["dilations"]) != DILATIONS:
        raise ValueError(f"Shape expert in {directory} has width {info['width']} and dilations "
                         f"{info['dilations']}; this code builds {net.width} and {list(DILATIONS)}: retrain it.")
    state = nnx.state(net)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(os.path.join(directory, PARAMS_DIR), target)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(net, state)
    return info


def load_frozen_shape_expert(directory: str | os.PathLike) -> ShapeNet:
    """A standalone frozen ShapeNet read from `directory`."""
    net = ShapeNet(rngs=nnx.Rngs(0), variable_type=FrozenExpertParam)
    load_shape_expert_into(net, directory)
    return net


def train_shape_expert(images_NxHxWx3: np.ndarray, masks_NxHxW: np.ndarray, steps: int,
                       out_dir: str | os.PathLike, *, heldout: tuple[np.ndarray, np.ndarray] | None = None,
                       seed: int = 0, batch_size: int = 32) -> dict[str, Any]:
    """Trains the shape expert once and saves it to `out_dir`; returns (and saves) its figures.

    `heldout` (images, masks) scores it on scenes it never saw: pixel accuracy beside the all-background
    baseline. About 20 s for 300 steps of 32 images of 32x32 on 2 CPU cores.
    """
    start = time.time()
    net, loss = fit_shape_net(images_NxHxWx3, masks_NxHxW, steps, seed=seed, batch_size=batch_size)
    info: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "train_examples": len(images_NxHxWx3),
                            "final_loss": loss, "train_seconds": round(time.time() - start, 1)}
    if heldout is not None:
        info["heldout"] = pixel_accuracy(net, *heldout)
    save_shape_expert(net, out_dir, info)
    return info
