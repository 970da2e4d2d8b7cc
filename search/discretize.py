"""The DARTS discretizer: from architecture weights to a discrete cell (a Genotype)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from nasax.core.errors import ConfigError
from nasax.search.costs import CostTable, format_cost
from nasax.supernet.genotypes import Genotype, Node
from nasax.supernet.spaces import SearchSpace


class Limit(NamedTuple):
    """A hard limit on the derived cell's cost: `table`'s cost at most `target`."""

    table: CostTable
    target: float


def derive_cell(
    weights: np.ndarray,
    space: SearchSpace,
    edge_strength: np.ndarray | None = None,
) -> tuple[Node, ...]:
    """Keeps, per node, the strongest incoming edges and on each its strongest op.

    An edge's strength is its largest non-`none` op weight (times `edge_strength`, e.g.
    PC-DARTS' edge normalisation, when given); ties go to the lower input index. The
    kept edges are listed strongest first, as the DARTS reference does.

    A space that keeps every edge (`edges_per_node=None`, NAS-Bench-201) lists them by
    input index, so `edge_strength` has no effect there; a space with `derive_none`
    takes the argmax over every op, `none` included (NAS-Bench-201's DARTS derivation).

    Args:
        weights: (edges, ops) op weights, e.g. the softmax of the alphas.
        space: the search space the weights belong to.
        edge_strength: optional (edges,) factor on each edge's strength.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (space.n_edges, space.n_ops):
        raise ValueError(
            f"weights have shape {weights.shape}; space {space.name!r} needs "
            f"({space.n_edges}, {space.n_ops})"
        )
    candidates = [k for k, op in enumerate(space.ops) if space.derive_none or op != "none"]
    scale = np.ones(space.n_edges) if edge_strength is None else np.asarray(edge_strength)
    nodes = []
    for node in range(space.n_nodes):
        ids = list(space.node_edges(node))
        best_op = {e: candidates[int(np.argmax(weights[e, candidates]))] for e in ids}
        strength = {e: weights[e, best_op[e]] * scale[e] for e in ids}
        keep = ids
        if space.edges_per_node is not None:
            keep = sorted(ids, key=lambda e: -strength[e])[: space.edges_per_node]
        nodes.append(tuple((space.ops[best_op[e]], space.edges[e][1]) for e in keep))
    return tuple(nodes)


def cap_skip_connect(
    weights: np.ndarray, space: SearchSpace, max_skip: int, edge_strength: np.ndarray | None = None
) -> tuple[Node, ...]:
    """Derives a cell with at most `max_skip` skip connections (P-DARTS).

    While the derived cell has too many, the weakest chosen skip_connect is struck off
    (its weight set to zero) and the cell is derived again; where every edge is kept
    (NAS-Bench-201) that edge takes its next-best op instead.
    """
    if "skip_connect" not in space.ops:
        return derive_cell(weights, space, edge_strength)
    skip = space.ops.index("skip_connect")
    weights = np.array(weights, dtype=np.float64)
    while True:
        cell = derive_cell(weights, space, edge_strength)
        chosen = [
            e
            for node, pairs in enumerate(cell)
            for op, src in pairs
            if op == "skip_connect"
            for e in space.node_edges(node)
            if space.edges[e][1] == src
        ]
        if len(chosen) <= max_skip:
            return cell
        weakest = min(chosen, key=lambda e: weights[e, skip])
        weights[weakest, skip] = 0.0


def derive_genotype(
    weights: dict[str, np.ndarray],
    space: SearchSpace,
    *,
    max_skip_connect: int | None = None,
    edge_strength: dict[str, np.ndarray] | None = None,
    limit: Limit | None = None,
) -> Genotype:
    """A Genotype from per-kind (edges, ops) weights: one cell per cell kind of the space,
    each outputting the space's `concat` nodes (every intermediate node in DARTS, the
    last one in NAS-Bench-201).

    Args:
        weights: cell kind -> (edges, ops) op weights (softmax of the alphas in DARTS):
            {"normal": ..., "reduce": ...} in DARTS, {"normal": ...} in NAS-Bench-201.
        space: the search space.
        max_skip_connect: cap on skip connections in the normal cell (None: no cap).
        edge_strength: optional per-kind (edges,) edge weights (PC-DARTS' beta).
        limit: a cost the cell must not exceed; when the argmax cell does, the result
            is the best cell under it by the weights' ranking (`derive_within`).
    """
    genotype = _derive(weights, space, max_skip_connect, edge_strength)
    if limit is None or limit.table.of_genotype(genotype, space) <= limit.target:
        return genotype
    return derive_within(weights, space, limit, max_skip_connect, edge_strength)


def _derive(
    weights: dict[str, np.ndarray],
    space: SearchSpace,
    max_skip_connect: int | None,
    edge_strength: dict[str, np.ndarray] | None,
) -> Genotype:
    strength = edge_strength or {}
    cells: dict[str, tuple[tuple[Node, ...], tuple[int, ...]]] = {}
    for kind in space.cell_kinds:
        cap = max_skip_connect if kind == "normal" else None
        if cap is None:
            nodes = derive_cell(weights[kind], space, strength.get(kind))
        else:
            nodes = cap_skip_connect(weights[kind], space, cap, strength.get(kind))
        cells[kind] = (nodes, space.concat)
    return Genotype(cells, space=space.name)


class _Choice(NamedTuple):
    """A partial cell on a cost/score frontier: its cost, its score (the sum of the log
    strengths of its chosen ops), its skip connections, and its nodes by (kind, node)."""

    cost: float
    score: float
    skips: int
    nodes: tuple[tuple[str, int, Node], ...]


_FRONTIER_SIZE = 4000
"""Frontiers longer than this keep the best choice per cost bucket (of this many)."""


def _pareto(choices: Sequence[_Choice]) -> list[_Choice]:
    """Per skip count, the choices no other beats in both cost and score."""
    kept = []
    for skips in sorted({c.skips for c in choices}):
        best = -np.inf
        for c in sorted((c for c in choices if c.skips == skips), key=lambda c: (c.cost, -c.score)):
            if c.score > best:
                kept.append(c)
                best = c.score
    if len(kept) > _FRONTIER_SIZE:
        lo, hi = min(c.cost for c in kept), max(c.cost for c in kept)
        buckets: dict[tuple[int, int], _Choice] = {}
        for c in kept:
            key = (c.skips, int((c.cost - lo) / (hi - lo + 1e-12) * _FRONTIER_SIZE))
            if key not in buckets or c.score > buckets[key].score:
                buckets[key] = c
        kept = list(buckets.values())
    return kept


def _node_choices(
    kind: str, node: int, weights: np.ndarray, table: np.ndarray, space: SearchSpace, scale
) -> list[_Choice]:
    """Every way node `node` may be derived: its kept edges and an op on each."""
    candidates = [k for k, op in enumerate(space.ops) if space.derive_none or op != "none"]
    skip = space.ops.index("skip_connect") if "skip_connect" in space.ops else -1
    ids = list(space.node_edges(node))
    keep = space.edges_per_node or len(ids)
    log_strength = np.log(np.maximum(weights * scale[:, None], 1e-300))
    choices = []
    for edges in itertools.combinations(ids, min(keep, len(ids))):
        for ops in itertools.product(candidates, repeat=len(edges)):
            pairs = list(zip(edges, ops))
            if space.edges_per_node is not None:  # listed strongest first, as derive_cell
                pairs.sort(key=lambda p: -weights[p[0], p[1]] * scale[p[0]])
            choices.append(
                _Choice(
                    cost=float(sum(table[e, k] for e, k in pairs)),
                    score=float(sum(log_strength[e, k] for e, k in pairs)),
                    skips=sum(k == skip for _, k in pairs),
                    nodes=(
                        (kind, node, tuple((space.ops[k], space.edges[e][1]) for e, k in pairs)),
                    ),
                )
            )
    return _pareto(choices)


def _pairs(space: SearchSpace, pairs: Sequence[tuple[int, int]]) -> Node:
    """A node's (op name, input) pairs from (edge, op index) pairs."""
    return tuple((space.ops[k], space.edges[e][1]) for e, k in pairs)


def derive_within(
    weights: dict[str, np.ndarray],
    space: SearchSpace,
    limit: Limit,
    max_skip_connect: int | None = None,
    edge_strength: dict[str, np.ndarray] | None = None,
) -> Genotype:
    """The cell the weights rank highest among those whose cost is within `limit`.

    A cell's rank is the sum over its kept edges of the log of the chosen op's strength
    (as `derive_cell` measures it), so without a limit it is `derive_cell`'s cell. The
    best cell under the limit is found exactly over the frontier of (cost, score) of
    each node's choices, merged node by node (the skip-connection cap of the normal
    cell is kept as a third coordinate).

    Raises:
        ConfigError: no cell of the space is within the limit.
    """
    strength = edge_strength or {}
    frontier = [_Choice(float(limit.table.fixed), 0.0, 0, ())]
    for kind in space.cell_kinds:
        w = np.asarray(weights[kind], np.float64)
        scale = np.asarray(strength.get(kind, np.ones(space.n_edges)), np.float64)
        cap = max_skip_connect if kind == "normal" else None
        for node in range(space.n_nodes):
            options = _node_choices(kind, node, w, limit.table.ops[kind], space, scale)
            merged = [
                _Choice(
                    a.cost + b.cost,
                    a.score + b.score,
                    a.skips + (b.skips if cap is not None else 0),
                    a.nodes + b.nodes,
                )
                for a in frontier
                for b in options
                if a.cost + b.cost <= limit.target * (1 + 1e-12)
                and (cap is None or a.skips + b.skips <= cap)
            ]
            if not merged:
                raise ConfigError(
                    f"no cell of space {space.name!r} costs at most "
                    f"{format_cost(limit.table.metric, limit.target)}; raise search.cost.target"
                )
            frontier = _pareto(merged)
        frontier = [c._replace(skips=0) for c in frontier]
    best = max(frontier, key=lambda c: c.score)
    cells = {}
    for kind in space.cell_kinds:
        nodes = tuple(n for k, _, n in sorted(best.nodes, key=lambda x: x[1]) if k == kind)
        cells[kind] = (nodes, space.concat)
    return Genotype(cells, space=space.name)
