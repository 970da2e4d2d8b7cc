"""Data parallelism: one mesh over the devices, batches split along it, state replicated.

The same jitted step runs on 1 device, N local devices or several hosts: inputs carry
their sharding, so XLA partitions the step and reduces gradients and batch-norm
statistics across devices itself. A global batch of B gives the same losses on any
number of devices (up to float summation order).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nasax.core.config import RunConfig
from nasax.core.errors import ConfigError

AXIS = "batch"


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


__all__ = ["AXIS", "DataParallel", "data_parallel"]
