"""Orbax checkpoints: one directory per step with the train state, the data-iterator state and metadata.

Metadata (vocabulary layout, config, task specs, the SentencePiece model) makes a checkpoint enough to
resume, act or sample with nothing else. Orbax writes each step into a temporary directory and renames
it when complete, so a run killed mid-save leaves the previous checkpoint as the latest.
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or incompatible."""


def checkpoint_root(workdir: str) -> str:
    """Accepts a workdir (holding checkpoints/) or the checkpoints directory itself."""
    workdir = os.path.abspath(workdir)
    if os.path.basename(workdir.rstrip("/")) == CHECKPOINT_DIR:
        return workdir
    return os.path.join(workdir, CHECKPOINT_DIR)


class Checkpointer:
    """Saves and restores (train state, data-iterator state, metadata) together."""

    def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_root(workdir)
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"No checkpoints under {self.directory}; train first (make train EXP=...) or pass the right --workdir.")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None, meta: dict) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta),
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
        """Restores onto the shardings in `abstract_state` (any mesh shape)."""
        step = self._resolve(step)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        try:
            restored = self.manager.restore(step, args=args)
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"Checkpoint {self.directory}/{step} does not match this model ({err}); "
                "use the config it was trained with.") from err
        return restored["state"], restored["data"], restored["meta"]

    def restore_meta(self, step: int | None = None) -> dict:
        """Only the metadata: enough to rebuild the model and tokenizers before restoring weights."""
        step = self._resolve(step)
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def _resolve(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None or step not in self.manager.all_steps():
            raise CheckpointError(
                f"No complete checkpoint{'' if step is None else f' at step {step}'} in {self.directory}; "
                "train first (make train EXP=...) or pass the right --workdir.")
        return step

    def close(self) -> None:
        self.manager.close()
