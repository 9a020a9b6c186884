"""The sparse train path equals the plain one: gathered logits and loss, gathered patch ResNet, its
convolutions as matrices, the unrolled layer scan; and a batch over every cap still counts every target.

Array key: B = batch, T = tokens, D = d_model, N = B*T.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_test import B, T, make_batch, one_segment_with_gaps

from gato_jax.model import sparse
from gato_jax.tokenizers.sequence import Modality
from gato_jax.train.loss import loss_at_targets, next_token_loss

N = B * T


def test_caps_from_fractions_round_up_and_drop_the_full_size():
    assert sparse.caps_from_fractions((0.25, 0.1, 1.0, 0.1), 64) == (8, 16)
    assert sparse.caps_from_fractions((), 64) == ()


@pytest.mark.parametrize("caps", [(4, 16), (2,)], ids=["fits", "over_every_cap"])
def test_at_masked_positions_equals_dense_values_and_gradients(caps):
    mask_N = jnp.asarray(np.arange(20) % 3 == 0)  # 7 set positions.
    x_N = jnp.linspace(-1.0, 1.0, 20)

    def loss(x_N):
        def gathered(idx_K, valid_K):
            return jnp.sum(jnp.where(valid_K, jnp.sin(x_N.at[idx_K].get(mode="fill", fill_value=0)), 0.0))

        return sparse.at_masked_positions(mask_N, caps, gathered, lambda: jnp.sum(jnp.where(mask_N, jnp.sin(x_N), 0)))

    dense = lambda x_N: jnp.sum(jnp.where(mask_N, jnp.sin(x_N), 0.0))  # noqa: E731
    np.testing.assert_allclose(jax.jit(loss)(x_N), dense(x_N), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x_N), jax.grad(dense)(x_N), rtol=1e-6)


def test_patch_resnet_as_matmuls_equals_its_convolutions(fns, gapped):
    patch = fns.model.embed.patch
    conv = jax.jit(lambda p: patch(p))(gapped.patches)
    matmul = jax.jit(lambda p: patch(p, as_matmuls=True))(gapped.patches)
    np.testing.assert_allclose(np.asarray(matmul), np.asarray(conv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("caps", [(8, N // 2), (8,)], ids=["fits", "over_every_cap"])
def test_patch_encoder_on_gathered_image_tokens_equals_all_tokens(fns, gapped, caps):
    assert 8 < int((gapped.modality == Modality.IMAGE).sum()) <= N // 2
    embed = lambda state, seq, caps: nnx.merge(fns.graphdef, state).embed(seq, image_caps=caps)  # noqa: E731
    everywhere = np.asarray(jax.jit(embed, static_argnums=2)(fns.state, gapped, None))
    gathered = np.asarray(jax.jit(embed, static_argnums=2)(fns.state, gapped, caps))
    np.testing.assert_allclose(gathered, everywhere, rtol=1e-5, atol=1e-5)


def test_unrolled_layers_equal_the_scan(fns, gapped):
    hidden = lambda state, seq, unroll: nnx.merge(fns.graphdef, state).hidden(seq, unroll=unroll)  # noqa: E731
    scanned = jax.jit(hidden, static_argnums=2)(fns.state, gapped, 1)
    unrolled = jax.jit(hidden, static_argnums=2)(fns.state, gapped, 0)
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(scanned), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("caps", [(8, N // 2), (8,)], ids=["fits", "over_every_cap"])
def test_logits_at_loss_positions_equal_full_logits(fns, caps):
    seq = make_batch(one_segment_with_gaps(), seed=3)
    targets = int(seq.loss_mask[:, 1:].sum())
    seq = seq._replace(loss_mask=seq.loss_mask & (np.arange(T) % 2 == 0))  # About a quarter are targets.
    assert 8 < int(seq.loss_mask[:, 1:].sum()) <= N // 2 and targets > 8
    hidden_BxTxD = nnx.merge(fns.graphdef, fns.state).hidden(seq)

    def plain(h):
        return next_token_loss(nnx.merge(fns.graphdef, fns.state).logits(h), seq)

    def gathered(h):
        return loss_at_targets(h, nnx.merge(fns.graphdef, fns.state).logits, seq, caps)

    (loss_p, metrics_p), grad_p = jax.jit(jax.value_and_grad(plain, has_aux=True))(hidden_BxTxD)
    (loss_g, metrics_g), grad_g = jax.jit(jax.value_and_grad(gathered, has_aux=True))(hidden_BxTxD)
    np.testing.assert_allclose(float(loss_g), float(loss_p), rtol=1e-6)
    assert metrics_g.keys() == metrics_p.keys()
    for name in metrics_p:
        np.testing.assert_allclose(np.asarray(metrics_g[name]), np.asarray(metrics_p[name]), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(grad_g), np.asarray(grad_p), rtol=1e-5, atol=1e-7)


def test_step_flops_count_what_each_path_runs():
    """MFU's numerator: the plain path pays logits and ResNet everywhere; the sparse one at its chosen cap."""
    from gato_jax import configs
    from gato_jax.model.cost import flops_per_token
    from gato_jax.train.mfu import step_flops

    config = configs.cpu_experiment_config()
    config.train.loss_position_caps, config.train.image_position_caps = (0.25,), (0.5, 0.9375)
    b, t, v = 2, 64, 3072
    modality = np.full((b, t), Modality.IMAGE, np.int32)
    modality[:, ::8] = Modality.DISCRETE  # 87.5% image tokens, 1 target in 8 positions.
    batch = make_batch(np.ones((b, t), np.int32))._replace(modality=modality, loss_mask=modality == Modality.DISCRETE,
                                      tokens=np.zeros((b, t), np.int32))
    config.train.sparse = False
    plain = step_flops(config, v, batch)
    assert plain == pytest.approx(b * t * flops_per_token(config.model, config.seq_len, v))
    config.train.sparse = True
    want = b * t * flops_per_token(config.model, config.seq_len, v, image_fraction=0.9375, logits_fraction=0.25,
                                   patch_matmuls=True)
    assert step_flops(config, v, batch) == pytest.approx(want) and want < plain
    config.model.image_encoder, config.model.resampler_tokens = "resampler", 1
    local_pos = np.where(modality == Modality.IMAGE, (np.arange(t) % 8 - 1)[None], -1)  # 8 images of 7 per row.
    batch = batch._replace(local_pos=local_pos.astype(np.int32), segment_ids=np.ones((b, t), np.int32))
    gathered = b * t * flops_per_token(config.model, config.seq_len, v, image_fraction=0.9375, logits_fraction=0.25,
                                       patch_matmuls=True, latent_fraction=8 / 64)  # The row cap of 8 holds 8.
    everywhere = b * t * flops_per_token(config.model, config.seq_len, v, image_fraction=0.9375,
                                         logits_fraction=0.25, patch_matmuls=True)
    assert step_flops(config, v, batch) == pytest.approx(gathered) and gathered < everywhere
    config.model.resampler_tokens = 2  # 16 outputs a row: the next row cap, 32.
    assert step_flops(config, v, batch) == pytest.approx(b * t * flops_per_token(
        config.model, config.seq_len, v, image_fraction=0.9375, logits_fraction=0.25, patch_matmuls=True,
        latent_fraction=32 / 64))


FITS = [[0, 1, 1, 1, 0, 2, 2, 2, 2, 0, 0, 3, 0, 4, 4, 0],  # Spans of 3, 4, 1 (fewer patches than K) and 2.
        [5, 5, 5, 6, 6, 6, 0, 7, 7, 7, 0, 0, 0, 0, 0, 8]]  # A span at the row's end.
OVER_CAP = [FITS[0], [5, 5, 5, 6, 6, 6, 0, 7, 7, 7, 8, 8, 8, 9, 9, 9]]  # 10 outputs at K = 2: over the cap of 8.


@pytest.mark.parametrize(("tokens", "spans"), [(1, FITS), (2, FITS), (2, OVER_CAP)],
                         ids=["k1", "k2", "k2_over_the_cap"])
def test_resampler_at_its_outputs_only_equals_every_position(tokens, spans):
    """The sparse path's resampler (each row's outputs gathered under a cap of 8 in a 16-token row) against
    the plain one: the same outputs, and gradients for the patches and every parameter; a batch with a row
    over the cap runs the dense fallback."""
    from gato_jax import configs
    from gato_jax.model.layers import ModelDims
    from gato_jax.model.resampler import ROW_CAP_FRACTIONS, PerceiverResampler

    assert sparse.caps_from_fractions(ROW_CAP_FRACTIONS, 16) == (8,)
    config = configs.model_config("tiny")
    config.image_encoder, config.resampler_tokens, config.resampler_layers = "resampler", tokens, 2
    graphdef, params = nnx.split(PerceiverResampler(ModelDims.from_config(config), rngs=nnx.Rngs(0)))
    spans_BxT = jnp.asarray(spans)
    patches_BxTxD = jax.random.normal(jax.random.key(1), (*spans_BxT.shape, config.d_model))

    def total(patches_BxTxD, params, gathered):
        out_BxTxD = nnx.merge(graphdef, params)(patches_BxTxD, spans_BxT, gathered=gathered)
        return jnp.sum(jnp.sin(out_BxTxD)), out_BxTxD

    run = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True), static_argnums=2)
    (_, plain), plain_grads = run(patches_BxTxD, params, False)
    (_, fast), fast_grads = run(patches_BxTxD, params, True)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(plain_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
