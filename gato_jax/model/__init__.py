"""The Gato model: `Gato` (full and cached forward passes), its KV cache, size and cost helpers.

`build` makes it already sharded (or abstract, for restores and ahead-of-time compiles); `cost` counts
its parameters and training FLOPs from the config alone.
"""
from gato_jax.model.build import abstract_model
from gato_jax.model.cache import KVCache, pin_prefix, pinned_prefix_distance, reset_to_pinned
from gato_jax.model.cost import count_params, flops_per_token
from gato_jax.model.transformer import Gato

__all__ = [
    "Gato", "KVCache", "abstract_model", "count_params", "flops_per_token", "pin_prefix", "pinned_prefix_distance",
    "reset_to_pinned",
]
