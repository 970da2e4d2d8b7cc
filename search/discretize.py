"""The DARTS discretizer: from architecture weights to a discrete cell (a Genotype)."""

from __future__ import annotations

import numpy as np

from nasax.supernet.genotypes import Genotype, Node
from nasax.supernet.spaces import SearchSpace


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
    """
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
