"""Small shared pieces: static model dimensions, partition-annotated initialisers, MLP.

Array key: B = batch, T = tokens, D = d_model, F = mlp_dim.

Layers name logical axes only ("embed", "mlp", "heads", "kv", "vocab", ...); `gato_jax.sharding` maps
them to mesh axes. Annotations are metadata only (`eager_sharding=False`): a model built outside any mesh
(tests, CPU scripts) works unchanged, and `sharding.create_sharded_model` places the parameters.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

# Stride (and kernel) of the patch ResNet stem conv when the config does not name one [D]: a 16x16 patch
# becomes a 4x4 grid, so the block costs ~1.4 MFLOP per token instead of ~25 at full resolution.
DEFAULT_PATCH_STEM_STRIDE = 4
POSITION_BIASES = ("alibi", "none")  # Values of `model.position_bias` (see configs.py).
ATTENTION_KINDS = ("causal", "semi_causal")  # Values of `model.attention`.
SPAN_KINDS = ("images", "observations")  # Values of `model.semi_causal_spans`.
IMAGE_ENCODERS = ("patches", "resampler")  # Values of `model.image_encoder`.


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Hashable copy of the model config (nnx keeps it as static graph data)."""

    num_layers: int
    d_model: int
    mlp_dim: int
    num_heads: int
    head_dim: int
    patch_size: int
    resnet_channels: int
    patch_stem_stride: int
    dtype: str
    param_dtype: str
    remat: bool
    dropout_rate: float
    position_bias: str
    attention: str = "causal"
    semi_causal_spans: str = "images"
    image_encoder: str = "patches"
    resampler_tokens: int = 4
    resampler_layers: int = 1
    smear_keys: bool = False

    @classmethod
    def from_config(cls, model_config: ml_collections.ConfigDict) -> ModelDims:
        dims = cls(
            num_layers=int(model_config.num_layers),
            d_model=int(model_config.d_model),
            mlp_dim=int(model_config.mlp_dim),
            num_heads=int(model_config.num_heads),
            head_dim=int(model_config.head_dim),
            patch_size=int(model_config.patch_size),
            resnet_channels=int(model_config.resnet_channels),
            patch_stem_stride=int(model_config.get("patch_stem_stride", DEFAULT_PATCH_STEM_STRIDE)),
            dtype=str(model_config.dtype),
            param_dtype=str(model_config.param_dtype),
            remat=bool(model_config.remat),
            dropout_rate=float(model_config.dropout_rate),
            # A config saved before the field existed was trained without one.
            position_bias=str(model_config.get("position_bias", "none")),
            # Configs saved before these fields existed were causal, one token per patch.
            attention=str(model_config.get("attention", "causal")),
            semi_causal_spans=str(model_config.get("semi_causal_spans", "images")),
            image_encoder=str(model_config.get("image_encoder", "patches")),
            resampler_tokens=int(model_config.get("resampler_tokens", 4)),
            resampler_layers=int(model_config.get("resampler_layers", 1)),
            smear_keys=bool(model_config.get("smear_keys", False)),  # Older configs: no smearing.
        )
        dims.validate()
        return dims

    def validate(self) -> None:
        if self.resnet_channels % 32:
            raise ValueError(f"model.resnet_channels={self.resnet_channels} must be a multiple of 32 (GroupNorm(32)).")
        if self.patch_size % self.patch_stem_stride:
            raise ValueError(
                f"model.patch_size={self.patch_size} must be a multiple of patch_stem_stride={self.patch_stem_stride}.")
        if self.position_bias not in POSITION_BIASES:
            raise ValueError(f"model.position_bias must be one of {POSITION_BIASES}, got {self.position_bias!r}.")
        for name, allowed in (("attention", ATTENTION_KINDS), ("semi_causal_spans", SPAN_KINDS),
                              ("image_encoder", IMAGE_ENCODERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.resampler_tokens < 1 or self.resampler_layers < 1:
            raise ValueError(f"model.resampler_tokens ({self.resampler_tokens}) and model.resampler_layers "
                             f"({self.resampler_layers}) must be at least 1.")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise ValueError(f"model.{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}.")

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def dtypes(self) -> dict:
        """Keyword arguments every flax layer takes."""
        return {"dtype": self.compute_dtype, "param_dtype": self.params_dtype}


def partitioned(init: Callable, names: tuple[str | None, ...]) -> Callable:
    """Wraps an initialiser so its Param carries logical axis names (and is not sharded eagerly)."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def fan_in_init(in_axis=-2, out_axis=-1) -> Callable:
    """LeCun normal: variance 1/fan_in; explicit fan axes for multi-axis kernels (heads x head_dim).

    A plain (not truncated) normal: truncated_normal took ~0.5 s to compile per shape on CPU, which
    dominated model creation in tests.
    """
    return nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=in_axis, out_axis=out_axis)


def layer_norm(dims: ModelDims, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dims.d_model,
        scale_init=partitioned(nnx.initializers.ones, ("norm",)),
        bias_init=partitioned(nnx.initializers.zeros, ("norm",)),
        rngs=rngs,
        **dims.dtypes(),
    )


class Mlp(nnx.Module):
    """Dense -> GELU -> Dense. GELU is the tanh approximation: the exact erf form's backward dominated
    a CPU training step here (measured with PyTorch eager beside it)."""

    def __init__(self, dims: ModelDims, *, rngs: nnx.Rngs):
        lecun = fan_in_init()
        zeros = nnx.initializers.zeros
        self.up = nnx.Linear(
            dims.d_model, dims.mlp_dim, kernel_init=partitioned(lecun, ("embed", "mlp")),
            bias_init=partitioned(zeros, ("mlp",)), rngs=rngs, **dims.dtypes())
        self.down = nnx.Linear(
            dims.mlp_dim, dims.d_model, kernel_init=partitioned(lecun, ("mlp", "embed")),
            bias_init=partitioned(zeros, ("embed",)), rngs=rngs, **dims.dtypes())

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        h_BxTxF = jax.nn.gelu(self.up(x_BxTxD), approximate=True)
        return self.down(h_BxTxF)
