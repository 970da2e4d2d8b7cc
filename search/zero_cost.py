"""Zero-cost search: score random cells at initialisation, keep the best (NASWOT's protocol).

No weight is trained, so the search runs with `search.epochs: 0`. Selection draws
`cells` distinct random cells (within the budget where `search.cost` sets one), scores
each with a proxy on one validation minibatch at the supernet's initial weights, and
keeps the best. `ZeroCostWarmup` gives evolution and random search the same ranking as
a warm-up (Abdelfattah et al., 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nasax.loop.data import Batch
from nasax.search.proxies import get_proxy, proxy_names
from nasax.search.scoring import ScoringNetwork, cell_scores
from nasax.search.single_path import (
    path_sampler,
    paths_genotype,
    sample_paths,
    scored_part,
)
from nasax.search.strategy import (
    FunctionalSupernet,
    Metrics,
    SearchSetup,
    Strategy,
    SupernetState,
    register_strategy,
)
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import Forward

_SCORE_KEY = 0x2E0C05
"""Folded into a state's key for the initial weights and the cells a ranking draws."""


def _check_proxy(name: str) -> str:
    if name == "vote":
        return name
    try:
        proxy = get_proxy(name)
    except KeyError as e:
        raise ValueError(f"{e.args[0]}, or vote") from None
    if proxy.table is not None:
        raise ValueError(
            f"{name!r} ranks by cost; set a budget with search.cost instead, and rank by "
            f"one of {', '.join(n for n in proxy_names() if get_proxy(n).table is None)} or vote"
        )
    return name


class ZeroCostOptions(BaseModel):
    """The `search.zero_cost` section."""

    model_config = ConfigDict(extra="forbid")

    proxy: str = Field(
        "vote", description="the ranking proxy, or vote (mean rank by synflow, jacob_cov, snip)"
    )
    cells: int = Field(1000, ge=1, description="random cells scored; the best is kept")
    chunk: int = Field(16, ge=1, description="cells per compiled scoring call")

    _proxy = field_validator("proxy")(_check_proxy)

    @property
    def supplies_weights(self) -> bool:
        """Scoring needs no trained weight, so search.epochs may be 0..."""
        return True

    @property
    def trains_nothing(self) -> bool:
        """...and must be: there is no weight step."""
        return True


class ZeroCostWarmup(BaseModel):
    """A zero-cost warm-up: a pool of random cells ranked by a proxy, the best first."""

    model_config = ConfigDict(extra="forbid")

    proxy: str = Field("vote", description="the ranking proxy, or vote")
    pool: int = Field(1000, ge=1, description="random cells ranked")
    chunk: int = Field(16, ge=1, description="cells per compiled scoring call")

    _proxy = field_validator("proxy")(_check_proxy)


def ranked_cells(
    net: FunctionalSupernet,
    state: SupernetState,
    batch: Batch,
    n: int,
    proxy: str,
    chunk: int,
    sample_many: Callable[[jax.Array], dict[str, jax.Array]],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`n` random cells drawn by `sample_many` (`path_sampler` of the setup's space and
    budget), stacked and sorted best first by `proxy` at freshly initialised weights,
    and their scores."""
    setup, space = net.setup, net.setup.space
    key = jax.random.fold_in(state.rng, _SCORE_KEY)
    init_key, cells_key, score_key = jax.random.split(key, 3)
    fresh = net.init(init_key)
    keys = jax.random.split(cells_key, n)
    cells = sample_many(keys)
    scoring = ScoringNetwork(space, net.graphdef, fresh.arch, fresh.params, fresh.batch_stats)
    images = setup.preprocess(batch, score_key, False)
    minibatch = {"image": images, "label": batch["label"]}
    scores = cell_scores(scoring, cells, minibatch, score_key, proxy, chunk)
    order = np.argsort(-scores, kind="stable")
    return {k: np.asarray(v)[order] for k, v in cells.items()}, scores[order]


@register_strategy("zero_cost", ZeroCostOptions)
def make_zero_cost(setup: SearchSetup, options: ZeroCostOptions) -> Strategy:
    """Builds zero-cost search over the cells of `setup`'s space."""
    net = FunctionalSupernet.create(setup)
    space = setup.space
    sample_many = path_sampler(space, setup.budget)

    def step(state: SupernetState, train: Batch, val: Batch) -> tuple[SupernetState, Metrics]:
        raise AssertionError("unreachable: config validation keeps zero_cost at epochs 0")

    def select(state: SupernetState, batches: Iterable[Batch]) -> Genotype:
        batch = scored_part(next(iter(batches)))
        cells, _ = ranked_cells(
            net, state, batch, options.cells, options.proxy, options.chunk, sample_many
        )
        return paths_genotype({k: v[0] for k, v in cells.items()}, space)

    def derive(state: SupernetState) -> Genotype:
        """Without data: a random cell (selection ranks cells on a validation batch)."""
        paths = sample_paths(state.rng, space, space.cell_kinds, setup.budget)
        return paths_genotype({k: np.asarray(p) for k, p in paths.items()}, space)

    return Strategy(
        init=net.init,
        step=step,
        evaluate=lambda state, batch: net.evaluate(state, batch),
        derive=derive,
        arch_weights=lambda state: {},
        select=select,
        evaluate_cell=lambda state, paths, batch: net.evaluate(state, batch, Forward(paths=paths)),
    )
