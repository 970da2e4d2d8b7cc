"""One cell implementation with two edge kinds: mixed edges (search) and fixed edges."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.supernet.ops import OPS, FactorizedReduce, ReLUConvBN, batch_norm, build_op, norm


class Edge(Protocol):
    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array: ...


class MixedEdge(nnx.Module):
    """Every candidate op of an edge; the output is their weighted sum.

    Ops that output zeros (`none`) are not computed: their weight still enters the
    softmax that made `weights`, but adds nothing to the sum.
    """

    def __init__(self, op_names: Sequence[str], channels: int, stride: int, rngs: nnx.Rngs):
        specs = [OPS.get(name) for name in op_names]
        self.positions = tuple(k for k, spec in enumerate(specs) if not spec.zero)
        self.ops = nnx.List(
            [build_op(op_names[k], channels, stride, False, rngs) for k in self.positions]
        )
        self.norms = nnx.List(
            [
                batch_norm(channels, False, rngs) if specs[k].norm_on_mixed_edge else None
                for k in self.positions
            ]
        )
        self.stride = stride

    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array:
        out = None
        for k, op, bn in zip(self.positions, self.ops, self.norms):
            y = op(x, train)
            if bn is not None:
                y = norm(bn, y, train)
            term = weights[k] * y
            out = term if out is None else out + term
        if out is None:  # only zero ops on this edge
            out = jnp.zeros_like(x[:, :: self.stride, :: self.stride, :])
        return out


class CellPlan(NamedTuple):
    """Channels and kind of one cell in a stack."""

    c_prev_prev: int
    c_prev: int
    channels: int
    reduction: bool
    reduction_prev: bool


def plan_cells(stem_channels: int, channels: int, layers: int, n_out: int) -> list[CellPlan]:
    """Channel plan of a DARTS stack: reductions at 1/3 and 2/3 of the depth double C.

    Args:
        stem_channels: channels the stem outputs (the first cells' two inputs).
        channels: C of the first cell.
        layers: number of cells.
        n_out: nodes a cell concatenates, so a cell outputs n_out * C channels.
    """
    plans, c_pp, c_p, c, red_prev = [], stem_channels, stem_channels, channels, False
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c = 2 * c if red else c
        plans.append(CellPlan(c_pp, c_p, c, red, red_prev))
        c_pp, c_p, red_prev = c_p, n_out * c, red
    return plans


class MixedEdgeGroup(nnx.Module):
    """The mixed edges leaving one node, run as one vmapped op.

    The edges share their input and shapes, so their parameters are stacked along a
    leading axis and one traced MixedEdge serves all of them: the traced program and
    its compile time shrink several-fold, and convs reading the shared input fuse.
    """

    def __init__(
        self, op_names: Sequence[str], channels: int, stride: int, n_edges: int, rngs: nnx.Rngs
    ) -> None:
        @nnx.split_rngs(splits=n_edges)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs: nnx.Rngs) -> MixedEdge:
            return MixedEdge(op_names, channels, stride, rngs)

        self.edges = create(rngs)

    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array:
        """(edges, B, H', W', C) outputs for input `x` and (edges, ops) `weights`."""

        @nnx.vmap(in_axes=(0, None, 0), out_axes=0)
        def run(edge: MixedEdge, x: jax.Array, w: jax.Array) -> jax.Array:
            return edge(x, w, train)

        return run(self.edges, x, weights)


class FixedEdge(nnx.Module):
    """One chosen op on an edge (a derived cell), shaped as a group of one."""

    def __init__(self, op_name: str, channels: int, stride: int, rngs: nnx.Rngs) -> None:
        self.op = build_op(op_name, channels, stride, True, rngs)

    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array:
        return self.op(x, train)[None]


class EdgeGroup(NamedTuple):
    """Edges leaving node `source` (indices count the inputs) for intermediate `targets`."""

    source: int
    targets: tuple[int, ...]
    edge_ids: tuple[int, ...]


def group_by_source(wiring: Sequence[tuple[int, int]]) -> list[EdgeGroup]:
    """Groups the (node, source) edges of a cell by source node, in source order."""
    groups = []
    for src in sorted({s for _, s in wiring}):
        ids = tuple(i for i, (_, s) in enumerate(wiring) if s == src)
        groups.append(EdgeGroup(src, tuple(wiring[i][0] for i in ids), ids))
    return groups


class Cell(nnx.Module):
    """A cell: two preprocessed inputs, intermediate nodes summing their edges, concat.

    Edges are run in groups that share a source node, as soon as that node is known.

    Args:
        plan: channels and kind of this cell.
        wiring: (node, source) per edge; nodes count intermediate nodes from 0, sources
            count every node (0 and 1 are the inputs).
        make_group: builds the edges of a group given (group, channels, stride, rngs); it
            returns a module mapping (x, weights of the group's edges, train) to the
            stacked outputs (edges, B, H', W', C).
        concat: node indices (counting inputs) whose states are concatenated.
        affine: whether the preprocessing BatchNorms learn a scale and bias.
    """

    def __init__(
        self,
        plan: CellPlan,
        wiring: Sequence[tuple[int, int]],
        make_group: Callable[[EdgeGroup, int, int, nnx.Rngs], Edge],
        concat: Sequence[int],
        affine: bool,
        rngs: nnx.Rngs,
    ) -> None:
        c = plan.channels
        if plan.reduction_prev:
            self.pre0 = FactorizedReduce(plan.c_prev_prev, c, affine, rngs)
        else:
            self.pre0 = ReLUConvBN(plan.c_prev_prev, c, 1, 1, 0, affine, rngs)
        self.pre1 = ReLUConvBN(plan.c_prev, c, 1, 1, 0, affine, rngs)
        self.groups = group_by_source(wiring)
        self.edges = nnx.List(
            [
                make_group(g, c, 2 if plan.reduction and g.source < 2 else 1, rngs)
                for g in self.groups
            ]
        )
        self.n_nodes = max(node for node, _ in wiring) + 1
        self.concat = tuple(concat)
        self.reduction = plan.reduction

    def __call__(
        self, s0: jax.Array, s1: jax.Array, weights: jax.Array | None, train: bool
    ) -> jax.Array:
        """Runs the cell; `weights` holds one row of op weights per edge (mixed edges)."""
        states = [self.pre0(s0, train), self.pre1(s1, train)]
        partial: dict[int, jax.Array] = {}
        for group, edges in zip(self.groups, self.edges):
            while len(states) <= group.source:  # every edge into this node has run
                states.append(partial.pop(len(states) - 2))
            rows = None if weights is None else weights[jnp.asarray(group.edge_ids)]
            outputs = edges(states[group.source], rows, train)
            for target, y in zip(group.targets, outputs):
                partial[target] = y if target not in partial else partial[target] + y
        while len(states) < 2 + self.n_nodes:
            states.append(partial.pop(len(states) - 2))
        return jnp.concatenate([states[i] for i in self.concat], axis=-1)
