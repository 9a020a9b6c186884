"""Masked next-token cross-entropy and the metrics split by modality.

Array key: B = batch, T = sequence length, V = vocabulary (padded).
Logits at position t predict token t+1; a target counts where `loss_mask[t+1]` is True.
Metrics are returned as (sum, count) pairs so they average correctly over steps and devices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

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
    nll = token_nll(logits, targets)
    total = jnp.sum(weight)
    loss = jnp.sum(nll * weight) / jnp.maximum(total, 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    metrics = {"loss": (jnp.sum(nll * weight), total)}
    for name, modalities in METRIC_GROUPS.items():
        in_group = weight * jnp.isin(modality, jnp.asarray(modalities, modality.dtype))
        metrics[f"loss_{name}"] = (jnp.sum(nll * in_group), jnp.sum(in_group))
        if name.endswith("action"):
            metrics[f"accuracy_{name}"] = (jnp.sum(correct * in_group), jnp.sum(in_group))
    is_action = weight * jnp.isin(modality, jnp.asarray((Modality.DISCRETE, Modality.CONTINUOUS), modality.dtype))
    metrics["accuracy_action"] = (jnp.sum(correct * is_action), jnp.sum(is_action))
    return loss, metrics


def reduce_metrics(metric_pairs: dict) -> dict[str, float]:
    """(sum, count) pairs -> plain averages; groups with no targets are left out."""
    out = {}
    for name, (total, count) in metric_pairs.items():
        if float(count) > 0:
            out[name] = float(total) / float(count)
    return out
