"""SNAS (Xie et al., 2019): a soft Gumbel-softmax sample of op weights per edge.

Every op is computed and weighted by a relaxed one-hot sample whose temperature is
annealed (geometrically from 1 to 0.03 by default). As in the paper, weights and
alphas are trained together on the training batch (`joint`); `joint: false`
alternates with the validation batch as DARTS does. SNAS' resource penalty is not
included.
"""

from __future__ import annotations

import jax
from pydantic import ConfigDict, Field

from nasax.search.relaxed import (
    Annealing,
    Forward,
    Relaxation,
    gumbel,
    per_kind,
    relaxed_strategy,
    softmax_weights,
    temperature,
)
from nasax.search.strategy import Clock, SearchSetup, Strategy, register_strategy


class SnasOptions(Annealing):
    """The `search.snas` section."""

    model_config = ConfigDict(extra="forbid")

    tau_max: float = Field(1.0, gt=0, description="temperature of the first epoch")
    tau_min: float = Field(0.03, gt=0, description="temperature of the last epoch")
    anneal: str = Field(
        "exponential", pattern="^(linear|exponential)$", description="the schedule's shape"
    )
    joint: bool = Field(True, description="one objective on the training batch (the paper)")


def soft_gumbel(alpha: jax.Array, rng: jax.Array, tau: jax.Array) -> jax.Array:
    """softmax((log_softmax(alpha) + g) / tau) per edge: a relaxed one-hot sample."""
    return jax.nn.softmax((jax.nn.log_softmax(alpha, -1) + gumbel(rng, alpha.shape)) / tau, -1)


@register_strategy("snas", SnasOptions)
def make_snas(setup: SearchSetup, options: SnasOptions) -> Strategy:
    """Builds SNAS over the supernet of `setup`."""
    tau = temperature(options, setup)

    def sample(alphas: dict[str, jax.Array], rng: jax.Array, clock: Clock) -> Forward:
        return Forward(
            weights=per_kind(lambda a, key: soft_gumbel(a, key, tau(clock)), alphas, rng)
        )

    relaxation = Relaxation(
        sample=sample, weights=softmax_weights, metrics=lambda clock: {"tau": tau(clock)}
    )
    return relaxed_strategy(setup, relaxation, joint=options.joint)
