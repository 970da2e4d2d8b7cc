"""PC-DARTS (Xu et al., 2020): partial channel connections and edge normalisation.

Each mixed edge sends 1/K of its channels through the ops and bypasses the rest (a
channel shuffle mixes them); per-node softmaxed edge weights beta scale each edge and,
with the op weights, decide which edges the discretizer keeps. The alphas and betas
start training after a warm-up (15 epochs in the paper), while the weights train from
the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from pydantic import BaseModel, ConfigDict, Field

from nasax.core.errors import ConfigError
from nasax.search.relaxed import Relaxation, relaxed_strategy
from nasax.search.strategy import SearchSetup, Strategy, register_strategy, softmax_weights
from nasax.supernet.cells import MixedEdge
from nasax.supernet.network import Forward

WARMUP_SHARE = 0.3
"""The warm-up's share of the search when it is not set: 15 of the paper's 50 epochs."""


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pool at stride 2; odd sizes round up like the stride-2 ops."""
    pads = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), pads)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's channel shuffle on NHWC: channel g*(C/groups)+i moves to i*groups+g."""
    *lead, c = x.shape
    return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


class PartialChannelEdge(MixedEdge):
    """A mixed edge whose ops see only the first C/K channels: the rest bypass them
    (max-pooled at stride 2) and a channel shuffle mixes the two parts. K = 1 is a plain
    DARTS edge."""

    def __init__(self, op_names: Sequence[str], channels: int, *args: Any, k: int, **options: Any):
        """`MixedEdge`'s arguments, and K."""
        if k < 1 or channels % k:
            raise ValueError(
                f"partial_channels={k} must be >= 1 and divide the edge's {channels} "
                "channels; pick a K that divides model.channels"
            )
        super().__init__(op_names, channels // k, *args, **options)
        self.k = k

    def forward(
        self, x: jax.Array, weights: jax.Array | None, train: bool, path: jax.Array | None
    ) -> jax.Array:
        if self.k == 1:
            return super().forward(x, weights, train, path)
        c = x.shape[-1] // self.k
        y = super().forward(x[..., :c], weights, train, path)
        bypass = x[..., c:]
        if self.stride == 2:
            bypass = max_pool_2x2(bypass)
        return channel_shuffle(jnp.concatenate([y, bypass], axis=-1), self.k)


class PcDartsOptions(BaseModel):
    """The `search.pcdarts` section (paper defaults)."""

    model_config = ConfigDict(extra="forbid")

    partial_channels: int = Field(4, ge=1, description="K: 1/K of the channels enter the ops")
    arch_warmup_epochs: int | None = Field(
        None, ge=0, description="epochs before alphas/betas train (null: 30% of search.epochs)"
    )
    edge_normalization: bool = Field(
        True, description="per-node softmaxed edge weights beta, also used by the discretizer"
    )


@register_strategy("pcdarts", PcDartsOptions)
def make_pcdarts(setup: SearchSetup, options: PcDartsOptions) -> Strategy:
    """Builds PC-DARTS over the supernet of `setup`."""
    warmup = options.arch_warmup_epochs
    if warmup is None:  # the paper's 15 of 50 epochs, at any number of epochs
        warmup = int(WARMUP_SHARE * setup.epochs + 0.5)
    elif warmup >= setup.epochs:
        raise ConfigError(
            f"search.pcdarts.arch_warmup_epochs={warmup} leaves no epoch "
            f"to train the architecture in search.epochs={setup.epochs}; lower it or add epochs"
        )
    return relaxed_strategy(
        setup,
        Relaxation(
            sample=lambda alphas, rng, step: Forward(weights=softmax_weights(alphas)),
            weights=softmax_weights,
        ),
        network_options={
            "edge": partial(PartialChannelEdge, k=options.partial_channels),
            "edge_normalization": options.edge_normalization,
        },
        arch_warmup_epochs=warmup,
    )
