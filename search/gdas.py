"""GDAS (Dong & Yang, 2019): one op per edge from a hard Gumbel-softmax sample.

The forward computes only the sampled op of each edge (`lax.switch`), so a step costs
about one op per edge; straight-through gradients reach every alpha. The temperature
falls linearly from 10 to 0.1 over the search, as in the paper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from pydantic import ConfigDict

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


class GdasOptions(Annealing):
    """The `search.gdas` section: the temperature schedule (tau 10 -> 0.1, linear)."""

    model_config = ConfigDict(extra="forbid")


def hard_gumbel(alpha: jax.Array, rng: jax.Array, tau: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(straight-through one-hot weights, sampled op index) per edge of `alpha` (edges, ops).

    The value is the one-hot of argmax((log_softmax(alpha) + g) / tau); its gradient is
    that of the soft sample.
    """
    logits = (jax.nn.log_softmax(alpha, axis=-1) + gumbel(rng, alpha.shape)) / tau
    probs = jax.nn.softmax(logits, axis=-1)
    index = jnp.argmax(probs, axis=-1)
    one_hot = jax.nn.one_hot(index, alpha.shape[-1], dtype=probs.dtype)
    return one_hot - jax.lax.stop_gradient(probs) + probs, index


def argmax_paths(alphas: dict[str, jax.Array]) -> Forward:
    """Evaluation: each edge runs its strongest op alone."""
    return Forward(paths={kind: jnp.argmax(a, axis=-1) for kind, a in alphas.items()})


@register_strategy("gdas", GdasOptions)
def make_gdas(setup: SearchSetup, options: GdasOptions) -> Strategy:
    """Builds GDAS over the supernet of `setup`."""
    tau = temperature(options, setup)

    def sample(alphas: dict[str, jax.Array], rng: jax.Array, clock: Clock) -> Forward:
        drawn = per_kind(lambda a, key: hard_gumbel(a, key, tau(clock)), alphas, rng)
        return Forward(
            weights={kind: w for kind, (w, _) in drawn.items()},
            paths={kind: index for kind, (_, index) in drawn.items()},
        )

    relaxation = Relaxation(
        sample=sample,
        weights=softmax_weights,
        eval_forward=argmax_paths,
        metrics=lambda clock: {"tau": tau(clock)},
    )
    return relaxed_strategy(setup, relaxation)
