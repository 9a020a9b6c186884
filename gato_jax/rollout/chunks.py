"""What acting and sampling both feed the KV cache: one-token chunks, and fresh caches placed like the weights.

Array key: B = rows (environments or prompts), D = patch pixels (patch_size^2 x 3).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from gato_jax.tokenizers.sequence import ACTION_LOCAL_POS, NO_LOCAL_POS, Modality, TokenSequence
from gato_jax.tokenizers.vocab import VocabLayout


def token_chunk(tokens_B: jax.Array, modality_B: jax.Array, local_pos: int, patch_dim: int) -> TokenSequence:
    """A [B, 1] chunk of one token per row: no patch, no loss, segment 1."""
    b = tokens_B.shape[0]
    return TokenSequence(
        tokens=tokens_B[:, None].astype(jnp.int32),
        modality=jnp.broadcast_to(jnp.asarray(modality_B, jnp.int32), (b,))[:, None],
        local_pos=jnp.full((b, 1), local_pos, jnp.int32),
        patches=jnp.zeros((b, 1, patch_dim), jnp.uint8),
        patch_pos=jnp.zeros((b, 1, 4), jnp.int32),
        loss_mask=jnp.zeros((b, 1), bool),
        segment_ids=jnp.ones((b, 1), jnp.int32),
    )


def action_chunk(tokens_B: jax.Array, modality: jax.Array, patch_dim: int) -> TokenSequence:
    """One action token per row, laid out as `tokenize_episode` lays actions (`ACTION_LOCAL_POS`)."""
    return token_chunk(tokens_B, modality, ACTION_LOCAL_POS, patch_dim)


def text_chunk(tokens_B: jax.Array, layout: VocabLayout, patch_dim: int) -> TokenSequence:
    """One generated text id per row (`<eos>` and other specials count as special tokens)."""
    modality_B = jnp.where(tokens_B < layout.text_size, Modality.TEXT, Modality.SPECIAL)
    return token_chunk(tokens_B, modality_B, NO_LOCAL_POS, patch_dim)


def as_jax(seq: TokenSequence) -> TokenSequence:
    """Every field as a jax array (numpy batches from the host)."""
    return TokenSequence(*(jnp.asarray(f) for f in seq))


def place_like(tree: Any, params: Any) -> Any:
    """`tree` replicated over the mesh of `params`: a fresh cache then has the same sharding as one that
    came out of a jitted step, so the act and decode steps do not compile a second time for it."""
    sharding = jax.tree.leaves(params)[0].sharding
    if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.device_put(tree, sharding)
