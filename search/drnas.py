"""DrNAS (Chen et al., 2021): op weights sampled from a Dirichlet per edge.

The concentration is elu(alpha) + 1; samples are reparameterised (JAX's gamma sampler
has implicit gradients), so the validation loss trains the concentration directly. A
regulariser keeps it from growing without bound: the L2 norm of the concentration
(the paper's default) or the KL divergence to a symmetric Dirichlet prior, logged apart
as `concentration_reg` (weighted; `val_loss` stays the cross-entropy). Evaluation and
the discretizer use the Dirichlet mean.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln
from pydantic import BaseModel, ConfigDict, Field

from nasax.search.relaxed import Forward, Relaxation, per_kind, relaxed_strategy
from nasax.search.strategy import Clock, SearchSetup, Strategy, register_strategy


class DrnasOptions(BaseModel):
    """The `search.drnas` section."""

    model_config = ConfigDict(extra="forbid")

    regularizer: Literal["l2", "kl"] = Field(
        "l2", description="penalty on the concentration: L2, or KL to a Dirichlet prior"
    )
    reg_scale: float = Field(1e-3, ge=0, description="weight of the regulariser")
    prior: float = Field(1.0, gt=0, description="concentration of the KL prior")


def concentration(alpha: jax.Array) -> jax.Array:
    """elu(alpha) + 1: positive, and 1 (a uniform Dirichlet) at alpha = 0."""
    return jax.nn.elu(alpha) + 1.0


def dirichlet_kl(conc: jax.Array, prior: float) -> jax.Array:
    """KL(Dir(conc) || Dir(prior * 1)) per row of `conc`."""
    total = conc.sum(-1)
    b = jnp.full_like(conc, prior)
    return (
        gammaln(total)
        - gammaln(conc).sum(-1)
        - gammaln(b.sum(-1))
        + gammaln(b).sum(-1)
        + ((conc - b) * (digamma(conc) - digamma(total)[..., None])).sum(-1)
    )


def dirichlet_mean(alphas: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The expected op weights per edge."""
    out = {}
    for kind, a in alphas.items():
        conc = concentration(a)
        out[kind] = conc / conc.sum(-1, keepdims=True)
    return out


@register_strategy("drnas", DrnasOptions)
def make_drnas(setup: SearchSetup, options: DrnasOptions) -> Strategy:
    """Builds DrNAS over the supernet of `setup`."""

    def sample(alphas: dict[str, jax.Array], rng: jax.Array, clock: Clock) -> Forward:
        return Forward(
            weights=per_kind(
                lambda a, key: jax.random.dirichlet(key, concentration(a)), alphas, rng
            )
        )

    def penalty(alphas: dict[str, jax.Array], clock: Clock) -> dict[str, jax.Array]:
        concs = [concentration(a) for a in alphas.values()]
        if options.regularizer == "l2":
            value = sum(jnp.sum(jnp.square(c)) for c in concs)
        else:
            value = sum(jnp.sum(dirichlet_kl(c, options.prior)) for c in concs)
        return {"concentration_reg": options.reg_scale * value}

    return relaxed_strategy(
        setup, Relaxation(sample=sample, weights=dirichlet_mean, penalty=penalty)
    )
