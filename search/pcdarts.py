"""PC-DARTS (Xu et al., 2020): partial channel connections and edge normalisation.

Each mixed edge sends 1/K of its channels through the ops and bypasses the rest (a
channel shuffle mixes them); per-node softmaxed edge weights beta scale each edge and,
with the op weights, decide which edges the discretizer keeps. The alphas and betas
start training after a warm-up (15 epochs in the paper), while the weights train from
the start.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from nasax.core.errors import ConfigError
from nasax.search.relaxed import Relaxation, relaxed_strategy, softmax_weights
from nasax.search.strategy import SearchSetup, Strategy, register_strategy

WARMUP_SHARE = 0.3
"""The warm-up's share of the search when it is not set: 15 of the paper's 50 epochs."""


class PcDartsOptions(BaseModel):
    """The `search.pcdarts` section (paper defaults)."""

    model_config = ConfigDict(extra="forbid")

    partial_channels: int = Field(4, ge=1, description="K: 1/K of the channels enter the ops")
    arch_warmup_epochs: int | None = Field(
        None, ge=0, description="epochs before alphas/betas train (null: 30% of search.epochs)"
    )
    edge_normalization: bool = True


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
            sample=lambda alphas, rng, step: {"weights": softmax_weights(alphas)},
            weights=softmax_weights,
        ),
        network_options={
            "partial_channels": options.partial_channels,
            "edge_normalization": options.edge_normalization,
        },
        arch_warmup_epochs=warmup,
    )
