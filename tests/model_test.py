"""Model: full forward == cached decode (token by token, chunks, ring), ALiBi, causality, segments, sizes, dtypes.

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
from gato_jax.model import (
    Gato,
    abstract_model,
    count_params,
    flops_per_token,
    pin_prefix,
    pinned_prefix_distance,
    reset_to_pinned,
)
from gato_jax.model.attention import (
    alibi_slopes,
    causal_distance,
    dot_product_attention,
    previous_positions,
    segment_mask,
)
from gato_jax.model.embed import PatchResNet
from gato_jax.model.layers import ModelDims
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.sequence import ACTION_LOCAL_POS, Modality, TokenSequence
from gato_jax.tokenizers.vocab import VocabLayout

LAYOUT = VocabLayout(text_size=100)
B, T = 2, 32
PATCH_DIM = seq_lib.patch_dim_for(16)


def make_batch(segments_BxT: np.ndarray, seed: int = 0) -> TokenSequence:
    """Random tokens of every modality (a third image patches) with the given segment ids (0 = pad)."""
    rng = np.random.default_rng(seed)
    shape = segments_BxT.shape
    kinds = np.array([Modality.TEXT, Modality.IMAGE, Modality.IMAGE, Modality.DISCRETE,
                      Modality.CONTINUOUS, Modality.SEPARATOR])
    modality = kinds[rng.integers(0, len(kinds), shape)]
    modality = np.where(segments_BxT == 0, Modality.PAD, modality).astype(np.int32)
    is_image = modality == Modality.IMAGE
    tokens = rng.integers(0, LAYOUT.total_size, shape)
    tokens = np.where(is_image, LAYOUT.special_id("<image>"), tokens)
    lo = rng.integers(0, 120, shape + (2,))
    hi = lo + rng.integers(1, 8, shape + (2,))
    patch_pos = np.stack([lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1]], axis=-1) * is_image[..., None]
    local_pos = rng.choice(np.array([-1, 0, 3, 17, ACTION_LOCAL_POS]), shape)
    patches = rng.integers(0, 256, shape + (PATCH_DIM,)) * is_image[..., None]
    return TokenSequence(
        tokens=np.where(segments_BxT == 0, 0, tokens).astype(np.int32),
        modality=modality,
        local_pos=np.where(segments_BxT == 0, -1, local_pos).astype(np.int32),
        patches=patches.astype(np.uint8),
        patch_pos=patch_pos.astype(np.int32),
        loss_mask=segments_BxT != 0,
        segment_ids=segments_BxT.astype(np.int32),
    )


def one_segment_with_gaps() -> np.ndarray:
    """Row 0 one full segment; row 1 one segment with padding gaps (shorter observations)."""
    seg = np.ones((B, T), np.int32)
    seg[1, [5, 6, 19, 31]] = 0
    return seg


def take(seq: TokenSequence, idx) -> TokenSequence:
    return TokenSequence(*(f[:, idx] for f in seq))


class Fns:
    """Model split once; jitted pure functions shared by the tests (compiled once per shape)."""

    def __init__(self, model_config):
        self.model = Gato(model_config, LAYOUT.padded_size, rngs=nnx.Rngs(0))
        self.graphdef, self.state = nnx.split(self.model)
        self.decode_traces = 0
        self.forward = jax.jit(lambda state, seq: nnx.merge(self.graphdef, state)(seq))
        self.forward_masked = jax.jit(
            lambda state, seq, mask, distance: nnx.merge(self.graphdef, state)(seq, mask=mask, distance=distance))
        self.decode = jax.jit(self._decode)

    def _decode(self, state, seq, cache):
        self.decode_traces += 1
        return nnx.merge(self.graphdef, state).decode(seq, cache)

    def decode_in_chunks(self, seq: TokenSequence, cache, chunk: int):
        logits = []
        for start in range(0, seq.tokens.shape[1], chunk):
            out, cache = self.decode(self.state, take(seq, slice(start, start + chunk)), cache)
            logits.append(out)
        return np.concatenate(logits, axis=1), cache


@functools.cache
def tiny_fns() -> Fns:
    """One tiny model per test process (sharding_test reuses it): creating one costs seconds of compiles."""
    return Fns(configs.model_config("tiny"))


@pytest.fixture(scope="module")
def full_logits(fns, gapped):
    return np.asarray(fns.forward(fns.state, gapped))


@pytest.mark.parametrize("chunk", [1, 8])
def test_decode_matches_full_forward(fns, gapped, full_logits, chunk):
    logits_BxTxV, cache = fns.decode_in_chunks(gapped, fns.model.init_cache(B, T), chunk)
    assert logits_BxTxV.shape == (B, T, LAYOUT.padded_size) and logits_BxTxV.dtype == np.float32
    np.testing.assert_allclose(logits_BxTxV, full_logits, atol=1e-5, rtol=1e-5)
    assert int(cache.index) == T
    np.testing.assert_array_equal(np.asarray(cache.valid), gapped.segment_ids != 0)


def test_decode_compiles_once_per_chunk_size(fns, gapped):
    fns.decode_in_chunks(gapped, fns.model.init_cache(B, T), 8)
    before = fns.decode_traces
    fns.decode_in_chunks(make_batch(one_segment_with_gaps(), seed=5), fns.model.init_cache(B, T), 8)
    assert fns.decode_traces == before


def window_mask(segment_ids_BxT: np.ndarray, prefix: int, ring: int) -> np.ndarray:
    """What a ring cache lets query q see: causal segment mask, keys in the prefix or < ring back."""
    q, k = np.arange(T)[:, None], np.arange(T)[None, :]
    same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    real = (segment_ids_BxT != 0)[:, None, :]
    return ((k <= q) & ((k < prefix) | (q - k < ring)) & same & real) | np.eye(T, dtype=bool)


@pytest.mark.parametrize("ring", [10, 3])  # 3: a chunk of 4 overwrites its own first token.
def test_ring_cache_with_pinned_prefix_matches_window_forward(fns, gapped, ring):
    """Decoding through a ring equals a full forward whose every query sees the pinned prefix and the
    last `ring` tokens, with the prefix's ALiBi positions re-based to sit right before that window.
    (A plain forward over [prefix + last window] differs past the first layer: the cached keys were
    computed when older tokens were still visible, as in any sliding-window cache.)"""
    prefix, chunk = 8, 4
    cache = fns.model.init_cache(B, prefix + ring)
    prompt_logits, cache = fns.decode_in_chunks(take(gapped, slice(0, prefix)), cache, chunk)
    cache = pin_prefix(cache)
    episode_logits, cache = fns.decode_in_chunks(take(gapped, slice(prefix, T)), cache, chunk)  # Wraps twice.
    assert int(cache.pinned) == prefix and int(cache.index) == T
    mask = window_mask(gapped.segment_ids, prefix, ring)
    expected = fns.forward_masked(fns.state, gapped, mask, pinned_prefix_distance(mask, prefix))
    logits = np.concatenate([prompt_logits, episode_logits], axis=1)
    np.testing.assert_allclose(logits, np.asarray(expected), atol=1e-5, rtol=1e-5)
    assert np.abs(logits - np.asarray(fns.forward(fns.state, gapped))).max() > 1e-3  # The ring did evict.
    not_rebased = fns.forward_masked(fns.state, gapped, mask, np.broadcast_to(causal_distance(T), mask.shape))
    assert np.abs(logits - np.asarray(not_rebased)).max() > 1e-3  # The prompt did move.


def test_reset_to_pinned_forgets_the_episode(fns, gapped):
    """Exactly, ALiBi included: after a reset the prompt sits right before the new episode's first token,
    as it did before the first episode, although write numbers kept counting."""
    prefix = 8
    cache = fns.model.init_cache(B, T)
    _, cache = fns.decode_in_chunks(take(gapped, slice(0, prefix)), cache, 8)
    cache = pin_prefix(cache)
    _, dirty = fns.decode_in_chunks(take(make_batch(np.ones((B, 8), np.int32), seed=9), slice(0, 8)), cache, 8)
    clean_logits, _ = fns.decode_in_chunks(take(gapped, slice(prefix, prefix + 8)), cache, 8)
    reset_logits, _ = fns.decode_in_chunks(take(gapped, slice(prefix, prefix + 8)), reset_to_pinned(dirty), 8)
    np.testing.assert_allclose(reset_logits, clean_logits, atol=1e-5, rtol=1e-5)


def test_pin_prefix_refuses_a_wrapped_cache(fns):
    cache = fns.model.init_cache(B, 16)
    assert int(pin_prefix(cache._replace(index=jnp.int32(15))).pinned) == 15
    with pytest.raises(ValueError, match="pin_prefix"):
        pin_prefix(cache._replace(index=jnp.int32(16)))


def with_smear_gates(fns: Fns, logits_LxH: np.ndarray) -> Fns:
    """`fns` with its smeared-key gate logits set (re-split: the jitted functions read the new state)."""
    fns.model.blocks.attn.smear_logit_H.value = jnp.asarray(logits_LxH, jnp.float32)
    fns.graphdef, fns.state = nnx.split(fns.model)
    return fns


@pytest.fixture(scope="module")
def smear_fns():
    """The tiny model with smeared keys, each head's gate somewhere else in (0, 1)."""
    config = configs.model_config("tiny")
    config.smear_keys = True
    return with_smear_gates(Fns(config), np.linspace(-2.0, 2.0, 8).reshape(2, 4))


def test_previous_positions_golden():
    """Padding (and resampler holes) are skipped; a segment's first token, padding, and a token after
    another segment have no previous key; in a decode, the chunk's first real token takes the cache's."""
    seg = np.array([[1, 1, 0, 1, 2, 2, 0, 0], [0, 1, 1, 1, 0, 0, 1, 1]])
    prev = previous_positions(jnp.asarray(seg))  # Indices into [before the chunk, positions 0..7] (+1).
    np.testing.assert_array_equal(prev.index_BxT, [[0, 1, 2, 2, 4, 5, 6, 6], [0, 0, 2, 3, 4, 4, 4, 7]])
    np.testing.assert_array_equal(prev.present_BxT, [[0, 1, 0, 1, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(prev.last_index_B, [6, 8])
    cached = previous_positions(jnp.asarray(seg), jnp.asarray([True, False]))
    np.testing.assert_array_equal(cached.present_BxT[:, :2], [[1, 1], [0, 0]])


@pytest.mark.parametrize("chunk", [1, 8])
def test_smeared_decode_matches_full_forward(smear_fns, gapped, chunk):
    """Each chunk's first token mixes in the cache's last raw key; padding gaps are skipped both ways."""
    full = np.asarray(smear_fns.forward(smear_fns.state, gapped))
    logits, _ = smear_fns.decode_in_chunks(gapped, smear_fns.model.init_cache(B, T), chunk)
    np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)


def test_only_a_smearing_model_stores_last_keys(fns, smear_fns):
    d = smear_fns.model.dims
    assert smear_fns.model.init_cache(B, T).last_keys.shape == (d.num_layers, B, d.num_heads, d.head_dim)
    assert fns.model.init_cache(B, T).last_keys.shape[-1] == 0, "the plain model carries no last keys"


def test_smeared_ring_and_reset_match_the_full_pass(smear_fns, gapped):
    """Through a wrapping ring (a chunk overwriting its own first token), and after `reset_to_pinned`,
    where the episode's first token smears with the prompt's last, as in training."""
    prefix, ring, chunk = 8, 3, 4
    empty = smear_fns.model.init_cache(B, prefix + ring)
    cache = pin_prefix(smear_fns.decode_in_chunks(take(gapped, slice(0, prefix)), empty, chunk)[1])
    episode_logits, _ = smear_fns.decode_in_chunks(take(gapped, slice(prefix, T)), cache, chunk)
    mask = window_mask(gapped.segment_ids, prefix, ring)
    expected = smear_fns.forward_masked(smear_fns.state, gapped, mask, pinned_prefix_distance(mask, prefix))
    np.testing.assert_allclose(episode_logits, np.asarray(expected)[:, prefix:], atol=1e-5, rtol=1e-5)
    other_episode = make_batch(np.ones((B, 8), np.int32), seed=9)
    _, dirty = smear_fns.decode_in_chunks(other_episode, cache, chunk)
    reset_logits, _ = smear_fns.decode_in_chunks(take(gapped, slice(prefix, prefix + 8)), reset_to_pinned(dirty), chunk)
    np.testing.assert_allclose(reset_logits, episode_logits[:, :8], atol=1e-5, rtol=1e-5)


def test_smeared_keys_with_gates_of_one_are_the_plain_model(fns, gapped, full_logits):
    """Same weights (the gates draw no randomness), every gate at 1: exactly the unsmeared model; at the
    initial 0.5 the logits move."""
    config = configs.model_config("tiny")
    config.smear_keys = True
    smeared = Fns(config)
    half = np.asarray(smeared.forward(smeared.state, gapped))
    assert np.abs(half - full_logits).max() > 1e-3
    plain = with_smear_gates(smeared, np.full((2, 4), 40.0))
    np.testing.assert_allclose(np.asarray(plain.forward(plain.state, gapped)), full_logits, atol=1e-6, rtol=1e-6)


def test_alibi_slopes_are_the_papers():
    np.testing.assert_allclose(alibi_slopes(4), [1 / 4, 1 / 16, 1 / 64, 1 / 256])
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
    # Not a power of two: the slopes of 8 heads, then every other slope of 16 heads (the paper's code).
    odd = [2.0 ** -(i + 0.5) for i in range(4)]
    np.testing.assert_allclose(alibi_slopes(12), [2.0 ** -i for i in range(1, 9)] + odd)


def bias_only_attention(mask_1xTxT: np.ndarray, distance_1xTxT: np.ndarray | None) -> np.ndarray:
    """[T, H, T] attention weights (query, head, key) of 4 heads when every score is 0: the bias alone.

    Zero queries make all keys identical; one-hot values read the weights out of the output.
    """
    t, h = mask_1xTxT.shape[-1], 4
    zeros = jnp.zeros((1, t, h, 8))
    values_1xTxHxT = jnp.broadcast_to(jnp.eye(t)[None, :, None, :], (1, t, h, t))
    out = dot_product_attention(zeros, zeros, values_1xTxHxT, jnp.asarray(mask_1xTxT), distance_1xTxT, alibi_slopes(h))
    return np.asarray(out[0])


def test_alibi_bias_golden():
    """bias[h, q, k] = -slope_h * (q - k) on the visible keys k <= q."""
    t = 5
    mask = np.tril(np.ones((t, t), bool))[None]
    probs_TxHxT = bias_only_attention(mask, causal_distance(t))
    q, k = np.arange(t)[:, None, None], np.arange(t)[None, None, :]
    slopes = np.array([1 / 4, 1 / 16, 1 / 64, 1 / 256])[None, :, None]
    weights = np.where(k <= q, np.exp(-slopes * (q - k)), 0.0)
    np.testing.assert_allclose(probs_TxHxT, weights / weights.sum(-1, keepdims=True), rtol=1e-6, atol=1e-7)


def test_alibi_prefers_the_nearer_of_two_identical_keys_and_none_does_not():
    """Query 3 sees keys 0, 2 and itself, all identical: ALiBi weighs key 2 exp(2 * slope) times key 0;
    without a distance (position_bias="none") both weigh the same (NoPE)."""
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 3, [0, 2, 3]] = True
    mask[0, :3, :3] = np.eye(3, dtype=bool)  # Other rows only keep their diagonal.
    alibi_H = bias_only_attention(mask, causal_distance(4))[3]
    np.testing.assert_allclose(alibi_H[:, 2] / alibi_H[:, 0], np.exp(2 * np.array(alibi_slopes(4))), rtol=1e-6)
    nope_H = bias_only_attention(mask, None)[3]
    np.testing.assert_allclose(nope_H[:, [0, 2, 3]], 1 / 3, rtol=1e-6)


def test_pinned_prefix_distance_rebases_the_prompt_before_the_window():
    """Prefix 2, ring 3: once the window has moved on, the prompt still looks 3 and 4 tokens away."""
    q, k = np.arange(8)[:, None], np.arange(8)[None, :]
    mask_TxT = (k <= q) & ((k < 2) | (q - k < 3))
    distance_TxT = np.asarray(pinned_prefix_distance(mask_TxT[None], 2))[0]
    assert distance_TxT[1][mask_TxT[1]].tolist() == [1, 0]  # Prompt tokens: plain distances.
    assert distance_TxT[3][mask_TxT[3]].tolist() == [3, 2, 1, 0]  # Not wrapped yet: plain distances.
    assert distance_TxT[5][mask_TxT[5]].tolist() == [4, 3, 2, 1, 0]  # Keys 0, 1, 3, 4, 5.
    assert distance_TxT[7][mask_TxT[7]].tolist() == [4, 3, 2, 1, 0]  # Keys 0, 1, 5, 6, 7.
    unwrapped_TxT = np.asarray(pinned_prefix_distance((k <= q)[None], 2))[0]
    np.testing.assert_array_equal(np.where(k <= q, unwrapped_TxT, 0), np.where(k <= q, q - k, 0))


def test_position_bias_none_ignores_distances(fns, gapped, full_logits):
    """"none" is the NoPE model: same parameters, no bias, whatever distances it is given."""
    cfg = configs.model_config("tiny")
    cfg.position_bias = "none"
    graphdef, _ = abstract_model(cfg, LAYOUT.padded_size)
    forward = jax.jit(lambda s, x, d: nnx.merge(graphdef, s)(x, distance=d))
    mask = np.asarray(segment_mask(gapped.segment_ids))
    scrambled = np.random.default_rng(0).integers(0, 2 * T, mask.shape).astype(np.int32)
    nope = np.asarray(forward(fns.state, gapped, scrambled))
    np.testing.assert_array_equal(nope, np.asarray(forward(fns.state, gapped, np.zeros_like(scrambled))))
    assert np.abs(nope - full_logits).max() > 1e-3  # The default model does use ALiBi ...
    alibi_scrambled = np.asarray(fns.forward_masked(fns.state, gapped, mask, scrambled))
    assert np.abs(alibi_scrambled - full_logits).max() > 1e-3  # ... and reads the distances it is given.
    cfg.position_bias = "rope"
    with pytest.raises(ValueError, match="position_bias"):
        Gato(cfg, LAYOUT.padded_size, rngs=nnx.Rngs(0))


def test_causal_future_tokens_do_not_change_the_past(fns, gapped, full_logits):
    changed = gapped._replace(tokens=gapped.tokens.copy(), patches=gapped.patches.copy(),
                              modality=gapped.modality.copy())
    changed.tokens[:, 20:] = (changed.tokens[:, 20:] + 7) % LAYOUT.total_size
    changed.modality[:, 20] = Modality.IMAGE
    changed.patches[:, 20] = 255 - changed.patches[:, 20]
    logits = np.asarray(fns.forward(fns.state, changed))
    np.testing.assert_array_equal(logits[:, :20], full_logits[:, :20])
    assert np.abs(logits[0, 20] - full_logits[0, 20]).max() > 1e-3


def test_packed_segments_do_not_see_each_other(fns):
    seg = np.zeros((B, T), np.int32)
    seg[:, :16], seg[:, 16:28] = 1, 2
    packed = make_batch(seg, seed=2)
    alone = TokenSequence(*(np.concatenate([f[:, 16:], np.zeros_like(f[:, :16])], axis=1) for f in packed))
    alone = alone._replace(segment_ids=np.where(alone.segment_ids == 2, 1, 0).astype(np.int32))
    packed_logits = np.asarray(fns.forward(fns.state, packed))
    alone_logits = np.asarray(fns.forward(fns.state, alone))
    np.testing.assert_allclose(packed_logits[:, 16:28], alone_logits[:, :12], atol=1e-5, rtol=1e-5)
    assert np.isfinite(packed_logits).all()  # Padding rows attend to themselves: no NaN.


@pytest.mark.parametrize("preset, paper", [("gato_79m", 79e6), ("gato_364m", 364e6), ("gato_1_18b", 1.18e9)])
def test_parameter_counts_match_the_paper(preset, paper):
    n = count_params(configs.model_config(preset), VocabLayout().padded_size)
    assert abs(n - paper) / paper < 0.10, n


def test_flops_per_token_formula():
    cfg = configs.model_config("gato_79m")
    v, d = 34176, 768
    n = 8 * (4 * d * 768 + 2 * d * 3072) + v * d
    # Patch ResNet forward per patch: stem 4x4x3 -> 32 on a 4x4 grid, two 3x3 convs, projection 512 -> D.
    patch = 2 * 16 * 48 * 32 + 2 * (2 * 16 * 9 * 32 * 32) + 2 * 512 * d
    assert flops_per_token(cfg, 1024, v) == 6 * n + 12 * 8 * 768 * 1024 + 3 * patch
    sparse = flops_per_token(cfg, 1024, v, image_fraction=0.5, logits_fraction=0.25, patch_matmuls=True)
    patch_matmuls = 2 * 16 * 48 * 32 + 2 * (2 * 512 * 512) + 2 * 512 * d
    assert sparse == 6 * (n - 0.75 * v * d) + 12 * 8 * 768 * 1024 + 3 * 0.5 * patch_matmuls


def test_training_mode_samples_patch_positions(fns, gapped):
    train = jax.jit(lambda state, seq, key: nnx.merge(fns.graphdef, state)(seq, deterministic=False, rngs=key))
    a = np.asarray(train(fns.state, gapped, jax.random.key(0)))
    b = np.asarray(train(fns.state, gapped, jax.random.key(1)))
    assert np.isfinite(a).all()
    image = gapped.modality == Modality.IMAGE
    first_image = int(np.argmax(image[0]))
    np.testing.assert_allclose(a[0, :first_image], b[0, :first_image], atol=1e-6)  # Nothing random before.
    assert np.abs(a - b).max() > 1e-4


def test_bfloat16_and_remat_run_and_match_float32(fns, gapped, full_logits):
    cfg = configs.model_config("tiny")
    cfg.dtype, cfg.remat = "bfloat16", True
    graphdef, _ = abstract_model(cfg, LAYOUT.padded_size)
    state = fns.state  # Parameters stay float32: the same values serve every compute dtype.
    model = nnx.merge(graphdef, state)
    logits = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, gapped))
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    np.testing.assert_allclose(logits, full_logits, atol=0.15 * np.abs(full_logits).max())
    cache = model.init_cache(B, T)
    assert cache.keys.dtype == jnp.bfloat16
    step, _ = jax.jit(lambda s, x, c: nnx.merge(graphdef, s).decode(x, c))(state, take(gapped, slice(0, 8)), cache)
    np.testing.assert_allclose(np.asarray(step), full_logits[:, :8], atol=0.15 * np.abs(full_logits).max())


@pytest.mark.slow
def test_remat_gradients_equal_plain_gradients(fns, gapped):
    cfg = configs.model_config("tiny")
    cfg.remat = True
    graphdef, _ = abstract_model(cfg, LAYOUT.padded_size)
    state = fns.state

    def grads(gdef, params):
        loss = lambda p: jnp.mean(nnx.merge(gdef, p)(gapped) ** 2)
        return jax.jit(jax.grad(loss))(params)

    for a, b in zip(jax.tree.leaves(grads(graphdef, state)), jax.tree.leaves(grads(fns.graphdef, fns.state))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_dropout_is_on_only_in_training_mode():
    """With dropout_rate 0.5 a training-mode pass differs from the deterministic one, reproducibly per key;
    with 0 (or deterministic=True) it changes nothing. No image tokens, so the patch-position sampling of
    training mode plays no part."""
    batch = make_batch(np.ones((B, T), np.int32), seed=3)
    text_only = np.where(batch.modality == Modality.IMAGE, Modality.TEXT, batch.modality).astype(np.int32)
    batch = jax.tree.map(jnp.asarray, batch._replace(modality=text_only, patches=np.zeros_like(batch.patches)))
    outputs = {}
    for rate in (0.0, 0.5):
        cfg = configs.model_config("tiny")
        cfg.dropout_rate = rate
        graphdef, state = nnx.split(Gato(cfg, LAYOUT.padded_size, rngs=nnx.Rngs(0)))
        run = jax.jit(lambda s, seq, key, g=graphdef: nnx.merge(g, s)(seq, deterministic=False, rngs=key))
        det = jax.jit(lambda s, seq, g=graphdef: nnx.merge(g, s)(seq))
        outputs[rate] = [np.asarray(f) for f in (det(state, batch), run(state, batch, jax.random.key(1)),
                                                 run(state, batch, jax.random.key(1)),
                                                 run(state, batch, jax.random.key(2)))]
    off, on = outputs[0.0], outputs[0.5]
    np.testing.assert_allclose(off[1], off[0], atol=1e-5)  # Rate 0: training mode is the deterministic pass.
    np.testing.assert_allclose(on[0], off[0], atol=1e-5)  # Same weights: deterministic ignores the rate.
    np.testing.assert_array_equal(on[1], on[2])  # Same key, same mask.
    assert np.abs(on[1] - on[0]).mean() > 1e-3 and np.abs(on[1] - on[3]).mean() > 1e-3


@pytest.mark.parametrize(("patch_size", "stride", "warns"), [(40, 4, True), (40, 8, False), (16, 4, False)])
def test_a_patch_grid_too_wide_for_the_matmul_convs_is_warned_about(caplog, patch_size, stride, warns):
    """The CPU cliff: past MAX_DENSE_CONV_WIDTH the 3x3 convs stay XLA convolutions (~40x slower here)."""
    config = configs.model_config("tiny")
    config.patch_size, config.patch_stem_stride, config.resnet_channels = patch_size, stride, 32
    with caplog.at_level("WARNING", logger="gato_jax.model.embed"):
        nnx.eval_shape(lambda: PatchResNet(ModelDims.from_config(config), rngs=nnx.Rngs(0)))
    said = [r.getMessage() for r in caplog.records if r.name == "gato_jax.model.embed"]
    assert bool(said) == warns
    if warns:
        assert "raise model.patch_stem_stride (e.g. to 8)" in said[0] and "10x10 grid" in said[0]
