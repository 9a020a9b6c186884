"""Multi-host set-up: `jax.distributed.initialize` when the config or the environment asks for it."""
from __future__ import annotations

import logging
import os

import jax
import ml_collections

_LOG = logging.getLogger(__name__)

_CLUSTER_ENV = {
    "SLURM": ("SLURM_JOB_ID", "SLURM_NTASKS"),  # jax detects SLURM's coordinator itself.
    "TPU": ("TPU_WORKER_HOSTNAMES",),  # Cloud TPU pods: jax reads the metadata server.
}


def detected_cluster() -> str | None:
    """Names the cluster environment that needs jax.distributed, or None for a single process."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1:
        return "TPU"
    return None


def maybe_initialize(cfg: ml_collections.ConfigDict) -> None:
    """Starts jax.distributed for explicit coordinators or detected clusters; no-op for one process."""
    if jax.distributed.is_initialized():
        return
    if cfg.coordinator_address:
        if cfg.num_processes <= 0 or cfg.process_id < 0:
            raise ValueError(
                "config.distributed.coordinator_address is set; also set num_processes and process_id.")
        jax.distributed.initialize(coordinator_address=cfg.coordinator_address,
                                   num_processes=cfg.num_processes, process_id=cfg.process_id)
    elif detected_cluster():
        jax.distributed.initialize()
    else:
        return
    _LOG.info("jax.distributed: process %d of %d, %d global devices",
                 jax.process_index(), jax.process_count(), jax.device_count())
