"""The processes of a multi-host job: joining it, agreeing on process 0's view, waiting
for each other. On one process each is a no-op (or returns its argument)."""

from __future__ import annotations

import os

import jax
import numpy as np

from nasax.core.config import RunConfig

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
"""Environment variables that describe a multi-host job for `initialize`."""


def initialize(run: RunConfig) -> None:
    """Joins a multi-host job when `run.distributed` says so (before any computation).

    The coordinator comes from `run.coordinator_address`, `run.num_processes` and
    `run.process_id`, else from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID, else JAX detects it (Slurm, Open MPI, Cloud TPU).
    """
    if not run.distributed or jax.distributed.is_initialized():
        return
    env = {k: os.environ.get(k) for k in _ENV}
    kwargs = {
        "coordinator_address": run.coordinator_address or env["JAX_COORDINATOR_ADDRESS"],
        "num_processes": run.num_processes
        or (int(env["JAX_NUM_PROCESSES"]) if env["JAX_NUM_PROCESSES"] else None),
        "process_id": run.process_id
        if run.process_id is not None
        else (int(env["JAX_PROCESS_ID"]) if env["JAX_PROCESS_ID"] else None),
    }
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})


def process_zero_flag(flag: bool) -> bool:
    """Process 0's `flag`, on every process of a multi-host job (`flag` itself on one)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def sync_processes(name: str) -> None:
    """Waits until every process of a multi-host job gets here (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = ["initialize", "process_zero_flag", "sync_processes"]
