"""Frozen perception experts (Prismer): a registry of functions from images to maps, the learned shape
expert (trained once, loaded frozen), and the patch path of their maps. Nothing here trains with the
model, and nothing here imports it: `model.expert_resampler` turns the maps into tokens.

Not to be confused with `data_pipelines/experts`, the scripted game players that record demonstrations.
"""
from gato_jax.perception.classical import colour_segments, frame_difference, grayscale, sobel_edges
from gato_jax.perception.patches import average_pool, patchify_maps, unpatchify
from gato_jax.perception.registry import (
    EXPERTS,
    LEARNED_EXPERTS,
    ExpertContext,
    Frames,
    expert_channels,
    run_experts,
)
from gato_jax.perception.shape_expert import (
    SHAPE_CLASSES,
    FrozenExpertParam,
    ShapeNet,
    load_frozen_shape_expert,
    load_shape_expert_into,
    pixel_accuracy,
    train_shape_expert,
)

__all__ = [
    "EXPERTS", "LEARNED_EXPERTS", "SHAPE_CLASSES", "ExpertContext", "Frames", "FrozenExpertParam", "ShapeNet",
    "average_pool", "colour_segments", "expert_channels", "frame_difference", "grayscale", "load_frozen_shape_expert",
    "load_shape_expert_into", "patchify_maps", "pixel_accuracy", "run_experts", "sobel_edges", "train_shape_expert",
    "unpatchify",
]
