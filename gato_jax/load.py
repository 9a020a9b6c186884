"""Load a checkpoint for acting and sampling: model, config, vocabulary, task specs and tokenizer.

Everything comes from the checkpoint alone (its metadata holds the layout, the config, the task specs
and the SentencePiece model), so a rollout or a sampler can never decode ids with another vocabulary.
The parameters are restored onto one device: acting and sampling run one small batch at a time.

Only the shapes of the train state are built (`jax.eval_shape`), never its values: `state.build`
would first initialise a random model and optimizer (seconds of compiles even for the tiny preset)
only for the restore to overwrite them.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gato_jax import sharding as sharding_lib
from gato_jax.model import Gato, abstract_model
from gato_jax.tokenizers.spec import TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout
from gato_jax.train.checkpoint import Checkpointer, CheckpointError
from gato_jax.train.optim import make_optimizer
from gato_jax.train.state import TrainState

REQUIRED_META = ("layout", "config")  # Without these a checkpoint cannot be decoded at all.
RETRAIN = ("it was written by another version of gato_jax or with another vocabulary; retrain, or load the "
           "checkpoint that matches")
CORRUPT = "it is incomplete or corrupt: delete that step or pass --step"

__all__ = ["CheckpointError", "Loaded", "load_checkpoint", "one_device_mesh"]


class Loaded(NamedTuple):
    """A restored checkpoint, ready to act and sample."""

    model: Gato  # Bound to the restored parameters, on one device.
    config: ml_collections.ConfigDict  # The training config, as saved.
    layout: VocabLayout
    task_specs: dict[str, TaskSpec]  # Control tasks the model trained on, by name.
    tokenizer: TextTokenizer | None  # None when the mixture had no text or captions.
    step: int  # The checkpoint's step (optimizer steps taken).
    meta: dict  # The raw metadata (data_dir, mixture, ...).


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _unreadable(where: str, what: str, err: BaseException, fix: str = RETRAIN) -> CheckpointError:
    """The one-line error for a part of a checkpoint that cannot be read."""
    return CheckpointError(f"Checkpoint in {where} has an unreadable {what} ({_one_line(err)}); {fix}.")


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def one_device_mesh() -> jax.sharding.Mesh:
    """A (1, 1, 1) mesh on the first device."""
    sizes = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    return sharding_lib.make_mesh(sizes, devices=jax.devices()[:1])


def _read_meta(checkpointer: Checkpointer, step: int | None) -> dict:
    try:
        meta = checkpointer.restore_meta(step)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - orbax raises many kinds on a half-written step.
        raise _unreadable(checkpointer.directory, "metadata", err, CORRUPT) from err
    missing = [key for key in REQUIRED_META if not meta or key not in meta]
    if missing:
        raise CheckpointError(f"Checkpoint in {checkpointer.directory} lacks metadata {missing}; {RETRAIN}.")
    return meta


def _config(meta: dict, where: str) -> ml_collections.ConfigDict:
    try:
        return ml_collections.ConfigDict(json.loads(meta["config"]))
    except (TypeError, ValueError) as err:
        raise _unreadable(where, "config", err) from err


def _tokenizer(meta: dict, where: str) -> TextTokenizer | None:
    blob = meta.get("text_tokenizer")
    if not blob:
        return None
    try:
        return TextTokenizer.from_proto_bytes(base64.b64decode(blob))
    except (binascii.Error, RuntimeError, ValueError) as err:
        raise _unreadable(where, "tokenizer", err) from err


def _task_specs(meta: dict, where: str) -> dict[str, TaskSpec]:
    try:
        return {name: TaskSpec.from_json(spec if isinstance(spec, str) else json.dumps(spec))
                for name, spec in (meta.get("task_specs") or {}).items()}
    except (KeyError, TypeError, ValueError) as err:
        raise _unreadable(where, "task spec", err) from err


def check_vocabulary(layout: VocabLayout, config: ml_collections.ConfigDict, tokenizer: TextTokenizer | None,
                     where: str, expected: VocabLayout | None = None) -> None:
    """The saved layout must agree with the saved config, the saved tokenizer and (if given) the caller's."""
    from_config = (config.vocab.text_size, config.vocab.num_continuous_bins, config.vocab.num_discrete)
    if from_config != (layout.text_size, layout.num_continuous_bins, layout.num_discrete):
        raise CheckpointError(f"Checkpoint in {where}: its vocabulary {layout} disagrees with its config.vocab "
                              f"{dict(config.vocab)}; {RETRAIN}.")
    if tokenizer is not None and tokenizer.vocab_size != layout.text_size:
        raise CheckpointError(f"Checkpoint in {where}: its tokenizer has {tokenizer.vocab_size} pieces but its "
                              f"vocabulary reserves text_size={layout.text_size}; {RETRAIN}.")
    if expected is not None and expected != layout:
        raise CheckpointError(f"Checkpoint in {where} uses vocabulary {layout}, but this config expects {expected}; "
                              "evaluate with the config the checkpoint was trained with (or retrain).")


def abstract_train_state(config: ml_collections.ConfigDict, vocab_size: int, mesh: jax.sharding.Mesh):
    """(graphdef, rest, TrainState of ShapeDtypeStructs replicated on `mesh`): what a restore fills."""
    graphdef, state = abstract_model(config.model, vocab_size, config.seed)
    graphdef, params, rest = nnx.split(nnx.merge(graphdef, state), nnx.Param, ...)
    tx = make_optimizer(config.optimizer, config.num_train_steps)
    abstract = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(tx.init, params),
                          jax.ShapeDtypeStruct((2,), jnp.uint32))
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    return graphdef, rest, abstract


def _restore(checkpointer: Checkpointer, abstract: Any, step: int | None) -> Any:
    try:
        state, _, _ = checkpointer.restore(abstract, step)
    except CheckpointError as err:
        raise CheckpointError(f"Checkpoint in {checkpointer.directory} does not fit the model its own config describes "
                              f"({_one_line(err.__cause__ or err)}); {RETRAIN}.") from err
    except Exception as err:  # noqa: BLE001 - orbax: missing or truncated array files.
        raise _unreadable(checkpointer.directory, "train state", err, CORRUPT) from err
    return state


def load_checkpoint(workdir_or_path: str, step: int | None = None, *,
                    expected_layout: VocabLayout | None = None) -> Loaded:
    """Restores a checkpoint (the latest, or `step`) from a workdir or its checkpoints/ directory.

    Raises CheckpointError, with one line that names the fix, when the checkpoint is missing,
    half-written, or incompatible (metadata missing, vocabulary disagreeing with itself or with
    `expected_layout`).
    """
    with _quiet_absl():  # orbax announces read-only mode with three warnings per load.
        checkpointer = Checkpointer(workdir_or_path, read_only=True)
    try:
        where = checkpointer.directory
        meta = _read_meta(checkpointer, step)
        config, tokenizer = _config(meta, where), _tokenizer(meta, where)
        try:
            layout = VocabLayout.from_json(meta["layout"])
        except (TypeError, ValueError) as err:
            raise _unreadable(where, "layout", err) from err
        check_vocabulary(layout, config, tokenizer, where, expected_layout)
        graphdef, rest, abstract = abstract_train_state(config, layout.padded_size, one_device_mesh())
        state = _restore(checkpointer, abstract, step)
        model = nnx.merge(graphdef, state.params, rest)
        step = checkpointer.latest_step() if step is None else step
        return Loaded(model, config, layout, _task_specs(meta, where), tokenizer, int(step), dict(meta))
    finally:
        checkpointer.close()
