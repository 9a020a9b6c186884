"""Orbax checkpoints: one directory per step with the train state, the data-iterator state and metadata.

Metadata (`CheckpointMeta`: vocabulary layout, config, task specs, the SentencePiece model) makes a
checkpoint enough to resume, act or sample with nothing else. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-save leaves the previous checkpoint as the
latest. A step that is there but cannot be read (a file truncated or lost after the save) is skipped
with one warning line: restoring without an explicit step falls back to the newest step that reads, and
a training run moves the broken step aside (`BROKEN_DIR`, never deleted) before it saves again.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import orbax.checkpoint as ocp

from gato_jax.errors import GatoError
from gato_jax.tokenizers.spec import TaskSpec
from gato_jax.tokenizers.text import TextTokenizer
from gato_jax.tokenizers.vocab import VocabLayout

CHECKPOINT_DIR = "checkpoints"
BROKEN_DIR = "checkpoints_unreadable"  # Beside CHECKPOINT_DIR: steps that failed to restore, kept for a look.
META_VERSION = 1  # 0: the JSON-strings-in-a-dict metadata written before `CheckpointMeta` (still read).
RETRAIN = "retrain, or pass the --workdir (or --step) of a checkpoint made with this config"

_LOG = logging.getLogger(__name__)
T = TypeVar("T")


class CheckpointError(GatoError, RuntimeError):
    """A checkpoint is missing, incomplete or incompatible; the message says what to do."""

    newer_version = False  # Metadata written by a newer gato_jax: no older step will read better.


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """Everything besides the arrays that a checkpoint needs to be resumed, acted or sampled from alone."""

    layout: VocabLayout
    config: ml_collections.ConfigDict  # The training config, as run.
    task_specs: dict[str, TaskSpec] = dataclasses.field(default_factory=dict)  # Control tasks, by name.
    tokenizer: TextTokenizer | None = None  # None when the mixture had no text or captions.
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # JSON-able: mixture, dataset dirs.
    version: int = META_VERSION

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the tokenizer as base64 of its model proto)."""
        blob = self.tokenizer.model_proto_bytes() if self.tokenizer is not None else None
        return {"version": self.version, "layout": json.loads(self.layout.to_json()),
                "config": json.loads(self.config.to_json()),
                "task_specs": {name: json.loads(spec.to_json()) for name, spec in self.task_specs.items()},
                "tokenizer": base64.b64encode(blob).decode("ascii") if blob else None, "data": dict(self.data)}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str) -> CheckpointMeta:
        """Reads either version; CheckpointError (one line, with the fix) for a newer version or a bad field."""
        version = int(raw.get("version", 0)) if isinstance(raw, dict) else -1
        if version < 0 or version > META_VERSION:
            error = CheckpointError(f"Checkpoint in {where} has metadata version {version}; this gato_jax reads "
                                    f"versions 0-{META_VERSION}: update gato_jax, or {RETRAIN}.")
            error.newer_version = True
            raise error
        missing = [k for k in ("layout", "config") if raw.get(k) is None]
        if missing:
            raise CheckpointError(f"Checkpoint in {where} lacks metadata {missing}; {RETRAIN}.")
        as_text = lambda x: x if isinstance(x, str) else json.dumps(x)
        layout = _read(where, "vocabulary layout", lambda: VocabLayout.from_json(as_text(raw["layout"])))
        config = _read(where, "config", lambda: ml_collections.ConfigDict(json.loads(as_text(raw["config"]))))
        specs = _read(where, "task spec", lambda: {name: TaskSpec.from_json(as_text(spec))
                                                   for name, spec in (raw.get("task_specs") or {}).items()})
        blob = raw.get("tokenizer") if version else raw.get("text_tokenizer")
        tokenizer = _read(where, "tokenizer", lambda: TextTokenizer.from_proto_bytes(base64.b64decode(blob))
                          if blob else None)
        data = dict(raw.get("data") or {}) if version else {k: raw[k] for k in ("mixture", "data_dir") if k in raw}
        return cls(layout, config, specs, tokenizer, data, version)


def _read(where: str, what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - JSON, ConfigDict, TaskSpec and SentencePiece raise their own kinds.
        raise CheckpointError(f"Checkpoint in {where} has an unreadable {what} ({_one_line(err)}); {RETRAIN}.") from err


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def checkpoint_root(workdir: str) -> str:
    """Accepts a workdir (holding checkpoints/) or the checkpoints directory itself."""
    workdir = os.path.abspath(workdir)
    if os.path.basename(workdir.rstrip("/")) == CHECKPOINT_DIR:
        return workdir
    return os.path.join(workdir, CHECKPOINT_DIR)


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds at least one finished step (cheap: no orbax, no reading)."""
    root = checkpoint_root(workdir)
    return os.path.isdir(root) and any(name.isdigit() for name in os.listdir(root))


class Checkpointer:
    """Saves and restores (train state, data-iterator state, metadata) together."""

    def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_root(workdir)
        self.read_only = read_only
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"No checkpoints under {self.directory}; train first (make train EXP=...) or pass "
                                  "the right --workdir.")
        with _quiet_absl() if read_only else contextlib.nullcontext():  # Read-only mode: three warnings.
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
                enable_async_checkpointing=False)
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete checkpoint's step, ascending."""
        return sorted(int(s) for s in self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict | None, meta: CheckpointMeta) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta.to_json()),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, CheckpointMeta, int]:
        """(state, data-iterator state, metadata, step) restored onto the shardings in `abstract_state` (any
        mesh shape); the latest readable step unless `step` is given."""
        def read(s: int):
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                      meta=ocp.args.JsonRestore())
            restored = self.manager.restore(s, args=args)
            return restored["state"], restored["data"], CheckpointMeta.from_json(restored["meta"], self.directory)

        state, data, meta, step = self._first_readable(step, read)
        return state, data, meta, step

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, CheckpointMeta, int]:
        """(parameters, metadata, step): the parameters alone, no optimizer state (acting, sampling)."""
        def read(s: int):
            restore_args = _restore_args(abstract_params)
            args = ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                             restore_args={"params": restore_args}, partial_restore=True),
                meta=ocp.args.JsonRestore())
            restored = self.manager.restore(s, args=args)
            return restored["state"]["params"], CheckpointMeta.from_json(restored["meta"], self.directory)

        params, meta, step = self._first_readable(step, read)
        return params, meta, step

    def restore_meta(self, step: int | None = None) -> CheckpointMeta:
        """Only the metadata: enough to rebuild the model and tokenizers before restoring weights."""
        return self.restore_meta_and_step(step)[0]

    def restore_meta_and_step(self, step: int | None = None) -> tuple[CheckpointMeta, int]:
        """`restore_meta` and the step it read: the newest readable one when `step` is None (where a run resumes)."""
        def read(s: int):
            restored = self.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return (CheckpointMeta.from_json(restored["meta"], self.directory),)

        meta, found = self._first_readable(step, read)
        return meta, found

    def _first_readable(self, step: int | None, read: Callable[[int], tuple]) -> tuple:
        """read(step) for the given step, or for the newest step that reads. Newer steps that did not read
        are reported in one line each and, once an older one has read, moved to BROKEN_DIR (when writable)
        so the next save does not meet them; when no step reads, nothing is moved and the newest step's
        error is raised (a model mismatch fails on every step alike)."""
        if step is not None:
            if step not in self.manager.all_steps():
                raise CheckpointError(f"No complete checkpoint at step {step} in {self.directory} (it has "
                                      f"{sorted(self.manager.all_steps())}); pass one of those to --step.")
            return (*self._read(step, read), step)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"No complete checkpoint in {self.directory}; train first (make train EXP=...) or "
                                  "pass the right --workdir.")
        broken: list[tuple[int, CheckpointError]] = []
        for candidate in steps:
            try:
                out = self._read(candidate, read)
            except CheckpointError as err:
                if err.newer_version:
                    raise
                broken.append((candidate, err))
                continue
            for bad, err in broken:
                _LOG.warning("Checkpoint step %d is unreadable (%s); falling back to step %d.", bad,
                             _one_line(err.__cause__ or err, 160), candidate)
                self._set_aside(bad)
            return (*out, candidate)
        raise broken[0][1]

    def _read(self, step: int, read: Callable[[int], tuple]) -> tuple:
        try:
            return read(step)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - orbax raises many kinds on a damaged or mismatched step.
            raise CheckpointError(f"Checkpoint {self.directory}/{step} cannot be restored ({_one_line(err)}): it "
                                  f"is damaged or from another model; {RETRAIN}, or pass an earlier --step.") from err

    def _set_aside(self, step: int) -> None:
        """Moves an unreadable step out of the manager's sight (kept, not deleted) when writable; process 0
        moves it, every process stops seeing it."""
        if self.read_only:
            return
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), BROKEN_DIR)
            os.makedirs(aside, exist_ok=True)
            target = os.path.join(aside, str(step))
            if os.path.exists(target):
                target = f"{target}.{os.getpid()}"  # An earlier broken copy of the same step stays too.
            shutil.move(os.path.join(self.directory, str(step)), target)
            _LOG.warning("Moved the unreadable step %d to %s.", step, target)
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


def _restore_args(abstract_tree: Any) -> Any:
    """Orbax restore arguments that place every array with the sharding in `abstract_tree`."""
    return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
                        abstract_tree)
