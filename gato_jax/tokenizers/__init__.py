"""Tokenizers: every modality to one flat TokenSequence of ids in one VocabLayout (docs/TOKEN_FORMAT.md).

Pure numpy (no JAX), so data loading runs on host CPUs without touching accelerators.
"""
from gato_jax.tokenizers.episode import (
    action_token_ranges,
    decode_action,
    observation_tokens,
    tokenize_caption,
    tokenize_episode,
    tokenize_text,
    tokenize_timestep,
)
from gato_jax.tokenizers.images import (
    image_to_patch_pixels,
    image_to_patches,
    patch_intervals,
)
from gato_jax.tokenizers.sequence import Modality, TokenSequence
from gato_jax.tokenizers.spec import FieldKind, FieldSpec, TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.values import (
    detokenize_continuous,
    detokenize_discrete,
    mu_law_decode,
    mu_law_encode,
    tokenize_continuous,
    tokenize_discrete,
)
from gato_jax.tokenizers.vocab import VocabLayout

__all__ = [
    "FieldKind",
    "FieldSpec",
    "Modality",
    "TaskSpec",
    "TextTokenizer",
    "TokenSequence",
    "VocabLayout",
    "action_token_ranges",
    "decode_action",
    "detokenize_continuous",
    "detokenize_discrete",
    "image_to_patch_pixels",
    "image_to_patches",
    "mu_law_decode",
    "mu_law_encode",
    "observation_tokens",
    "patch_intervals",
    "tokenize_caption",
    "tokenize_continuous",
    "tokenize_discrete",
    "tokenize_episode",
    "tokenize_text",
    "tokenize_timestep",
]
