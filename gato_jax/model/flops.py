"""Model size and training cost, computed from the config without allocating parameters.

`flops_per_token` (training, forward + backward) follows the PaLM appendix-B convention:
    6 * N  +  12 * L * H * K * seq_len
where N counts the parameters of every matmul a token goes through: per layer the q, k, v and output
projections (4 * D * H * K) and the MLP (2 * D * F), plus the tied logits projection (V * D). The second
term is attention scores and weighted values (2 matmuls of H*K x seq_len per layer, forward and
backward, counted as full rather than causal, as PaLM does). Ignored as < 1-2% of the total: biases,
norms, position tables (lookups) and the patch ResNet (~1.4 MFLOP per token at the default stem).
"""
from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from gato_jax.model.layers import ModelDims


def count_params(model_config: ml_collections.ConfigDict, vocab_size: int) -> int:
    """Exact number of parameters (jax.eval_shape: shapes only, nothing allocated)."""
    from gato_jax.model.transformer import abstract_model

    _, state = abstract_model(model_config, vocab_size)
    return sum(int(x.size) for x in jax.tree.leaves(state.filter(nnx.Param)))


def matmul_params(model_config: ml_collections.ConfigDict, vocab_size: int) -> int:
    """N of the FLOPs formula: weights of the matmuls every token passes through."""
    d = ModelDims.from_config(model_config)
    attn_width = d.num_heads * d.head_dim
    per_layer = 4 * d.d_model * attn_width + 2 * d.d_model * d.mlp_dim
    return d.num_layers * per_layer + vocab_size * d.d_model


def flops_per_token(model_config: ml_collections.ConfigDict, seq_len: int, vocab_size: int) -> float:
    """Training FLOPs per token (forward and backward), see the module docstring."""
    d = ModelDims.from_config(model_config)
    attention = 12 * d.num_layers * d.num_heads * d.head_dim * seq_len
    return float(6 * matmul_params(model_config, vocab_size) + attention)
