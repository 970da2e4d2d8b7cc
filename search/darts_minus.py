"""DARTS- (Chu et al., 2021): first-order DARTS with an auxiliary skip connection per edge.

Every mixed edge adds beta * x (a non-affine factorized reduction at stride 2) outside
its candidate ops, in both the weight and the architecture step. The skip's benefit to
gradient flow then no longer needs the candidate `skip_connect`, so its alpha stops
growing for that reason alone. beta falls linearly from `beta_max` in the first epoch to
0 in the last, so the supernet ends as the plain one the discretizer reads. Evaluation
and the derived cell leave the auxiliary skip out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from pydantic import BaseModel, ConfigDict, Field

from nasax.search.relaxed import (
    Forward,
    Relaxation,
    epoch_progress,
    relaxed_strategy,
    softmax_weights,
)
from nasax.search.strategy import Clock, SearchSetup, Strategy, register_strategy
from nasax.supernet.cells import MixedEdge
from nasax.supernet.ops import FactorizedReduce


class AuxSkipEdge(MixedEdge):
    """A mixed edge with the auxiliary skip outside its ops: weight rows with one entry
    more than the ops add that entry times the edge's input (a parameter-free identity,
    or a non-affine factorized reduction at stride 2). Rows of the ops' length leave it
    out (evaluation, the derived cell)."""

    def __init__(
        self, op_names: Sequence[str], c: int, stride: int, rngs: nnx.Rngs, **options: Any
    ):
        """`MixedEdge`'s arguments."""
        super().__init__(op_names, c, stride, rngs, **options)
        self.aux = FactorizedReduce(c, c, False, rngs) if stride == 2 else None

    def mixed(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        out = super().mixed(x, weights[..., : self.n_ops], train)
        if weights.shape[-1] == self.n_ops:
            return out
        skip = x if self.aux is None else self.aux(x, train)
        return out + weights[self.n_ops] * skip


class DartsMinusOptions(BaseModel):
    """The `search.darts_minus` section."""

    model_config = ConfigDict(extra="forbid")

    beta_max: float = Field(1.0, ge=0, description="auxiliary skip weight of the first epoch")


def with_aux_skip(weights: dict[str, jax.Array], beta: jax.Array) -> dict[str, jax.Array]:
    """Op weight rows with the auxiliary skip's weight appended to every edge."""
    return {
        kind: jnp.concatenate([w, jnp.broadcast_to(beta, (*w.shape[:-1], 1)).astype(w.dtype)], -1)
        for kind, w in weights.items()
    }


@register_strategy("darts_minus", DartsMinusOptions)
def make_darts_minus(setup: SearchSetup, options: DartsMinusOptions) -> Strategy:
    """Builds DARTS- (first order) over a supernet whose edges carry the auxiliary skip."""
    progress = epoch_progress(setup)

    def beta(clock: Clock) -> jax.Array:
        return options.beta_max * (1.0 - progress(clock))

    def sample(alphas: dict[str, jax.Array], rng: jax.Array, clock: Clock) -> Forward:
        return Forward(weights=with_aux_skip(softmax_weights(alphas), beta(clock)))

    relaxation = Relaxation(
        sample=sample,
        weights=softmax_weights,
        metrics=lambda clock: {"aux_skip_beta": beta(clock)},
    )
    return relaxed_strategy(setup, relaxation, network_options={"edge": AuxSkipEdge})
