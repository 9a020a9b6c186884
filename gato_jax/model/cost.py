"""Model size and training cost, computed from the config without allocating parameters.

`flops_per_token` (training, forward + backward) follows the PaLM appendix-B convention:
    6 * N  +  12 * L * H * K * seq_len  +  3 * patch ResNet forward
where N counts the parameters of every matmul a token goes through: per layer the q, k, v and output
projections (4 * D * H * K) and the MLP (2 * D * F), plus the tied logits projection (V * D). The second
term is attention scores and weighted values (2 matmuls of H*K x seq_len per layer, forward and
backward, counted as full rather than causal, as PaLM does). The third is the patch ResNet's convolutions
and projection (`patch_flops`) wherever it runs: every position in the plain pass. The sparse train step
runs the logits and the ResNet on fewer positions (`image_fraction`, `logits_fraction`), the ResNet's
3x3 convolutions as dense matrices (`patch_matmuls`). With `model.image_encoder="resampler"`, the
perceiver resampler's layers run at every position in the plain pass (`resampler_flops`): per layer the q
and output projections on the position, k and v on its patch embedding and its latent (2 keys per
position), the MLP, and attention over 2 * seq_len keys; the sparse step runs them on a fraction f of
the positions (each row's outputs, under a cap), keyed by the row's patches and those outputs (1 + f keys
per position, attention over (1 + f) * seq_len keys). Ignored as < 1% of the total: biases, norms, activations
and position tables (lookups).
"""
from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from gato_jax.model.build import abstract_model  # Dispatches on model.kind.
from gato_jax.model.embed import MAX_DENSE_CONV_WIDTH
from gato_jax.model.layers import ModelDims


def count_params(model_config: ml_collections.ConfigDict, vocab_size: int) -> int:
    """Exact number of parameters (jax.eval_shape: shapes only, nothing allocated)."""
    _, state = abstract_model(model_config, vocab_size)
    return sum(int(x.size) for x in jax.tree.leaves(state.filter(nnx.Param)))


def matmul_params(model_config: ml_collections.ConfigDict, vocab_size: int) -> int:
    """N of the FLOPs formula: weights of the matmuls every token passes through."""
    d = ModelDims.from_config(model_config)
    attn_width = d.num_heads * d.head_dim
    per_layer = 4 * d.d_model * attn_width + 2 * d.d_model * d.mlp_dim
    return d.num_layers * per_layer + vocab_size * d.d_model


def patch_flops(model_config: ml_collections.ConfigDict, as_matmuls: bool = False) -> float:
    """Forward FLOPs of the patch ResNet on one patch: stem conv, two 3x3 convs, projection to D.

    `as_matmuls`: the 3x3 convs as one dense [G*G*C, G*G*C] matrix each (`PatchResNet(as_matmuls=True)`).
    """
    d = ModelDims.from_config(model_config)
    g, c = d.patch_size // d.patch_stem_stride, d.resnet_channels
    stem = 2 * g * g * (d.patch_stem_stride**2 * 3) * c
    conv = 2 * (g * g * c) ** 2 if as_matmuls and g * g * c <= MAX_DENSE_CONV_WIDTH else 2 * g * g * 9 * c * c
    return float(stem + 2 * conv + 2 * g * g * c * d.d_model)


def flops_per_token(model_config: ml_collections.ConfigDict, seq_len: int, vocab_size: int, *,
                    image_fraction: float = 1.0, logits_fraction: float = 1.0, patch_matmuls: bool = False,
                    latent_fraction: float = 1.0) -> float:
    """Training FLOPs per token (forward and backward), see the module docstring.

    Defaults: the plain pass (logits, patch ResNet and resampler at every position). `image_fraction`,
    `logits_fraction` and `latent_fraction` are the fractions of positions the ResNet, the logits and the
    resampler's latents run at.
    """
    d = ModelDims.from_config(model_config)
    attention = 12 * d.num_layers * d.num_heads * d.head_dim * seq_len
    blocks = matmul_params(model_config, vocab_size) - vocab_size * d.d_model
    logits = logits_fraction * vocab_size * d.d_model
    patches = image_fraction * patch_flops(model_config, patch_matmuls)
    resampler = resampler_flops(model_config, seq_len, latent_fraction)
    return float(6 * (blocks + logits) + attention + 3 * patches + resampler)


def resampler_flops(model_config: ml_collections.ConfigDict, seq_len: int, latent_fraction: float = 1.0) -> float:
    """Training FLOPs per token of the perceiver resampler with latents at `latent_fraction` f of the
    positions (1: the plain pass, every position; module docstring); 0 without one."""
    d = ModelDims.from_config(model_config)
    if d.image_encoder != "resampler":
        return 0.0
    f, attn_width = float(latent_fraction), d.num_heads * d.head_dim
    # q, out and the MLP at the latents; k, v on every patch and every latent (1 + f keys per position).
    matmuls = 2 * d.d_model * attn_width * f + 2 * d.d_model * attn_width * (1 + f) + 2 * d.d_model * d.mlp_dim * f
    return float(d.resampler_layers * (6 * matmuls + 12 * attn_width * f * (1 + f) * seq_len))
