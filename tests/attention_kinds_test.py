"""Semi-causal attention (MetaLM) and the perceiver resampler (KOSMOS-1): golden masks, no leaks,
cached decode equal to the full pass for every combination.

Array key: B = batch, T = tokens, V = vocabulary.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gato_jax import configs
from gato_jax.model import Gato
from gato_jax.model.attention import attention_mask, span_ids
from gato_jax.model.resampler import holes, slots_from_end
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import ACTION_LOCAL_POS, Modality, TokenSequence
from gato_jax.tokenizers.vocab import VocabLayout

LAYOUT = VocabLayout(text_size=100)
PATCHES, STEPS, TEXT = 4, 5, 2  # Each timestep: 4 patches, 1 discrete observation, '|', 1 action.
STEP = PATCHES + 3
T = TEXT + STEPS * STEP  # 37
IM, X, S, P = Modality.IMAGE, Modality.TEXT, Modality.SEPARATOR, Modality.PAD
D = A = Modality.DISCRETE  # Observation value and action.


def agent_batch(seed: int = 0) -> TokenSequence:
    """Two rows of text then Atari-like timesteps; row 1 ends in padding (a shorter episode)."""
    rng = np.random.default_rng(seed)
    modality = [X] * TEXT + [IM] * PATCHES + [D, S, A]
    modality = np.array(modality[:TEXT] + modality[TEXT:] * STEPS, np.int32)
    local_pos = np.array([-1] * TEXT + ([*range(PATCHES + 1), -1, ACTION_LOCAL_POS]) * STEPS, np.int32)
    tokens = rng.integers(0, LAYOUT.text_size, T)
    tokens = np.where(modality == IM, LAYOUT.special_id("<image>"), tokens)
    tokens = np.where(modality == S, LAYOUT.separator_id, tokens)
    patches = rng.integers(0, 256, (2, T, seq_lib.patch_dim_for(16))) * (modality == IM)[None, :, None]
    patch_pos = np.zeros((T, 4), np.int32)
    patch_pos[modality == IM] = np.tile([[0, 64, 0, 64], [0, 64, 64, 128], [64, 128, 0, 64], [64, 128, 64, 128]],
                                       (STEPS, 1))
    segment = np.ones((2, T), np.int32)
    segment[1, T - STEP:] = 0
    modality_BxT = np.where(segment == 0, P, modality[None]).astype(np.int32)
    return TokenSequence(
        tokens=np.where(segment == 0, 0, tokens[None]).astype(np.int32),
        modality=modality_BxT,
        local_pos=np.where(segment == 0, -1, local_pos[None]).astype(np.int32),
        patches=patches.astype(np.uint8),
        patch_pos=np.broadcast_to(patch_pos, (2, T, 4)).copy(),
        loss_mask=(modality_BxT == A) & (np.asarray(local_pos) == ACTION_LOCAL_POS)[None],
        segment_ids=segment)


def test_span_ids_golden():
    #             text img img sep img img obs act pad
    modality = np.array([[X, IM, IM, S, IM, IM, D, A, P]])
    local_pos = np.array([[-1, 0, 1, -1, 0, 1, 2, ACTION_LOCAL_POS, -1]])
    segment = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 0]])
    images = span_ids(jnp.asarray(modality), jnp.asarray(local_pos), jnp.asarray(segment), "images")
    observations = span_ids(jnp.asarray(modality), jnp.asarray(local_pos), jnp.asarray(segment), "observations")
    np.testing.assert_array_equal(images, [[0, 1, 1, 0, 2, 2, 0, 0, 0]])
    np.testing.assert_array_equal(observations, [[0, 1, 1, 0, 2, 2, 2, 0, 0]])


def test_adjacent_images_of_two_packed_segments_are_two_spans():
    modality, local_pos = np.array([[IM, IM, IM, IM]]), np.array([[0, 1, 0, 1]])
    spans = span_ids(jnp.asarray(modality), jnp.asarray(local_pos), jnp.asarray([[1, 1, 2, 2]]), "images")
    np.testing.assert_array_equal(spans, [[1, 1, 2, 2]])


def test_semi_causal_mask_golden():
    # Positions: text, img, img, img, text, pad. Images see each other both ways; all else causal.
    segment = jnp.asarray([[1, 1, 1, 1, 1, 0]])
    spans = jnp.asarray([[0, 1, 1, 1, 0, 0]])
    expected = np.array([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # Padding sees only itself.
    ], bool)
    np.testing.assert_array_equal(attention_mask(segment, spans)[0], expected)
    causal = np.tril(np.ones((6, 6), bool))
    causal[5, :5] = False  # Padding sees only itself.
    np.testing.assert_array_equal(attention_mask(segment)[0], causal)


def test_resampler_outputs_sit_at_each_images_last_positions():
    spans = jnp.asarray([[0, 1, 1, 1, 1, 0, 2, 2, 0]])
    np.testing.assert_array_equal(slots_from_end(spans), [[-1, 3, 2, 1, 0, -1, 1, 0, -1]])
    # K = 2: a 4-patch image keeps its last two positions; a 2-patch image keeps both.
    np.testing.assert_array_equal(holes(spans, 2), [[0, 1, 1, 0, 0, 0, 0, 0, 0]])


KINDS = [("semi_causal", "images", "patches"), ("causal", "images", "resampler"),
         ("semi_causal", "observations", "resampler"),
         ("semi_causal", "images", "resampler", True)]  # Smeared keys across the resampler's holes.


@functools.cache
def model_fns(attention: str, spans: str, encoder: str, smear: bool = False):
    """Tiny model of one kind, and its jitted full pass and decode (compiled once per shape)."""
    config = configs.model_config("tiny")
    config.attention, config.semi_causal_spans, config.image_encoder = attention, spans, encoder
    config.smear_keys = smear
    config.resampler_tokens = 2
    graphdef, state = nnx.split(Gato(config, LAYOUT.padded_size, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda state, seq: nnx.merge(graphdef, state)(seq))
    decode = jax.jit(lambda state, seq, cache: nnx.merge(graphdef, state).decode(seq, cache))
    return graphdef, state, forward, decode


def decode_by_timestep(kind, seq: TokenSequence) -> np.ndarray:
    """Text as one chunk, then one chunk per timestep: each span (image, observation) within a chunk."""
    graphdef, state, _, decode = model_fns(*kind)
    cache = nnx.merge(graphdef, state).init_cache(2, T)
    logits, bounds = [], [0, TEXT, *range(TEXT + STEP, T + 1, STEP)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out, cache = decode(state, TokenSequence(*(f[:, lo:hi] for f in seq)), cache)
        logits.append(np.asarray(out))
    return np.concatenate(logits, axis=1)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decode_equals_the_full_pass(kind):
    _, state, forward, _ = model_fns(*kind)
    seq = agent_batch()
    full = np.asarray(forward(state, seq))
    real = seq.segment_ids != 0
    np.testing.assert_allclose(decode_by_timestep(kind, seq)[real], full[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_no_position_sees_a_later_target(kind):
    """Every action (a target) and everything after it may change; logits before it must not."""
    _, state, forward, _ = model_fns(*kind)
    seq = agent_batch()
    first_action = TEXT + STEP - 1
    changed = seq._replace(tokens=seq.tokens.copy(), patches=seq.patches.copy())
    changed.tokens[:, first_action:] = (changed.tokens[:, first_action:] + 7) % LAYOUT.text_size
    changed.patches[:, first_action:] = 255 - changed.patches[:, first_action:]
    before, after = np.asarray(forward(state, seq)), np.asarray(forward(state, changed))
    np.testing.assert_allclose(after[:, :first_action], before[:, :first_action], atol=1e-6)
    assert not np.allclose(after[:, first_action:], before[:, first_action:])


@pytest.mark.parametrize("kind", [("causal", "images", "patches"), KINDS[0]], ids=["causal", "semi_causal"])
def test_an_images_first_patch_sees_its_last_only_when_semi_causal(kind):
    if kind == KINDS[0]:
        _, state, forward, _ = model_fns(*kind)
    else:
        config = configs.model_config("tiny")
        graphdef, state = nnx.split(Gato(config, LAYOUT.padded_size, rngs=nnx.Rngs(0)))
        forward = jax.jit(lambda state, seq: nnx.merge(graphdef, state)(seq))
    seq = agent_batch()
    last_patch = TEXT + PATCHES - 1
    changed = seq._replace(patches=seq.patches.copy())
    changed.patches[:, last_patch] = 255 - changed.patches[:, last_patch]
    first = np.asarray(forward(state, seq))[:, TEXT]
    first_changed = np.asarray(forward(state, changed))[:, TEXT]
    assert np.allclose(first, first_changed) == (kind[0] == "causal")


def test_resampler_reads_every_patch_and_hides_the_holes():
    """A hole's pixels reach the decoder only through the resampler's outputs, and the token after the
    image sees K tokens, not N."""
    graphdef, state, forward, _ = model_fns(*KINDS[1])
    seq = agent_batch()
    changed = seq._replace(patches=seq.patches.copy())
    changed.patches[:, TEXT] = 255 - changed.patches[:, TEXT]  # The first patch: a hole for K = 2.
    after_image = TEXT + PATCHES
    assert not np.allclose(np.asarray(forward(state, seq))[:, after_image],
                           np.asarray(forward(state, changed))[:, after_image])
    model = nnx.merge(graphdef, state)
    spans = span_ids(jnp.asarray(seq.modality), jnp.asarray(seq.local_pos), jnp.asarray(seq.segment_ids))
    kept = np.asarray(model._without_holes(TokenSequence(*map(jnp.asarray, seq)), spans).segment_ids != 0)
    image_positions = np.flatnonzero(seq.modality[0] == IM)
    assert kept[0, image_positions].sum() == 2 * STEPS  # K = 2 of each image's 4 patches stay visible.
