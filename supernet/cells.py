"""One cell implementation with two edge kinds: mixed edges (search) and fixed edges."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.supernet.ops import OPS, BatchNorm, FactorizedReduce, ReLUConvBN, build_op


class Edge(Protocol):
    """An edge module; `droppable` says whether drop path may zero its output."""

    droppable: bool

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
                BatchNorm(channels, False) if specs[k].norm_on_mixed_edge else None
                for k in self.positions
            ]
        )
        self.stride = stride
        self.droppable = False

    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array:
        out = None
        for k, op, bn in zip(self.positions, self.ops, self.norms):
            y = op(x, train)
            if bn is not None:
                y = bn(y, train)
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


def reduction_indices(layers: int) -> tuple[int, int]:
    """Positions of the two reduction cells in a stack of `layers` cells (1/3 and 2/3)."""
    return layers // 3, 2 * layers // 3


def plan_cells(
    stem_channels: int, channels: int, layers: int, n_out: int, n_out_reduce: int | None = None
) -> list[CellPlan]:
    """Channel plan of a DARTS stack: reductions at 1/3 and 2/3 of the depth double C.

    Args:
        stem_channels: channels the stem outputs (the first cells' two inputs).
        channels: C of the first cell.
        layers: number of cells.
        n_out: nodes a normal cell concatenates, so it outputs n_out * C channels.
        n_out_reduce: the same for reduction cells (default: `n_out`).
    """
    n_out_reduce = n_out if n_out_reduce is None else n_out_reduce
    plans, c_pp, c_p, c, red_prev = [], stem_channels, stem_channels, channels, False
    for i in range(layers):
        red = i in reduction_indices(layers)
        c = 2 * c if red else c
        plans.append(CellPlan(c_pp, c_p, c, red, red_prev))
        c_pp, c_p, red_prev = c_p, (n_out_reduce if red else n_out) * c, red
    return plans


def drop_path(x: jax.Array, rate: jax.Array | float, rng: jax.Array) -> jax.Array:
    """Zeroes whole examples of `x` with probability `rate` and rescales the rest.

    At rate 0 every example is kept and `x` comes back unchanged.
    """
    keep = 1.0 - jnp.asarray(rate, x.dtype)
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype))


class FixedEdge(nnx.Module):
    """One chosen op on an edge (a derived cell); BatchNorms are affine."""

    def __init__(self, op_name: str, channels: int, stride: int, rngs: nnx.Rngs) -> None:
        self.op_name = op_name
        self.op = build_op(op_name, channels, stride, True, rngs)
        # Drop path spares identity edges, as in the DARTS reference.
        self.droppable = not (OPS.get(op_name).identity_at_stride_1 and stride == 1)

    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array:
        return self.op(x, train)


class Cell(nnx.Module):
    """A cell: two preprocessed inputs, intermediate nodes summing their edges, concat.

    Every edge is its own module. (Stacking the edges that share a source and running
    them under `vmap` or a loop compiles several times faster, but runs 7-8x slower
    on CPU, where XLA lowers the batched convs to slow grouped convs.)

    Args:
        plan: channels and kind of this cell.
        wiring: (node, source) per edge; nodes count intermediate nodes from 0, sources
            count every node (0 and 1 are the inputs).
        make_edge: builds edge `i` of `wiring` given (i, channels, stride, rngs).
        concat: node indices (counting inputs) whose states are concatenated.
        affine: whether the preprocessing BatchNorms learn a scale and bias.
    """

    def __init__(
        self,
        plan: CellPlan,
        wiring: Sequence[tuple[int, int]],
        make_edge: Callable[[int, int, int, nnx.Rngs], Edge],
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
        self.wiring = tuple(wiring)
        self.edges = nnx.List(
            [
                make_edge(i, c, 2 if plan.reduction and src < 2 else 1, rngs)
                for i, (_, src) in enumerate(self.wiring)
            ]
        )
        self.n_nodes = max(node for node, _ in self.wiring) + 1
        self.concat = tuple(concat)
        self.reduction = plan.reduction

    def __call__(
        self,
        s0: jax.Array,
        s1: jax.Array,
        weights: jax.Array | None,
        train: bool,
        drop_rate: jax.Array | float | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Runs the cell.

        Args:
            s0, s1: outputs of the cell two back and of the previous cell (NHWC).
            weights: one row of op weights per edge (mixed edges), else None.
            train: training mode (batch statistics, drop path).
            drop_rate: drop-path rate for the droppable edges, used in training when
                `rng` is given.
            rng: key for drop path; each edge folds in its index.
        """
        dropping = train and rng is not None and drop_rate is not None
        states = [self.pre0(s0, train), self.pre1(s1, train)]
        for node in range(self.n_nodes):
            acc = None
            for i, (target, src) in enumerate(self.wiring):
                if target != node:
                    continue
                edge = self.edges[i]
                y = edge(states[src], None if weights is None else weights[i], train)
                if dropping and edge.droppable:
                    y = drop_path(y, drop_rate, jax.random.fold_in(rng, i))
                acc = y if acc is None else acc + y
            states.append(acc)
        return jnp.concatenate([states[i] for i in self.concat], axis=-1)
