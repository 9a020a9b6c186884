"""Load a checkpoint for acting and sampling: model, config, vocabulary, task specs and tokenizer.

Everything comes from the checkpoint alone (its `CheckpointMeta` holds the layout, the config, the task
specs and the SentencePiece model), so a rollout or a sampler can never decode ids with another
vocabulary. Only the parameters are restored, onto one device: no optimizer is built and no optimizer
state is read (acting and sampling run one small batch at a time). A damaged newest step is reported
in one line and the step before it used.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import ml_collections
from flax import nnx

from gato_jax import sharding as sharding_lib
from gato_jax.model.build import Model, abstract_params
from gato_jax.model.prismer import PrismerGato, load_frozen_experts
from gato_jax.tokenizers.spec import TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train.checkpoint import RETRAIN, Checkpointer, CheckpointError, CheckpointMeta

__all__ = ["CheckpointError", "Loaded", "load_checkpoint", "one_device_mesh", "read_meta"]


class Loaded(NamedTuple):
    """A restored checkpoint, ready to act and sample."""

    model: Model  # Gato or PrismerGato (`model.kind`), bound to the restored parameters, on one device.
    config: ml_collections.ConfigDict  # The training config, as saved.
    layout: VocabLayout
    task_specs: dict[str, TaskSpec]  # Control tasks the model trained on, by name.
    tokenizer: TextTokenizer | None  # None when the mixture had no text or captions.
    step: int  # The checkpoint's step (optimizer steps taken).
    meta: CheckpointMeta | None = None  # Everything the checkpoint carried besides arrays.


def one_device_mesh() -> jax.sharding.Mesh:
    """A (1, 1, 1) mesh on the first device."""
    sizes = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    return sharding_lib.make_mesh(sizes, devices=jax.devices()[:1])


def check_vocabulary(meta: CheckpointMeta, where: str, expected: VocabLayout | None = None) -> None:
    """The saved layout must agree with the saved config, the saved tokenizer and (if given) the caller's."""
    layout, config, tokenizer = meta.layout, meta.config, meta.tokenizer
    if VocabLayout.from_config(config) != VocabLayout(layout.text_size, layout.num_continuous_bins,
                                                      layout.num_discrete):
        raise CheckpointError(f"Checkpoint in {where}: its vocabulary {layout} disagrees with its config.vocab "
                              f"{dict(config.vocab)}; {RETRAIN}.")
    if tokenizer is not None and tokenizer.vocab_size != layout.text_size:
        raise CheckpointError(f"Checkpoint in {where}: its tokenizer has {tokenizer.vocab_size} pieces but its "
                              f"vocabulary reserves text_size={layout.text_size}; {RETRAIN}.")
    if expected is not None and expected != layout:
        raise CheckpointError(f"Checkpoint in {where} uses vocabulary {layout}, but this config expects {expected}; "
                              "evaluate with the config the checkpoint was trained with (or retrain).")


def read_meta(workdir_or_path: str, step: int | None = None, *,
              expected_layout: VocabLayout | None = None) -> CheckpointMeta:
    """The metadata alone (no array is read), checked as `load_checkpoint` checks it: what an entry point
    looks at before it commits to loading."""
    checkpointer = Checkpointer(workdir_or_path, read_only=True)
    try:
        meta = checkpointer.restore_meta(step)
        check_vocabulary(meta, checkpointer.directory, expected_layout)
        return meta
    finally:
        checkpointer.close()


def checkpoint_steps(workdir_or_path: str) -> list[int]:
    """Every complete checkpoint's step in a workdir, ascending; [] when the checkpoints folder is empty
    (CheckpointError when there is no such folder)."""
    checkpointer = Checkpointer(workdir_or_path, read_only=True)
    try:
        return checkpointer.all_steps()
    finally:
        checkpointer.close()


def load_checkpoint(workdir_or_path: str, step: int | None = None, *,
                    expected_layout: VocabLayout | None = None) -> Loaded:
    """Restores the parameters of a checkpoint (the latest readable one, or `step`) from a workdir or its
    checkpoints/ directory.

    Raises CheckpointError, with one line that names the fix, when the checkpoint is missing, damaged
    (and no earlier step reads), or incompatible (metadata of a newer version, a vocabulary disagreeing
    with itself or with `expected_layout`).
    """
    checkpointer = Checkpointer(workdir_or_path, read_only=True)
    try:
        where = checkpointer.directory
        meta = checkpointer.restore_meta(step)
        check_vocabulary(meta, where, expected_layout)
        graphdef, abstract, rest = abstract_params(meta.config.model, meta.layout.padded_size, one_device_mesh(),
                                                   seed=int(meta.config.get("seed", 0)), replicated=True)
        params, meta, step = checkpointer.restore_params(abstract, step)
        model = nnx.merge(graphdef, params, rest)
        if isinstance(model, PrismerGato):  # Frozen experts are not in the checkpoint: read from their dir.
            load_frozen_experts(model, str(meta.config.model.prismer.shape_expert_dir))
        return Loaded(model, meta.config, meta.layout, dict(meta.task_specs), meta.tokenizer, int(step), meta)
    finally:
        checkpointer.close()
