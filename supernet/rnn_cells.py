"""The DARTS recurrent cell (Liu et al., ICLR 2019): the supernet cell whose edges mix
activations, the cell of a genotype, and the time loop that steps either.

One step of a cell reads the input `x` and the previous hidden state `h`. Its first
state is a highway between `h` and a candidate from both: ``W0 [x, h]`` splits into a
gate `c0` and a candidate `h0`, and ``s0 = h + sigmoid(c0) * (tanh(h0) - h)``. Node i
projects a source state `s` with its own matrix ``W[i]`` (shared by every edge entering
it) to a gate and a candidate, and outputs ``s + sigmoid(c) * (op(h) - s)``; the cell
outputs the mean of the nodes its genotype lists (all intermediate nodes when searched).
Weights start uniform in ±0.04, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from nasax.core.errors import GenotypeError
from nasax.supernet.genotypes import Genotype
from nasax.supernet.ops import BatchNorm, ParamKeys, flat_uniform, param_keys
from nasax.supernet.rnn_ops import RNN_OPS, Activation
from nasax.supernet.spaces import SPACES, SearchSpace

CELL_KIND = "recurrent"
"""The one cell kind of a recurrent space."""

INIT_RANGE = 0.04
"""Recurrent weights and embeddings start uniform in ±INIT_RANGE (the DARTS reference)."""


def uniform_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """U(-INIT_RANGE, INIT_RANGE), the reference's initialisation of every weight here."""
    return flat_uniform(key, tuple(shape), jnp.dtype(dtype), -INIT_RANGE, INIT_RANGE)


def masked(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`x` times a dropout mask (broadcast), or `x` itself without one."""
    return x if mask is None else x * mask


def highway(s: jax.Array, ch: jax.Array, act: Activation) -> jax.Array:
    """``s + sigmoid(c) * (act(h) - s)`` with (c, h) the two halves of `ch`'s last axis:
    a node's state, a gated step from its source `s` towards the activated candidate."""
    c, h = jnp.split(ch, 2, axis=-1)
    return s + jax.nn.sigmoid(c) * (act(h) - s)


class NodePath(NamedTuple):
    """A single-path cell of a one-input-per-node space: per node, the index of the state
    it reads (0 is the first state) and of its op in the space's ops (ENAS' sampled
    cells, random search). A pytree of two (nodes,) int arrays."""

    sources: jax.Array
    ops: jax.Array


def genotype_path(genotype: Genotype, space: SearchSpace) -> NodePath:
    """The NodePath of a recurrent genotype with the space's node count, in its ops."""
    nodes, _ = genotype.cell(CELL_KIND)
    if len(nodes) != space.n_nodes or any(len(node) != 1 for node in nodes):
        raise GenotypeError(
            f"a path of space {space.name!r} has {space.n_nodes} nodes of one input each; "
            f"the genotype has {[len(node) for node in nodes]} inputs per node"
        )
    foreign = sorted({node[0][0] for node in nodes} - set(space.ops))
    if foreign:
        raise GenotypeError(
            f"genotype ops {foreign} are not ops of space {space.name!r} ({', '.join(space.ops)})"
        )
    sources = jnp.array([node[0][1] for node in nodes], jnp.int32)
    return NodePath(sources, jnp.array([space.ops.index(node[0][0]) for node in nodes], jnp.int32))


def recurrent_space(genotype: Genotype) -> SearchSpace:
    """The space of a recurrent genotype, validated; a one-line GenotypeError for any
    other genotype (a DARTS or NAS-Bench-201 image cell)."""
    genotype.validate()
    space = genotype.resolve_space()
    if space.skeleton != "rnn":
        rnn_spaces = [name for name in SPACES.names() if SPACES.get(name).skeleton == "rnn"]
        raise GenotypeError(
            f"genotype is for space {space.name!r}, whose {space.skeleton} skeleton builds "
            f"image networks of {' and '.join(space.cell_kinds)} cells; a recurrent cell needs "
            f"a genotype of space {' or '.join(rnn_spaces)} with a {CELL_KIND!r} cell, "
            "e.g. nasax.supernet.DARTS_RNN_V2"
        )
    return space


class RecurrentCell(nnx.Module):
    """What the search cell and the cell of a genotype share: the first state's matrix
    `w0` ((input + hidden, 2 hidden)) and one matrix per node, stacked in `ws`
    ((nodes, hidden, 2 hidden)), so a searched cell's weights load into its derived cell.
    """

    def __init__(
        self, input_size: int, hidden_size: int, n_nodes: int, rngs: nnx.Rngs | ParamKeys
    ) -> None:
        rngs, width = param_keys(rngs), 2 * hidden_size
        self.w0 = nnx.Param(uniform_init(rngs.params(), (input_size + hidden_size, width)))
        self.ws = nnx.Param(uniform_init(rngs.params(), (n_nodes, hidden_size, width)))
        self.input_size, self.hidden_size, self.n_nodes = input_size, hidden_size, n_nodes

    def first_state(
        self, x: jax.Array, h: jax.Array, x_mask: jax.Array | None, h_mask: jax.Array | None
    ) -> jax.Array:
        """s0, the highway between `h` and the candidate from the (dropped-out) x and h."""
        xh = jnp.concatenate([masked(x, x_mask), masked(h, h_mask)], axis=-1)
        return highway(h, xh @ self.w0[...], jnp.tanh)

    def project(self, node: int, s: jax.Array, h_mask: jax.Array | None) -> jax.Array:
        """Node `node`'s gate and candidate (concatenated) from a source state `s`."""
        return masked(s, h_mask) @ self.ws[node]


class RNNSearchCell(RecurrentCell):
    """The DARTS recurrent supernet cell: every node reads every earlier state, each edge
    mixing the ops of `space` (the reference's DARTSCellSearch).

    With `batch_norm` (the reference's search cell) one BatchNorm without scale or bias
    normalises the first state and every node, with its own batch statistics in training
    and running ones in evaluation; the derived cell has none.

    Args:
        space: a recurrent space (`darts_rnn`, `enas_rnn` or one defined from them).
        input_size: features of `x` (the embedding size).
        hidden_size: features of the hidden state.
        batch_norm: normalise the states as the reference's search cell does.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        input_size: int,
        hidden_size: int,
        batch_norm: bool = True,
        rngs: nnx.Rngs | ParamKeys,
    ) -> None:
        check_recurrent_space(space)
        super().__init__(input_size, hidden_size, space.n_nodes, rngs)
        self.space = space
        self.bn = BatchNorm(hidden_size, False) if batch_norm else None

    def __call__(
        self,
        x: jax.Array,
        h: jax.Array,
        weights: jax.Array | None = None,
        *,
        path: jax.Array | NodePath | None = None,
        train: bool = False,
        x_mask: jax.Array | None = None,
        h_mask: jax.Array | None = None,
    ) -> jax.Array:
        """One time step: the next hidden state, (batch, hidden).

        Args:
            x: (batch, input) input at this step.
            h: (batch, hidden) previous hidden state.
            weights: (edges, ops) op weights (the mixture). With a per-edge `path`, the
                straight-through weights of GDAS (as `MixedEdge.single`); None with a path
                runs the path as it is.
            path: single path: (edges,) op index per edge (each edge runs one op, `none`
                drops it: the image supernets' form), or a NodePath (each node reads one
                state with one op; the only form for spaces without `none`).
            train: normalise with batch statistics and update the running ones.
            x_mask, h_mask: dropout masks on x and on every state a node projects
                (DARTS' dropoutx and dropouth), one per sequence; None: no dropout.
        """
        n_edges, n_ops = self.space.n_edges, self.space.n_ops
        if weights is not None and weights.shape != (n_edges, n_ops):
            raise ValueError(
                f"op weights of shape {weights.shape} for a cell of {n_edges} edges and "
                f"{n_ops} ops; pass ({n_edges}, {n_ops})"
            )
        if weights is None and path is None:
            raise ValueError("the search cell needs op weights, a path, or both")
        if isinstance(path, NodePath) and weights is not None:
            raise ValueError("a NodePath runs one op per node as it is; pass weights=None")
        states = [self._norm(self.first_state(x, h, x_mask, h_mask), train)]
        for node in range(self.n_nodes):
            if isinstance(path, NodePath):
                s = self._node_path(node, states, path, h_mask)
            elif path is not None:
                s = self._edge_path(node, states, weights, path, h_mask)
            else:
                s = self._mixture(node, states, weights, h_mask)
            states.append(self._norm(s, train))
        return jnp.mean(jnp.stack(states[1:]), axis=0)

    def _norm(self, s: jax.Array, train: bool) -> jax.Array:
        if self.bn is None:
            return s
        return self.bn(s[:, None, None, :], train)[:, 0, 0, :]

    def _mixture(
        self, node: int, states: list[jax.Array], weights: jax.Array, h_mask: jax.Array | None
    ) -> jax.Array:
        """Sum over the node's edges and non-zero ops of weight times highway output."""
        edges = self.space.node_edges(node)
        w = weights[edges.start : edges.stop]
        sources = jnp.stack(states)
        ch = self.project(node, sources, h_mask)
        out = jnp.zeros_like(states[0])
        for k, name in enumerate(self.space.ops):
            op = RNN_OPS.get(name)
            if not op.zero:
                out = out + jnp.einsum("e,ebh->bh", w[:, k], highway(sources, ch, op.fn))
        return out

    def _branches(self, node: int, h_mask: jax.Array | None) -> list[Callable]:
        """Per op of the space, node `node`'s output from one source state."""

        def branch(name: str) -> Callable[[jax.Array], jax.Array]:
            op = RNN_OPS.get(name)
            if op.zero:
                return jnp.zeros_like
            return lambda s: highway(s, self.project(node, s, h_mask), op.fn)

        return [branch(name) for name in self.space.ops]

    def _edge_path(
        self,
        node: int,
        states: list[jax.Array],
        weights: jax.Array | None,
        path: jax.Array,
        h_mask: jax.Array | None,
    ) -> jax.Array:
        """Sum over the node's edges of each edge's one op (`lax.switch`); an index past the
        ops (a dropped edge of a space without `none`) adds nothing."""
        branches = [*self._branches(node, h_mask), jnp.zeros_like]
        out = jnp.zeros_like(states[0])
        for src, e in enumerate(self.space.node_edges(node)):
            y = lax.switch(path[e], branches, states[src])
            if weights is not None:
                chosen = weights[e, path[e]]
                y = chosen * y + (jnp.sum(weights[e]) - chosen)
            out = out + y
        return out

    def _node_path(
        self, node: int, states: list[jax.Array], path: NodePath, h_mask: jax.Array | None
    ) -> jax.Array:
        """The node's one source through its one op."""
        source = jnp.stack(states)[path.sources[node]]
        return lax.switch(path.ops[node], self._branches(node, h_mask), source)


class DiscreteRNNCell(RecurrentCell):
    """The recurrent cell of a genotype (the reference's DARTSCell), a plain module:
    call it one step at a time, ``h = cell(x_t, h)``, or over a sequence with `scan`.

    Args:
        genotype: a genotype of a recurrent space (`DARTS_RNN_V2`, a searched one); any
            node count, each node one (op, input) pair.
        input_size: features of `x`.
        hidden_size: features of the hidden state.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        input_size: int,
        hidden_size: int,
        rngs: nnx.Rngs | ParamKeys,
    ) -> None:
        recurrent_space(genotype)
        nodes, concat = genotype.cell(CELL_KIND)
        super().__init__(input_size, hidden_size, len(nodes), rngs)
        self.genotype = genotype
        self.nodes = tuple(node[0] for node in nodes)
        self.concat = tuple(concat)

    def __call__(
        self,
        x: jax.Array,
        h: jax.Array,
        *,
        x_mask: jax.Array | None = None,
        h_mask: jax.Array | None = None,
    ) -> jax.Array:
        """One time step: the next hidden state (batch, hidden) from `x` (batch, input)
        and `h` (batch, hidden); masks as in `RNNSearchCell.__call__`."""
        states = [self.first_state(x, h, x_mask, h_mask)]
        for node, (name, src) in enumerate(self.nodes):
            s = states[src]
            states.append(highway(s, self.project(node, s, h_mask), RNN_OPS.get(name).fn))
        return jnp.mean(jnp.stack([states[i] for i in self.concat]), axis=0)

    def scan(
        self,
        xs: jax.Array,
        h: jax.Array,
        *,
        x_mask: jax.Array | None = None,
        h_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The cell over a sequence `xs` (batch, time, input) from `h`: every step's
        hidden state (batch, time, hidden) and the last one (`scan_cell`)."""
        return scan_cell(self, xs, h, x_mask=x_mask, h_mask=h_mask)


def check_recurrent_space(space: SearchSpace) -> None:
    """ValueError unless `space` is a recurrent space (one input, one cell kind)."""
    if space.skeleton != "rnn" or space.n_inputs != 1 or space.cell_kinds != (CELL_KIND,):
        raise ValueError(
            f"the rnn skeleton builds one-input cells of one kind ({CELL_KIND!r}); space "
            f"{space.name!r} uses the {space.skeleton!r} skeleton with {space.n_inputs} inputs "
            f"and cells {list(space.cell_kinds)}: build it with "
            "nasax.supernet.skeleton_of(space).search_network"
        )


def scan_cell(
    cell: nnx.Module,
    xs: jax.Array,
    h: jax.Array,
    *,
    valid: jax.Array | None = None,
    **step_args: Any,
) -> tuple[jax.Array, jax.Array]:
    """Steps `cell(x_t, h, **step_args)` along axis 1 of `xs` in one `lax.scan`.

    The step is traced and compiled once, whatever the length. Parameters enter the loop
    as constants; BatchNorm statistics (the search cell's) are carried from step to
    step and written back to `cell` afterwards, as the reference updates them per step.

    Args:
        cell: a recurrent cell (`DiscreteRNNCell`, `RNNSearchCell`).
        xs: (batch, time, input) inputs.
        h: (batch, hidden) initial hidden state.
        valid: optional (batch, time) mask of real steps: where it is 0 (the padding of a
            shorter window) the state stays as it was, so the last state is the one after
            the last real step, and a step no row needs is skipped (`lax.cond`). One
            padded length then serves windows of any length at the cost of the real ones.
        step_args: passed to every step (weights, path, masks, train), the same each step.

    Returns:
        (batch, time, hidden) hidden states and the last one, (batch, hidden).
    """
    graphdef, stats, rest = nnx.split(cell, nnx.BatchStat, ...)

    def cell_step(carry: tuple[nnx.State, jax.Array], inputs: tuple) -> tuple[tuple, jax.Array]:
        stats, h = carry
        x, real = inputs
        module = nnx.merge(graphdef, stats, rest)
        new = module(x, h, **step_args)
        if real is not None:  # rows whose window ended keep their state
            new = jnp.where(real[:, None] > 0, new, h)
        return (nnx.state(module, nnx.BatchStat), new), new

    def step(carry: tuple[nnx.State, jax.Array], inputs: tuple) -> tuple[tuple, jax.Array]:
        real = inputs[1]
        if real is None:
            return cell_step(carry, inputs)
        # a padded step changes neither the state nor BN statistics, and costs nothing
        return lax.cond(jnp.any(real > 0), cell_step, lambda c, _: (c, c[1]), carry, inputs)

    real = None if valid is None else jnp.swapaxes(valid, 0, 1)
    inputs = (jnp.swapaxes(xs, 0, 1), real)

    def loop(body: Callable) -> Callable[..., tuple]:
        return lambda stats, h: lax.scan(body, (stats, h), inputs)

    # On CPU, reverse mode through the scan with every step's intermediates kept ran 3x
    # slower than recomputing each step's forward in the backward pass (17.9 s against
    # 5.9 s for a gradient of the 300-wide search cell over 35 steps of 256 rows; see
    # benchmarks/README.md); elsewhere the plain scan keeps them.
    remat = jax.checkpoint(step, policy=jax.checkpoint_policies.dots_saveable)
    (stats, h), hs = lax.platform_dependent(stats, h, cpu=loop(remat), default=loop(step))
    nnx.update(cell, stats)
    return jnp.swapaxes(hs, 0, 1), h


__all__ = [
    "CELL_KIND",
    "DiscreteRNNCell",
    "NodePath",
    "RNNSearchCell",
    "RecurrentCell",
    "check_recurrent_space",
    "genotype_path",
    "highway",
    "recurrent_space",
    "scan_cell",
]
