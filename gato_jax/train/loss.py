"""Masked next-token cross-entropy and the metrics split by modality.

Array key: B = batch, T = sequence length, V = vocabulary (padded), D = d_model, N = B*T positions,
K = positions gathered (a static cap).
Logits at position t predict token t+1; a target counts where `loss_mask[t+1]` is True.
Metrics are returned as (sum, count) pairs so they average correctly over steps and devices.

`next_token_loss` takes full logits; `loss_at_targets` takes the model's last hidden stream and computes
logits only at the positions a target follows (1 in 27 tokens of an Atari timestep), gathered up to a
static cap (`gato_jax.model.sparse`), with the full logits as the fallback when no cap holds them: the
same loss and metrics, without the [N, V] logits no target needs.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gato_jax.model import sparse
from gato_jax.tokenizers.sequence import Modality, TokenSequence

# Metric groups: name -> modalities whose loss-masked targets fall in it.
METRIC_GROUPS = {
    "text": (Modality.TEXT, Modality.SPECIAL),
    "discrete_action": (Modality.DISCRETE,),
    "continuous_action": (Modality.CONTINUOUS,),
}


def shifted_targets(seq: TokenSequence):
    """Targets, their weights and modalities aligned with logits[:, :-1]."""
    return seq.tokens[:, 1:], seq.loss_mask[:, 1:].astype(jnp.float32), seq.modality[:, 1:]


def token_nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood in float32."""
    logits = logits_BxTxV.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    return log_z - target_logit


def next_token_loss(logits_BxTxV: jax.Array, seq: TokenSequence) -> tuple[jax.Array, dict]:
    """Mean NLL over loss-masked targets, and (sum, count) metrics per modality group."""
    targets, weight, modality = shifted_targets(seq)
    logits = logits_BxTxV[:, :-1]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return _loss_and_metrics(token_nll(logits, targets), correct, weight, modality)


def _loss_and_metrics(nll: jax.Array, correct: jax.Array, weight: jax.Array,
                      modality: jax.Array) -> tuple[jax.Array, dict]:
    """Loss and (sum, count) metrics from per-target NLL, correctness, weight and modality (any shape)."""
    total = jnp.sum(weight)
    loss = jnp.sum(nll * weight) / jnp.maximum(total, 1.0)
    metrics = {"loss": (jnp.sum(nll * weight), total)}
    for name, modalities in METRIC_GROUPS.items():
        in_group = weight * jnp.isin(modality, jnp.asarray(modalities, modality.dtype))
        metrics[f"loss_{name}"] = (jnp.sum(nll * in_group), jnp.sum(in_group))
        if name.endswith("action"):
            metrics[f"accuracy_{name}"] = (jnp.sum(correct * in_group), jnp.sum(in_group))
    is_action = weight * jnp.isin(modality, jnp.asarray((Modality.DISCRETE, Modality.CONTINUOUS), modality.dtype))
    metrics["accuracy_action"] = (jnp.sum(correct * is_action), jnp.sum(is_action))
    return loss, metrics


def _targets_at_positions(seq: TokenSequence) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Target id, weight and modality of the token after each position, flattened to [N] (0 after the last)."""
    def shift_N(x_BxT: jax.Array) -> jax.Array:
        return jnp.concatenate([x_BxT[:, 1:], jnp.zeros_like(x_BxT[:, :1])], axis=1).reshape(-1)

    return shift_N(seq.tokens), shift_N(seq.loss_mask.astype(jnp.float32)), shift_N(seq.modality)


def loss_at_targets(hidden_BxTxD: jax.Array, logits_fn: Callable[[jax.Array], jax.Array], seq: TokenSequence,
                    caps: tuple[int, ...]) -> tuple[jax.Array, dict]:
    """`next_token_loss(logits_fn(hidden_BxTxD), seq)`, computing logits only where a target follows.

    `logits_fn` maps a stream [b, t, D] to float32 logits [b, t, V] (`Gato.logits`). `caps` (static,
    ascending) bound how many positions are gathered; when no cap holds them all, full logits are used.
    """
    b, t, d = hidden_BxTxD.shape
    hidden_NxD = hidden_BxTxD.reshape(b * t, d)
    targets_N, weight_N, modality_N = _targets_at_positions(seq)

    def gathered(idx_K: jax.Array, valid_K: jax.Array) -> tuple[jax.Array, dict]:
        del valid_K  # Fill indices gather weight 0.
        take = lambda x: x.at[idx_K].get(mode="fill", fill_value=0)  # noqa: E731
        logits_KxV = logits_fn(take(hidden_NxD)[None])[0]
        targets_K = take(targets_N)
        correct_K = (jnp.argmax(logits_KxV, axis=-1) == targets_K).astype(jnp.float32)
        return _loss_and_metrics(token_nll(logits_KxV, targets_K), correct_K, take(weight_N), take(modality_N))

    def everywhere() -> tuple[jax.Array, dict]:
        return next_token_loss(logits_fn(hidden_BxTxD), seq)

    # Rematerialised: each cap's [K, V] residuals would otherwise be written as zeros whenever another
    # cap runs; recomputing the gathered logits costs less.
    return sparse.at_masked_positions(weight_N > 0, caps, gathered, everywhere, remat_sparse=True)


def reduce_metrics(metric_pairs: dict) -> dict[str, float]:
    """(sum, count) pairs -> plain averages; groups with no targets are left out."""
    out = {}
    for name, (total, count) in metric_pairs.items():
        if float(count) > 0:
            out[name] = float(total) / float(count)
    return out
