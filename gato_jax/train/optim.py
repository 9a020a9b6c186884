"""The optimizer of docs/TOKEN_FORMAT.md ("Training"): AdamW with linear warm-up then cosine decay, clipped."""
from __future__ import annotations

import jax
import ml_collections
import optax


def make_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """Linear warm-up from init_lr to peak_lr, then cosine decay by decay_factor over the remaining steps."""
    warmup_steps = max(0, min(int(opt.warmup_steps), num_train_steps - 1))
    decay_steps = max(1, num_train_steps - warmup_steps)
    cosine = optax.cosine_decay_schedule(opt.peak_lr, decay_steps, alpha=1.0 / opt.decay_factor)
    if warmup_steps == 0:
        return cosine
    warmup = optax.linear_schedule(opt.init_lr, opt.peak_lr, warmup_steps)
    return optax.join_schedules([warmup, cosine], [warmup_steps])


# Norm scales, biases and the smeared-key gate logits: decaying them toward 0 only hurts (a gate's logit
# decays toward an even mix, 0.5, which is not a prior worth paying for).
NO_DECAY_NAMES = ("bias", "scale", "smear_logit_H")


def decay_mask(params):
    """True for kernels and embeddings. Decided by name, not rank: stacked (scanned) blocks give even
    a LayerNorm scale a leading layer axis."""
    def decays(path, _) -> bool:
        names = {getattr(key, "key", getattr(key, "name", None)) for key in path}
        return not names & set(NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW(b1, b2, eps, weight_decay) on the schedule."""
    return optax.chain(
        optax.clip_by_global_norm(opt.grad_clip),
        optax.adamw(make_schedule(opt, num_train_steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                    weight_decay=opt.weight_decay, mask=decay_mask),
    )
