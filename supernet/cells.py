"""One cell implementation with two edge kinds: mixed edges (search) and fixed edges;
the DARTS cell of a genotype as a module of its own (`DiscreteCell`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.engine import taps
from nasax.engine.marking import block
from nasax.supernet.genotypes import Genotype
from nasax.supernet.ops import OPS, BatchNorm, FactorizedReduce, ReLUConvBN, build_op, param_keys


class Edge(Protocol):
    """An edge module; `droppable` says whether drop path may zero its output."""

    droppable: bool

    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array: ...


class MixedEdge(nnx.Module):
    """Every candidate op of an edge; the output is their weighted sum, or one op's.

    Ops that output zeros (`none`) are not computed: their weight still enters the
    softmax that made `weights`, but adds nothing to the sum. A strategy that changes
    what an edge does (PC-DARTS' partial channels, DARTS-' auxiliary skip) subclasses it
    in its own module and overrides `forward`, and hands the class to the supernet
    (`edge=`); the subclass keeps the op parameters where this class puts them.

    Args:
        op_names: the space's ops, in the order of the weight rows.
        channels: channels in and out.
        stride: 2 on the edges of a reduction cell that leave its inputs.
        rngs: parameter keys.
        pool_norms: follow the ops flagged `norm_on_mixed_edge` (DARTS' pools) with a
            non-affine BatchNorm; spaces like NAS-Bench-201 do not.
    """

    def __init__(
        self,
        op_names: Sequence[str],
        channels: int,
        stride: int,
        rngs: nnx.Rngs,
        *,
        pool_norms: bool = True,
    ) -> None:
        specs = [OPS.get(name) for name in op_names]
        self.n_ops = len(specs)
        self.positions = tuple(k for k, spec in enumerate(specs) if not spec.zero)
        self.ops = nnx.List(
            [build_op(op_names[k], channels, stride, False, rngs) for k in self.positions]
        )
        self.norms = nnx.List(
            [
                BatchNorm(channels, False) if pool_norms and specs[k].norm_on_mixed_edge else None
                for k in self.positions
            ]
        )
        self.channels, self.stride = channels, stride
        self.droppable = False

    def _op(self, j: int, x: jax.Array, train: bool) -> jax.Array:
        y = self.ops[j](x, train)
        return y if self.norms[j] is None else self.norms[j](y, train)

    def _zeros(self, x: jax.Array) -> jax.Array:
        return jnp.zeros_like(x[:, :: self.stride, :: self.stride, :])

    def mixed(self, x: jax.Array, weights: jax.Array, train: bool) -> jax.Array:
        """The ops' sum weighted by `weights` (one row of the ops' length)."""
        if weights.shape[-1] != self.n_ops:
            raise ValueError(
                f"{weights.shape[-1]} op weights for an edge of {self.n_ops} ops; a strategy "
                "that weighs more than the ops builds the supernet with its own edge (edge=)"
            )
        out = None
        for j, k in enumerate(self.positions):
            term = weights[k] * self._op(j, x, train)
            out = term if out is None else out + term
        return self._zeros(x) if out is None else out

    def single(
        self, x: jax.Array, weights: jax.Array | None, path: jax.Array, train: bool
    ) -> jax.Array:
        """Computes only op `path` (`lax.switch` through `nnx.switch`, so BN statistics of
        the chosen op are updated and the others left alone).

        With `weights` (GDAS' straight-through one-hot) the output is
        ``weights[path] * op(x) + sum of the other weights``: the same value as the
        weighted sum of a one-hot, and every weight still gets a gradient.
        """
        position = {k: j for j, k in enumerate(self.positions)}

        def branch(k: int) -> Callable[[MixedEdge, jax.Array], jax.Array]:
            if k in position:
                return lambda edge, x: edge._op(position[k], x, train)
            return lambda edge, x: edge._zeros(x)

        y = taps.switch(path, [branch(k) for k in range(self.n_ops)], self, x)
        if weights is None:
            return y
        chosen = weights[path]
        return chosen * y + (jnp.sum(weights) - chosen).astype(y.dtype)

    def forward(
        self, x: jax.Array, weights: jax.Array | None, train: bool, path: jax.Array | None
    ) -> jax.Array:
        """The edge's output: the mixture, or one op where `path` is given."""
        if path is None:
            return self.mixed(x, weights, train)
        return self.single(x, weights, path, train)

    @block
    def __call__(
        self,
        x: jax.Array,
        weights: jax.Array | None,
        train: bool,
        path: jax.Array | None = None,
    ) -> jax.Array:
        """The edge's output, as one block of the step (`forward` says what it is).

        Args:
            x: NHWC input.
            weights: (ops,) op weights; None only with `path` (a plain single path).
            train: training mode.
            path: optional int scalar: compute only this op (GDAS, random search, ENAS).
        """
        return self.forward(x, weights, train, path)


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

    @block
    def __call__(self, x: jax.Array, weights: jax.Array | None, train: bool) -> jax.Array:
        return self.op(x, train)


def fixed_edges(genotype: Genotype, kind: str) -> Callable[[int, int, int, nnx.Rngs], FixedEdge]:
    """`make_edge` for the cells of a genotype's `kind`: edge i runs the op it chose."""
    _, ops = genotype.wiring(kind)

    def make_edge(i: int, c: int, stride: int, rngs: nnx.Rngs) -> FixedEdge:
        return FixedEdge(ops[i], c, stride, rngs)

    return make_edge


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
        weights: jax.Array | None = None,
        train: bool = False,
        drop_path_rate: jax.Array | float | None = None,
        rng: jax.Array | None = None,
        *,
        paths: jax.Array | None = None,
        edge_weights: jax.Array | None = None,
    ) -> jax.Array:
        """Runs the cell.

        Args:
            s0, s1: outputs of the cell two back and of the previous cell (NHWC).
            weights: one row of op weights per edge (mixed edges), else None.
            train: training mode (batch statistics, drop path).
            drop_path_rate: drop-path rate for the droppable edges, used in training
                when `rng` is given.
            rng: key for drop path; each edge folds in its index.
            paths: optional (edges,) int op index per mixed edge: compute only that op.
            edge_weights: optional (edges,) factor on each edge's output (PC-DARTS' beta).
        """
        states = [self.pre0(s0, train), self.pre1(s1, train)]
        states = run_nodes(
            states,
            self.edges,
            self.wiring,
            self.n_nodes,
            weights,
            train,
            drop_path_rate,
            rng,
            paths=paths,
            edge_weights=edge_weights,
        )
        return jnp.concatenate([states[i] for i in self.concat], axis=-1)


def run_nodes(
    inputs: Sequence[jax.Array],
    edges: Sequence[Edge],
    wiring: Sequence[tuple[int, int]],
    n_nodes: int,
    weights: jax.Array | None,
    train: bool,
    drop_path_rate: jax.Array | float | None = None,
    rng: jax.Array | None = None,
    *,
    paths: jax.Array | None = None,
    edge_weights: jax.Array | None = None,
) -> list[jax.Array]:
    """The states of a cell: its inputs, then each intermediate node as the sum of its edges.

    Shared by every cell shape, so mixed and fixed edges, single paths, edge weights and
    drop path behave the same in all of them. Arguments are as in `Cell.__call__`;
    `wiring[i]` is edge i's (node, source), sources counting the inputs first.
    """
    dropping = train and rng is not None and drop_path_rate is not None
    states = list(inputs)
    for node in range(n_nodes):
        acc = None
        for i, (target, src) in enumerate(wiring):
            if target != node:
                continue
            edge = edges[i]
            w = None if weights is None else weights[i]
            if paths is None:
                y = edge(states[src], w, train)
            else:
                y = edge(states[src], w, train, path=paths[i])
            if edge_weights is not None:
                y = edge_weights[i] * y
            if dropping and edge.droppable:
                y = drop_path(y, drop_path_rate, jax.random.fold_in(rng, i))
            acc = y if acc is None else acc + y
        states.append(acc)
    return states


class PlainCell(nnx.Module):
    """A cell with one input taken as it is (no preprocessing) and stride-1 edges.

    NAS-Bench-201's cell: node i sums its edges from the input and earlier nodes; the
    output is the concatenation of the `concat` states (there: just the last node), so
    with one node in `concat` the cell keeps its channel count.

    Args:
        channels: C of the input and of every node.
        wiring: (node, source) per edge; source 0 is the input, 1.. the nodes.
        make_edge: builds edge `i` of `wiring` given (i, channels, stride, rngs).
        concat: state indices (0 is the input) that form the output.
    """

    def __init__(
        self,
        channels: int,
        wiring: Sequence[tuple[int, int]],
        make_edge: Callable[[int, int, int, nnx.Rngs], Edge],
        concat: Sequence[int],
        rngs: nnx.Rngs,
    ) -> None:
        self.wiring = tuple(wiring)
        self.edges = nnx.List([make_edge(i, channels, 1, rngs) for i in range(len(self.wiring))])
        self.n_nodes = max(node for node, _ in self.wiring) + 1
        self.concat = tuple(concat)

    def __call__(
        self,
        x: jax.Array,
        weights: jax.Array | None = None,
        train: bool = False,
        drop_path_rate: jax.Array | float | None = None,
        rng: jax.Array | None = None,
        *,
        paths: jax.Array | None = None,
        edge_weights: jax.Array | None = None,
    ) -> jax.Array:
        """Runs the cell on NHWC `x`; the other arguments are as in `Cell.__call__`."""
        states = run_nodes(
            [x],
            self.edges,
            self.wiring,
            self.n_nodes,
            weights,
            train,
            drop_path_rate,
            rng,
            paths=paths,
            edge_weights=edge_weights,
        )
        outputs = [states[i] for i in self.concat]
        return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)


class DiscreteCell(nnx.Module):
    """One cell of a genotype (`kind` "normal" or "reduce") with affine BatchNorms.

    Call as `cell(s0, s1, train=..., drop_path_rate=..., rng=...)` with `s0` the output
    of the cell two back and `s1` of the previous one (NHWC). It outputs
    `len(concat) * channels` channels, at half the resolution when it is a reduction cell.

    Args:
        genotype: the genotype; it is validated against its space.
        kind: which of its cells to build.
        c_prev_prev, c_prev: channels of `s0` and `s1`.
        channels: C, the channels of every node inside the cell.
        reduction_prev: the previous cell halved the resolution, so `s0` is twice as
            large as `s1` and is reduced on the way in.
    """

    def __init__(
        self,
        genotype: Genotype,
        kind: str,
        *,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction_prev: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        genotype.validate()
        rngs = param_keys(rngs)
        wiring, _ = genotype.wiring(kind)
        _, concat = genotype.cell(kind)
        plan = CellPlan(c_prev_prev, c_prev, channels, kind == "reduce", reduction_prev)
        self.cell = Cell(plan, wiring, fixed_edges(genotype, kind), concat, True, rngs)
        self.out_channels = len(concat) * channels

    def __call__(
        self,
        s0: jax.Array,
        s1: jax.Array,
        *,
        train: bool = False,
        drop_path_rate: jax.Array | float = 0.0,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """The cell's output. Drop path acts only with `train=True` and an `rng`."""
        return self.cell(s0, s1, None, train, drop_path_rate, rng)
