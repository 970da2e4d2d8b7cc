"""β-DARTS (Ye et al., 2022): first-order DARTS with the Beta-Decay regulariser.

The architecture loss adds lambda * mean over edges of logsumexp(alpha): its gradient is
softmax(alpha), so it pulls every alpha down in proportion to its op weight and keeps
the softmax from sharpening early, which is what lets skip connections win in DARTS.
lambda grows linearly over the search; the reference code's 50 * epoch / 100 over its
100 NAS-Bench-201 epochs is `scale: 50` here, at any number of epochs.

The log keeps the term apart: `val_loss` is the cross-entropy, `beta_reg` the weighted
regulariser, `beta_decay_weight` lambda, and `val_objective` their sum (what the alphas
descend).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from pydantic import BaseModel, ConfigDict, Field

from nasax.search.relaxed import (
    Relaxation,
    epoch_progress,
    relaxed_strategy,
    softmax_forward,
    softmax_weights,
)
from nasax.search.strategy import Clock, SearchSetup, Strategy, register_strategy


class BetaDartsOptions(BaseModel):
    """The `search.beta_darts` section."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(
        50.0, ge=0, description="lambda at the last epoch; it rises linearly from 0"
    )


def beta_decay(alphas: dict[str, jax.Array]) -> jax.Array:
    """Mean over the edges of every cell kind of logsumexp(alpha_edge)."""
    rows = jnp.concatenate([a.reshape(-1, a.shape[-1]) for _, a in sorted(alphas.items())])
    return jnp.mean(jax.nn.logsumexp(rows, axis=-1))


@register_strategy("beta_darts", BetaDartsOptions)
def make_beta_darts(setup: SearchSetup, options: BetaDartsOptions) -> Strategy:
    """Builds β-DARTS (first order) over the supernet of `setup`."""
    progress = epoch_progress(setup)

    def weight(clock: Clock) -> jax.Array:
        return options.scale * progress(clock)

    relaxation = Relaxation(
        sample=softmax_forward,
        weights=softmax_weights,
        penalty=lambda alphas, clock: {"beta_reg": weight(clock) * beta_decay(alphas)},
        metrics=lambda clock: {"beta_decay_weight": weight(clock)},
    )
    return relaxed_strategy(setup, relaxation)
