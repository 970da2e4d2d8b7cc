"""SDARTS-RS (Chen & Hsieh, 2020): first-order DARTS whose weight step sees noisy op weights.

The weight step runs the supernet under softmax(alpha) plus uniform noise in
[-epsilon, epsilon], clipped to [0, 1] and renormalised per edge, so the weights learn to
work over a neighbourhood of the architecture and the validation loss stays smooth in
alpha. The architecture step and evaluation use the clean softmax. epsilon grows
linearly from `epsilon_min` to `epsilon_max` over the search (0.03 to 0.3, the
reference's values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nasax.search.relaxed import (
    Forward,
    Relaxation,
    epoch_progress,
    per_kind,
    relaxed_strategy,
    softmax_forward,
    softmax_weights,
)
from nasax.search.strategy import Clock, SearchSetup, Strategy, register_strategy


class SdartsOptions(BaseModel):
    """The `search.sdarts_rs` section."""

    model_config = ConfigDict(extra="forbid")

    epsilon_min: float = Field(0.03, ge=0, description="noise bound of the first epoch")
    epsilon_max: float = Field(0.3, ge=0, description="noise bound of the last epoch")

    @model_validator(mode="after")
    def _order(self) -> SdartsOptions:
        if self.epsilon_min > self.epsilon_max:
            raise ValueError(
                f"epsilon_min ({self.epsilon_min}) must not exceed epsilon_max ({self.epsilon_max})"
            )
        return self


def perturb(weights: jax.Array, noise: jax.Array) -> jax.Array:
    """weights + noise clipped to [0, 1], each row renormalised to sum 1; a row clipped to
    all zeros puts its whole weight on its largest entry before the noise."""
    noisy = jnp.clip(weights + noise, 0.0, 1.0)
    top = jax.nn.one_hot(jnp.argmax(weights, -1), weights.shape[-1], dtype=weights.dtype)
    total = noisy.sum(-1, keepdims=True)
    noisy = jnp.where(total > 0, noisy, top)
    return noisy / noisy.sum(-1, keepdims=True)


@register_strategy("sdarts_rs", SdartsOptions)
def make_sdarts_rs(setup: SearchSetup, options: SdartsOptions) -> Strategy:
    """Builds SDARTS-RS (first order) over the supernet of `setup`."""
    progress = epoch_progress(setup)

    def epsilon(clock: Clock) -> jax.Array:
        return options.epsilon_min + (options.epsilon_max - options.epsilon_min) * progress(clock)

    def noisy(alphas: dict[str, jax.Array], rng: jax.Array, clock: Clock) -> Forward:
        eps = epsilon(clock)

        def draw(w: jax.Array, key: jax.Array) -> jax.Array:
            noise = jax.random.uniform(key, w.shape, w.dtype, -1.0, 1.0) * eps
            return perturb(jax.lax.stop_gradient(w), noise)

        return Forward(weights=per_kind(draw, softmax_weights(alphas), rng))

    relaxation = Relaxation(
        sample=softmax_forward,
        weights=softmax_weights,
        weight_sample=noisy,
        metrics=lambda clock: {"epsilon": epsilon(clock)},
    )
    return relaxed_strategy(setup, relaxation)
