"""The Gato model: `Gato` (full and cached forward passes), its KV cache, size and FLOPs helpers."""
from gato_jax.model.cache import KVCache, pin_prefix, pinned_prefix_distance, reset_to_pinned
from gato_jax.model.flops import count_params, flops_per_token
from gato_jax.model.transformer import Gato, abstract_model

__all__ = [
    "Gato", "KVCache", "abstract_model", "count_params", "flops_per_token", "pin_prefix", "pinned_prefix_distance",
    "reset_to_pinned",
]
