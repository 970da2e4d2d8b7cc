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
    candidates = [k for k, op in enumerate(space.ops) if op != "none"]
    scale = np.ones(space.n_edges) if edge_strength is None else np.asarray(edge_strength)
    nodes = []
    for node in range(space.n_nodes):
        ids = list(space.node_edges(node))
        best_op = {e: candidates[int(np.argmax(weights[e, candidates]))] for e in ids}
        strength = {e: weights[e, best_op[e]] * scale[e] for e in ids}
        keep = sorted(ids, key=lambda e: -strength[e])[: space.edges_per_node or len(ids)]
        nodes.append(tuple((space.ops[best_op[e]], space.edges[e][1]) for e in keep))
    return tuple(nodes)


def cap_skip_connect(
    weights: np.ndarray, space: SearchSpace, max_skip: int, edge_strength: np.ndarray | None = None
) -> tuple[Node, ...]:
    """Derives a cell with at most `max_skip` skip connections (P-DARTS).

    While the derived cell has too many, the weakest chosen skip_connect is struck off
    (its weight set to zero) and the cell is derived again.
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
    """A Genotype from per-kind (edges, ops) weights, concatenating every intermediate node.

    Args:
        weights: {"normal": ..., "reduce": ...} op weights (softmax of the alphas in DARTS).
        space: the search space.
        max_skip_connect: cap on skip connections in the normal cell (None: no cap).
        edge_strength: optional per-kind (edges,) edge weights (PC-DARTS' beta).
    """
    strength = edge_strength or {}
    normal = (
        derive_cell(weights["normal"], space, strength.get("normal"))
        if max_skip_connect is None
        else cap_skip_connect(weights["normal"], space, max_skip_connect, strength.get("normal"))
    )
    reduce = derive_cell(weights["reduce"], space, strength.get("reduce"))
    concat = tuple(range(space.n_inputs, space.n_inputs + space.n_nodes))
    return Genotype(normal, concat, reduce, concat, space=space.name)
