"""Regularized (aging) evolution (Real et al., 2019) on the shared supernet's weights.

The supernet trains like random search with weight sharing: one uniformly sampled
cell per step (or its weights come from an earlier run, `weights_from`). Selection then
evolves a population: each cycle samples `sample_size` members, mutates the fittest
(one op or one input of one node), scores the child, and removes the oldest member.
Fitness is validation accuracy with the shared weights on fixed batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nasax.core.errors import RunDirError
from nasax.loop.data import Batch
from nasax.search.budget import Budget
from nasax.search.single_path import (
    derivable_ops,
    load_supernet_weights,
    none_index,
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
from nasax.supernet.spaces import SearchSpace

Arch = dict[str, np.ndarray]
"""Cell kind -> (edges,) op index per edge (a path on the host)."""


class EvolutionOptions(BaseModel):
    """The `search.evolution` section."""

    model_config = ConfigDict(extra="forbid")

    population: int = Field(50, ge=2, description="members alive at a time")
    sample_size: int = Field(10, ge=1, description="members drawn for each tournament")
    cycles: int = Field(200, ge=0, description="children bred after the first population")
    select_batches: int = Field(2, ge=1, description="validation batches that score a cell")
    weights_from: str | None = Field(
        None, description="a search run directory whose supernet weights to start from"
    )
    warmup: ZeroCostWarmup | None = Field(
        None, description="the first population: the best of a pool by a zero-cost proxy"
    )

    @property
    def supplies_weights(self) -> bool:
        """Trained weights come with the config, so the search may train for 0 epochs."""
        return self.weights_from is not None


class Member(NamedTuple):
    arch: Arch
    fitness: float


def aging_evolution(
    random_archs: Callable[[int], list[Arch]],
    mutate: Callable[[Arch, np.random.Generator], Arch],
    fitness: Callable[[Sequence[Arch]], np.ndarray],
    *,
    population: int,
    sample_size: int,
    cycles: int,
    rng: np.random.Generator,
) -> list[Member]:
    """Every member ever scored, in order of birth; the best of them is the result.

    A tournament draws `sample_size` members with replacement, as in the paper; the
    child of its winner joins and the oldest member leaves.
    """
    first = random_archs(population)
    alive = deque(Member(a, float(f)) for a, f in zip(first, fitness(first)))
    history = list(alive)
    for _ in range(cycles):
        contenders = [alive[i] for i in rng.integers(0, len(alive), sample_size)]
        parent = max(contenders, key=lambda m: m.fitness)
        child = mutate(parent.arch, rng)
        member = Member(child, float(fitness([child])[0]))
        alive.append(member)
        history.append(member)
        alive.popleft()
    return history


def mutate_arch(arch: Arch, rng: np.random.Generator, space: SearchSpace) -> Arch:
    """A copy of `arch` with one change in one cell kind: a kept edge's op, or (in spaces
    that keep some edges) the input one of a node's ops comes from."""
    kind = sorted(arch)[rng.integers(len(arch))]
    path = arch[kind].copy()
    ops = derivable_ops(space)
    if space.edges_per_node is None:
        edge = int(rng.integers(space.n_edges))
        path[edge] = rng.choice(ops[ops != path[edge]])
        return {**arch, kind: path}
    none = none_index(space)
    node = int(rng.integers(space.n_nodes))
    edges = np.asarray(space.node_edges(node))
    kept, free = edges[path[edges] != none], edges[path[edges] == none]
    edge = int(rng.choice(kept))
    can_move, can_swap = len(free) > 0, len(ops) > 1
    if can_move and (not can_swap or rng.random() < 0.5):
        target = int(rng.choice(free))
        path[target], path[edge] = path[edge], none
    else:
        path[edge] = rng.choice(ops[ops != path[edge]])
    return {**arch, kind: path}


MUTATION_TRIES = 100
"""Mutations tried for a child within the budget before the parent is copied instead."""


def mutate_within(
    arch: Arch, rng: np.random.Generator, space: SearchSpace, budget: Budget | None
) -> Arch:
    """`mutate_arch`, drawn again until the child is within the budget (a copy of the
    parent, which is, after `MUTATION_TRIES`)."""
    for _ in range(MUTATION_TRIES if budget is not None else 1):
        child = mutate_arch(arch, rng, space)
        if budget is None or bool(budget.fits(child)):
            return child
    return {k: v.copy() for k, v in arch.items()}


@register_strategy("evolution", EvolutionOptions)
def make_evolution(setup: SearchSetup, options: EvolutionOptions) -> Strategy:
    """Builds regularized evolution over the supernet of `setup`."""
    net = FunctionalSupernet.create(setup)
    space = setup.space
    kinds = list(space.cell_kinds)
    score = path_scorer(net, setup)
    budget = setup.budget
    sample_many = path_sampler(space, budget)

    def init(rng: jax.Array) -> SupernetState:
        state = net.init(rng)
        if options.weights_from is None:
            return state
        source = Path(options.weights_from)
        if not (source / "checkpoints").is_dir():
            raise RunDirError(
                f"search.evolution.weights_from: {source} is not a search run directory "
                "(it has no checkpoints/); give the directory of a random_ws or evolution run"
            )
        return load_supernet_weights(source / "checkpoints", state)

    def step(state: SupernetState, train: Batch, val: Batch) -> tuple[SupernetState, Metrics]:
        return uniform_path_step(net, state, train, val)

    def evolve(state: SupernetState, batches: Iterable[Batch]) -> list[Member]:
        held_out = [scored_part(b) for b in islice(batches, options.select_batches)]
        seed = np.asarray(jax.random.key_data(jax.random.fold_in(state.rng, state.step)))
        rng = np.random.default_rng(seed.ravel().tolist())

        def random_archs(n: int) -> list[Arch]:
            keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(2**31))), n)
            stacked = {k: np.asarray(v) for k, v in sample_many(keys).items()}
            warm = options.warmup
            if warm is not None:  # the best n of a ranked pool instead
                stacked, _ = ranked_cells(
                    net, state, held_out[0], max(warm.pool, n), warm.proxy, warm.chunk, sample_many
                )
            return [{k: v[i] for k, v in stacked.items()} for i in range(n)]

        def fitness(archs: Sequence[Arch]) -> np.ndarray:
            stacked = {k: np.stack([a[k] for a in archs]) for k in kinds}
            correct = sum(np.asarray(score(state, stacked, b)) for b in held_out)
            return correct / sum(len(b["label"]) for b in held_out)

        return aging_evolution(
            random_archs,
            lambda arch, r: mutate_within(arch, r, space, budget),
            fitness,
            population=options.population,
            sample_size=options.sample_size,
            cycles=options.cycles,
            rng=rng,
        )

    def select(state: SupernetState, batches: Iterable[Batch]) -> Genotype:
        best = max(evolve(state, batches), key=lambda m: m.fitness)
        return paths_genotype(best.arch, space)

    def evaluate(state: SupernetState, batch: Batch) -> Metrics:
        """Test metrics of one random cell (fixed per state) with the shared weights."""
        paths = sample_paths(state.rng, space, kinds, budget)
        return net.evaluate(state, batch, Forward(paths=paths))

    def derive(state: SupernetState) -> Genotype:
        """Without validation data: the cell `evaluate` scores."""
        paths = sample_paths(state.rng, space, kinds, budget)
        return paths_genotype({k: np.asarray(p) for k, p in paths.items()}, space)

    return Strategy(
        init=init,
        step=step,
        evaluate=evaluate,
        derive=derive,
        arch_weights=lambda state: {},
        select=select,
        evaluate_cell=lambda state, paths, batch: net.evaluate(state, batch, Forward(paths=paths)),
    )
