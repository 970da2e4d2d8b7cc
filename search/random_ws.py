"""Random search with weight sharing (Li & Talwalkar, 2019).

The supernet trains on uniformly sampled architectures, one per step, each edge running
only its sampled op. Selection samples `candidates` random architectures, scores each
with the shared weights on the same validation batches, and keeps the best.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nasax.loop.data import Batch
from nasax.search.single_path import (
    best_candidate,
    path_sampler,
    path_scorer,
    paths_genotype,
    sample_paths,
    scored_part,
    uniform_path_step,
)
from nasax.search.strategy import (
    FunctionalSupernet,
    Metrics,
    SearchSetup,
    Strategy,
    SupernetState,
    register_strategy,
)
from nasax.search.zero_cost import ZeroCostWarmup, ranked_cells
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import Forward

_EVAL_CELL = 0x5E1EC7
"""Folded into the state's key to draw the cell that `evaluate` and `derive` use."""


class RandomWsOptions(BaseModel):
    """The `search.random_ws` section."""

    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(100, ge=1, description="random architectures ranked at the end")
    select_batches: int = Field(10, ge=1, description="validation batches that score each one")
    warmup: ZeroCostWarmup | None = Field(
        None, description="rank a pool by a zero-cost proxy; the best `candidates` are scored"
    )


@register_strategy("random_ws", RandomWsOptions)
def make_random_ws(setup: SearchSetup, options: RandomWsOptions) -> Strategy:
    """Builds random search with weight sharing over the supernet of `setup`."""
    net = FunctionalSupernet.create(setup)
    space, budget = setup.space, setup.budget

    def step(state: SupernetState, train: Batch, val: Batch) -> tuple[SupernetState, Metrics]:
        return uniform_path_step(net, state, train, val)

    def eval_paths(state: SupernetState) -> dict[str, jax.Array]:
        """One random cell, fixed per state: the one `evaluate` scores and `derive` returns."""
        key = jax.random.fold_in(state.rng, _EVAL_CELL)
        return sample_paths(key, space, space.cell_kinds, setup.budget)

    def evaluate(state: SupernetState, batch: Batch) -> Metrics:
        """Test metrics of one random cell (fixed per state) with the shared weights."""
        return net.evaluate(state, batch, Forward(paths=eval_paths(state)))

    score = path_scorer(net, setup)
    sample_many = path_sampler(space, budget)

    def select(state: SupernetState, batches: Iterable[Batch]) -> Genotype:
        held = list(islice(batches, options.select_batches))
        warm = options.warmup
        if warm is None:
            keys = jax.random.split(jax.random.fold_in(state.rng, state.step), options.candidates)
            candidates = sample_many(keys)
        else:
            pool, _ = ranked_cells(
                net,
                state,
                scored_part(held[0]),
                warm.pool,
                warm.proxy,
                warm.chunk,
                sample_many,
            )
            candidates = {k: jax.numpy.asarray(v[: options.candidates]) for k, v in pool.items()}
        return best_candidate(
            score, state, candidates, iter(held), options.select_batches, space, budget
        )

    def derive(state: SupernetState) -> Genotype:
        """Without validation data: the cell `evaluate` scores."""
        return paths_genotype({k: np.asarray(p) for k, p in eval_paths(state).items()}, space)

    return Strategy(
        init=net.init,
        step=step,
        evaluate=evaluate,
        derive=derive,
        arch_weights=lambda state: {},
        select=select,
        evaluate_cell=lambda state, paths, batch: net.evaluate(state, batch, Forward(paths=paths)),
    )
