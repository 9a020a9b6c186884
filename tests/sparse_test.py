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
