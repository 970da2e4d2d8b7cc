"""Checks whether XLA's host all-reduce finishes while other processes keep the cores busy,
and prints one JSON line.

With JAX 0.10 it does not: beside two `yes` processes on 2 cores the loop below stalls at
a rendezvous and XLA aborts the process after 40 s (it takes 2.4 s on an idle machine).
That is why `tests/test_parallel.py`'s four-device search is marked `serial` under JAX
0.10; with 0.12.1 it finishes under load (3.3-3.9 s, 3 runs in 3), and the test runs beside
the others. Rerun it after changing JAX:

    yes > /dev/null & yes > /dev/null & python benchmarks/host_collective_stall.py; kill %1 %2
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=4, help="forced host devices")
    parser.add_argument("--rounds", type=int, default=400, help="rounds of 6 programs")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[: args.devices]), ("d",))
    x = jax.device_put(jnp.ones((64, 256)), NamedSharding(mesh, PartitionSpec("d")))
    w = jax.device_put(jnp.full((256, 256), 1e-3), NamedSharding(mesh, PartitionSpec()))
    # Six distinct programs, each with a cross-device sum, dispatched back to back.
    steps = [
        jax.jit(lambda x, w, k=k: (x @ w + k, jnp.sum(x @ w, axis=0) * 1e-3)) for k in range(6)
    ]
    start = time.perf_counter()
    for _ in range(args.rounds):
        for step in steps:
            x, g = step(x, w)
            w = w + 0 * g[:, None]
    jax.block_until_ready(w)
    seconds = time.perf_counter() - start
    print(
        json.dumps({"devices": args.devices, "rounds": args.rounds, "seconds": round(seconds, 2)})
    )


if __name__ == "__main__":
    main()
