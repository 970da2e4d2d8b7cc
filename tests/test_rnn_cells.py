"""The recurrent cells: the supernet cell on a one-hot mixture or a single path is the cell
of that genotype; the scanned cell is the cell stepped in Python; the search BatchNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.supernet import (
    DARTS_RNN_SPACE,
    DARTS_RNN_V1,
    DARTS_RNN_V2,
    DiscreteRNNCell,
    Genotype,
    RNNSearchCell,
)
from nasax.supernet.rnn_cells import genotype_path, scan_cell
from nasax.supernet.rnn_network import dropout_mask
from tests.tolerance import assert_close

SPACE = DARTS_RNN_SPACE
X, H, B = 3, 5, 4
"""Input and hidden sizes, batch."""


def random_genotype(seed: int) -> Genotype:
    """A cell of darts_rnn with a random input and a random non-`none` op per node."""
    rng = np.random.default_rng(seed)
    ops = [op for op in SPACE.ops if op != "none"]
    nodes = [(str(rng.choice(ops)), int(rng.integers(0, n + 1))) for n in range(SPACE.n_nodes)]
    return Genotype({"recurrent": ([(pair,) for pair in nodes], range(1, 9))}, "darts_rnn")


def one_hot(genotype: Genotype) -> jax.Array:
    """(edges, ops) weights: 1 on each node's chosen edge and op, 0 elsewhere."""
    w = np.zeros((SPACE.n_edges, SPACE.n_ops), np.float32)
    for node, ((op, src),) in enumerate(genotype.recurrent):
        w[SPACE.node_edges(node)[src], SPACE.ops.index(op)] = 1.0
    return jnp.asarray(w)


def edge_path(genotype: Genotype) -> jax.Array:
    """(edges,) op per edge: the chosen ops, `none` on every other edge."""
    path = np.full(SPACE.n_edges, SPACE.ops.index("none"), np.int32)
    for node, ((op, src),) in enumerate(genotype.recurrent):
        path[SPACE.node_edges(node)[src]] = SPACE.ops.index(op)
    return jnp.asarray(path)


def inputs(seed: int, steps: int = 1) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """xs (batch, steps, input), h, and dropout masks for x and h."""
    keys = jax.random.split(jax.random.key(seed), 4)
    xs = jax.random.normal(keys[0], (B, steps, X))
    h = jnp.tanh(jax.random.normal(keys[1], (B, H)))
    return xs, h, dropout_mask(keys[2], 0.5, (B, X)), dropout_mask(keys[3], 0.25, (B, H))


def cells(genotype: Genotype, seed: int) -> tuple[RNNSearchCell, DiscreteRNNCell]:
    """A supernet cell without BatchNorm, and the genotype's cell with its weights."""
    search = RNNSearchCell(
        SPACE, input_size=X, hidden_size=H, batch_norm=False, rngs=nnx.Rngs(seed)
    )
    discrete = DiscreteRNNCell(genotype, input_size=X, hidden_size=H, rngs=nnx.Rngs(seed + 100))
    nnx.update(discrete, nnx.state(search, nnx.Param))
    return search, discrete


@pytest.mark.parametrize("genotype", [DARTS_RNN_V1, DARTS_RNN_V2, random_genotype(0)])
def test_the_supernet_on_one_genotype_is_that_genotype_cell(genotype):
    search, discrete = cells(genotype, 0)
    xs, h, x_mask, h_mask = inputs(1)
    masks = {"x_mask": x_mask, "h_mask": h_mask}
    expected = discrete(xs[:, 0], h, **masks)
    forms = {
        "one-hot mixture": {"weights": one_hot(genotype)},
        "one op per edge": {"path": edge_path(genotype)},
        "one input and op per node": {"path": genotype_path(genotype, SPACE)},
    }
    for form, args in forms.items():
        assert_close(
            search(xs[:, 0], h, **args, **masks),
            expected,
            terms=2 * (X + H),
            magnitude=4.0,
            why=f"{form}: the same dots, the other edges and ops add exact zeros",
        )


def test_a_mixture_ignores_the_weight_of_none():
    search, _ = cells(DARTS_RNN_V2, 1)
    xs, h, _, _ = inputs(2)
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(3), (36, 5)), axis=-1)
    other = weights.at[:, SPACE.ops.index("none")].set(7.0)
    np.testing.assert_array_equal(search(xs[:, 0], h, weights), search(xs[:, 0], h, other))
    assert not np.allclose(search(xs[:, 0], h, weights), search(xs[:, 0], h, weights * 2))
    with pytest.raises(ValueError, match=r"pass \(36, 5\)"):
        search(xs[:, 0], h, weights[:, :4])


def test_the_scanned_cell_is_the_cell_stepped_in_python():
    cell = DiscreteRNNCell(DARTS_RNN_V2, input_size=X, hidden_size=H, rngs=nnx.Rngs(0))
    xs, h, x_mask, h_mask = inputs(4, steps=6)
    hs, last = cell.scan(xs, h, x_mask=x_mask, h_mask=h_mask)
    state, expected = h, []
    for t in range(xs.shape[1]):
        state = cell(xs[:, t], state, x_mask=x_mask, h_mask=h_mask)
        expected.append(state)
    why = "one step's dots, in scan or in Python; errors compound over 6 steps"
    assert_close(hs, jnp.stack(expected, 1), terms=6 * 2 * (X + H), magnitude=4.0, why=why)
    np.testing.assert_array_equal(hs[:, -1], last)


def test_the_search_cell_batch_norm_over_time():
    """In training every state is normalised with its batch statistics, so the output
    (their mean) has zero mean over the batch; the running statistics, updated at every
    state of every step, come out of the scan as the Python loop leaves them."""
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(5), (36, 5)), axis=-1)
    scanned = RNNSearchCell(SPACE, input_size=X, hidden_size=H, rngs=nnx.Rngs(6))
    stepped = nnx.clone(scanned)
    xs, h, _, _ = inputs(7, steps=5)
    hs, _ = scan_cell(scanned, xs, h, weights=weights, train=True)
    assert_close(hs.mean(0), jnp.zeros((5, H)), terms=B * 2 * (X + H), magnitude=4.0, why="BN")
    state = h
    for t in range(xs.shape[1]):
        state = stepped(xs[:, t], state, weights, train=True)
    assert_close(hs[:, -1], state, terms=5 * 2 * (X + H), magnitude=4.0, why="scan = loop")
    why = "9 updates a step, 5 steps, momentum 0.1"
    assert_close(scanned.bn.mean[...], stepped.bn.mean[...], terms=45, magnitude=4.0, why=why)
    assert_close(scanned.bn.var[...], stepped.bn.var[...], terms=45, magnitude=4.0, why=why)
    assert not np.allclose(scanned.bn.var[...], 1.0)  # the statistics moved
    evaluated = scanned(xs[:, 0], h, weights)  # evaluation: running statistics, no update
    assert not np.allclose(evaluated.mean(0), 0.0, atol=1e-3)


def test_user_code_steps_a_published_cell_with_nnx_scan():
    """`nasax.DiscreteRNNCell` is a plain module: flax's own `nnx.scan` steps it as its
    `scan` does."""
    import nasax

    cell = nasax.DiscreteRNNCell(nasax.DARTS_RNN_V2, input_size=4, hidden_size=5, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(0), (3, 6, 4))
    h0 = jnp.zeros((3, 5))

    def step(cell, h, x):
        h = cell(x, h)
        return h, h

    h, hs = nnx.scan(step, in_axes=(None, nnx.Carry, 1), out_axes=(nnx.Carry, 1))(cell, h0, xs)
    ref_hs, ref_h = cell.scan(xs, h0)
    np.testing.assert_allclose(hs, ref_hs, atol=1e-6)
    np.testing.assert_allclose(h, ref_h, atol=1e-6)
