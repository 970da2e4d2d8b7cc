"""Regularized evolution: mutations stay in the space and change one thing; the search
improves a known fitness; a run can start from another run's supernet weights."""

from __future__ import annotations

import numpy as np
import pytest

from nasax.search.evolution import aging_evolution, mutate_arch
from nasax.search.single_path import derivable_ops, genotype_paths, paths_genotype
from nasax.supernet.genotypes import DARTS_V2, NB201_RESNET
from nasax.supernet.spaces import get_space


@pytest.mark.parametrize("space,genotype", [("darts", DARTS_V2), ("nb201", NB201_RESNET)])
def test_a_mutation_changes_one_op_or_one_input(space, genotype):
    sp = get_space(space)
    parent = genotype_paths(genotype, sp)
    rng = np.random.default_rng(0)
    kinds_seen = set()
    for _ in range(200):
        child = mutate_arch(parent, rng, sp)
        paths_genotype(child, sp).validate(sp)  # still a cell of the space
        changed = {k: np.flatnonzero(child[k] != parent[k]) for k in parent}
        changed = {k: v for k, v in changed.items() if len(v)}
        assert len(changed) == 1  # one cell kind
        ((kind, edges),) = changed.items()
        if len(edges) == 1:
            kinds_seen.add("op")  # one edge's op replaced by another op
            assert child[kind][edges[0]] in derivable_ops(sp)
        else:  # an op moved from one input of a node to another
            kinds_seen.add("input")
            assert len(edges) == 2 and sp.edges[edges[0]][0] == sp.edges[edges[1]][0]
            assert sorted(child[kind][edges]) == sorted(parent[kind][edges])
    assert kinds_seen == ({"op", "input"} if sp.edges_per_node else {"op"})


def test_evolution_improves_a_known_fitness():
    """Fitness = number of sep_conv_3x3 edges: 300 cycles of aging evolution climb far
    above what the random first population holds, and the history is ordered by birth."""
    sp = get_space("darts")
    sep = sp.ops.index("sep_conv_3x3")
    rng = np.random.default_rng(1)

    def random_archs(n):
        out = []
        for _ in range(n):
            arch = genotype_paths(DARTS_V2, sp)
            for _ in range(30):
                arch = mutate_arch(arch, rng, sp)
            out.append(arch)
        return out

    def fitness(archs):
        return np.array([sum(int(np.sum(a[k] == sep)) for k in a) for a in archs], float)

    history = aging_evolution(
        random_archs,
        lambda a, r: mutate_arch(a, r, sp),
        fitness,
        population=20,
        sample_size=5,
        cycles=300,
        rng=rng,
    )
    assert len(history) == 320
    first = max(m.fitness for m in history[:20])
    best = max(m.fitness for m in history)
    assert best >= first + 4
    assert best <= 16  # 8 kept edges per cell, 2 cells
    # Every child's fitness is the fitness of its cell.
    assert all(m.fitness == fitness([m.arch])[0] for m in history)
