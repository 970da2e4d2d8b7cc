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
    step: jax.Array,
    steps_per_epoch: int,
    epochs: int,
    final_rate: float,
    span: jax.Array | None = None,
) -> jax.Array:
    """The DARTS ramp: `final_rate * epoch / epochs`, constant within an epoch; given a
    `span` (a traced epoch count a time limit may set below `epochs`), over `span` epochs.

    The span enters as a factor `epochs / span` on the epoch, exactly 1 at `span ==
    epochs`, so the operations after it are the configured ramp's and the compiled step
    rounds them as it did without a span (XLA fuses the ramp into the kernels that use
    it, where `1 - rate` may round once as a fused multiply-add; a rate selected between
    two ramps is computed apart, and rounds twice).
    """
    epoch = (step // steps_per_epoch).astype(jnp.float32)
    if span is not None:
        epoch = epoch * jnp.where(span == epochs, 1.0, epochs / jnp.maximum(span, 1))
    return final_rate * epoch / epochs
