"""The registry of frozen perception experts: name -> (output channels, map function).

Array key: N = images, H = height, W = width, C = channels of one expert's map, K = palette colours,
S = shape classes.

An expert reads `Frames` (uint8 RGB images [N, H, W, 3] and the frame before each) and returns a float32
map [N, H, W, C]. None is ever trained: the classical ones have no parameters, the learned one reads
frozen weights, and `run_experts` stops every gradient. Which experts run is `model.prismer.experts`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax

from gato_jax.perception import classical
from gato_jax.perception.shape_expert import SHAPE_CLASSES, ShapeNet, shape_probabilities


class Frames(NamedTuple):
    """What an expert sees: the images and, for motion, the frame before each (itself when none)."""

    current: jax.Array  # uint8 [N, H, W, 3]
    previous: jax.Array  # uint8 [N, H, W, 3]


class ExpertContext(NamedTuple):
    """Static inputs some experts need: the segmentation palette and the frozen shape net."""

    palette: tuple[tuple[int, int, int], ...] = ()  # RGB colours K (background included).
    shape_net: ShapeNet | None = None


class Expert(NamedTuple):
    channels: Callable[[ExpertContext], int]
    apply: Callable[[Frames, ExpertContext], jax.Array]


def _shapes(frames: Frames, context: ExpertContext) -> jax.Array:
    if context.shape_net is None:
        raise ValueError("The 'shapes' expert needs its trained net: set model.prismer.shape_expert_dir.")
    return shape_probabilities(context.shape_net, frames.current)


def _segments(frames: Frames, context: ExpertContext) -> jax.Array:
    if not context.palette:
        raise ValueError("The 'segments' expert needs a palette: set model.prismer.palette.")
    return classical.colour_segments(frames.current, context.palette)


EXPERTS: dict[str, Expert] = {
    "edges": Expert(lambda _: 1, lambda f, _: classical.sobel_edges(f.current)),
    "segments": Expert(lambda c: len(c.palette), _segments),
    "motion": Expert(lambda _: 1, lambda f, _: classical.frame_difference(f.current, f.previous)),
    "shapes": Expert(lambda _: len(SHAPE_CLASSES), _shapes),
}
LEARNED_EXPERTS = ("shapes",)  # Experts whose weights come from a checkpoint.


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """The names as a tuple; an error naming the choices for an unknown or repeated one."""
    unknown = [n for n in names if n not in EXPERTS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"model.prismer.experts={tuple(names)}: each at most once, from {sorted(EXPERTS)}.")
    return tuple(names)


def expert_channels(names: Sequence[str], context: ExpertContext) -> tuple[int, ...]:
    """Channels C of each named expert's map."""
    return tuple(EXPERTS[n].channels(context) for n in check_names(names))


def run_experts(names: Sequence[str], frames: Frames, context: ExpertContext) -> list[jax.Array]:
    """Each named expert's map float32 [N, H, W, C], gradient-free."""
    return [jax.lax.stop_gradient(EXPERTS[n].apply(frames, context)) for n in check_names(names)]
