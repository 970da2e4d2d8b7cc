"""Retraining regularisers that live outside the network: cutout and the drop-path ramp."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cutout(images: jax.Array, rng: jax.Array, length: int) -> jax.Array:
    """Zeroes one `length` x `length` square per image, centred anywhere (clipped at borders).

    As in DeVries & Taylor (2017) and the DARTS reference, it runs after normalisation,
    so the square holds the mean pixel.
    """
    if length <= 0:
        return images
    n, h, w, _ = images.shape
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (n, 1, 1, 1), 0, h)
    cx = jax.random.randint(kx, (n, 1, 1, 1), 0, w)
    rows = jnp.arange(h).reshape(1, h, 1, 1)
    cols = jnp.arange(w).reshape(1, 1, w, 1)
    half = length // 2
    inside = (
        (rows >= cy - half)
        & (rows < cy - half + length)
        & (cols >= cx - half)
        & (cols < cx - half + length)
    )
    return jnp.where(inside, jnp.zeros((), images.dtype), images)


def drop_path_rate(
    step: jax.Array, steps_per_epoch: int, epochs: int, final_rate: float
) -> jax.Array:
    """The DARTS ramp: `final_rate * epoch / epochs`, constant within an epoch."""
    epoch = step // steps_per_epoch
    return final_rate * epoch.astype(jnp.float32) / epochs
