"""Data parallelism: one mesh over the devices, batches split along it, state replicated.

The same jitted step runs on 1 device, N local devices or several hosts: inputs carry
their sharding, so XLA partitions the step and reduces gradients and batch-norm
statistics across devices itself. A global batch of B gives the same losses on any
number of devices (up to float summation order).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nasax.config import RunConfig
from nasax.errors import ConfigError

AXIS = "batch"

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


class DataParallel(NamedTuple):
    """Where arrays go: batches split over the mesh's batch axis, the rest replicated."""

    mesh: Mesh
    batch: NamedSharding
    replicated: NamedSharding

    @property
    def size(self) -> int:
        return self.mesh.size

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """A global batch (the same host arrays on every process) as arrays split by rows;
        each process uploads only the rows of its own devices."""

        def put(x: np.ndarray) -> jax.Array:
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.batch, lambda index: x[index])

        return {k: put(v) for k, v in batch.items()}

    def put_state(self, state: Any) -> Any:
        """`state` replicated on every device of the mesh."""
        return jax.device_put(state, self.replicated)


def data_parallel(run: RunConfig, batch_sizes: dict[str, int]) -> DataParallel:
    """The mesh `run.devices` asks for (null: every device of every process).

    Args:
        run: the config's `run` section.
        batch_sizes: config key -> global batch size, each to be split evenly.
    """
    devices = jax.devices()
    count = run.devices or len(devices)
    if count > len(devices):
        raise ConfigError(
            f"run.devices: {count} devices asked for, but JAX sees {len(devices)} "
            f"({devices[0].platform}); lower run.devices or leave it null"
        )
    if count < len(devices) and jax.process_count() > 1:
        raise ConfigError("run.devices: a multi-host job uses every device; leave it null")
    for key, size in batch_sizes.items():
        if size % count:
            raise ConfigError(
                f"{key}: {size} does not split over {count} devices; use a multiple of {count}"
            )
    mesh = Mesh(np.array(devices[:count]), (AXIS,))
    return DataParallel(
        mesh, NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    )


__all__ = [
    "DataParallel",
    "data_parallel",
    "initialize",
    "process_zero_flag",
    "sync_processes",
]
