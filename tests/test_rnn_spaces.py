"""The recurrent spaces and genotypes: DARTS' and ENAS' spaces, the published cells, the
errors a wrong genotype or space gets, and ENAS' controller sampling a recurrent cell."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.core.errors import ConfigError, GenotypeError
from nasax.search.controller import Controller, tokens_to_path
from nasax.search.options import load_config
from nasax.search.single_path import derivable_ops
from nasax.supernet import (
    DARTS_RNN_SPACE,
    DARTS_RNN_V1,
    DARTS_RNN_V2,
    DARTS_V2,
    ENAS_RNN,
    ENAS_RNN_SPACE,
    DiscreteNetwork,
    DiscreteRNNCell,
    Genotype,
    NodePath,
    RNNModel,
    RNNSearchCell,
    RNNSearchModel,
    get_space,
    load_genotype,
    skeleton_of,
)
from nasax.supernet.rnn_cells import genotype_path
from tests.tolerance import assert_close


def test_the_darts_and_enas_recurrent_spaces():
    darts, enas = DARTS_RNN_SPACE, ENAS_RNN_SPACE
    assert darts.ops == ("none", "tanh", "relu", "sigmoid", "identity")
    assert enas.ops == ("tanh", "relu", "identity", "sigmoid")
    for space in (darts, enas):
        assert (space.n_inputs, space.n_nodes, space.n_edges) == (1, 8, 36)
        assert [len(space.node_edges(i)) for i in range(8)] == list(range(1, 9))
        assert space.concat == tuple(range(1, 9)) and space.edges_per_node == 1
        assert space.cell_kinds == ("recurrent",) and not space.derive_none
        assert skeleton_of(space).search_network is RNNSearchModel
        assert skeleton_of(space).discrete_network is RNNModel
    assert get_space("darts_rnn:nodes=3").edges == ((0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2))


def test_published_recurrent_genotypes():
    for genotype in (DARTS_RNN_V1, DARTS_RNN_V2):
        assert genotype.validate(DARTS_RNN_SPACE, searched=True) is genotype
        assert genotype.recurrent_concat == tuple(range(1, 9))
    assert DARTS_RNN_V2.recurrent[0] == (("sigmoid", 0),)
    assert DARTS_RNN_V1.recurrent[5] == (("identity", 1),)
    # ENAS' cell has 11 nodes and averages its loose ends: it builds, but no search of
    # the 8-node space derives it.
    assert ENAS_RNN.validate() is ENAS_RNN and len(ENAS_RNN.recurrent) == 11
    assert ENAS_RNN.recurrent_concat == (2, 5, 6, 9, 10, 11)
    with pytest.raises(GenotypeError, match="has 11 nodes; space 'enas_rnn' has 8"):
        ENAS_RNN.validate(searched=True)
    with pytest.raises(GenotypeError, match="has 8 nodes of one input each"):
        genotype_path(ENAS_RNN, ENAS_RNN_SPACE)  # no single path of the space
    for name, genotype in [("DARTS_RNN", DARTS_RNN_V2), ("ENAS_RNN", ENAS_RNN)]:
        assert load_genotype(name) == genotype
        assert Genotype.from_json(genotype.to_json()) == genotype


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_image_genotype_in_a_recurrent_network_says_what_to_fix():
    with pytest.raises(GenotypeError) as info:
        RNNModel(DARTS_V2, vocab_size=10, embed_size=4, hidden_size=4, rngs=nnx.Rngs(0))
    message = one_line(info)
    assert "space 'darts'" in message and "darts_rnn or enas_rnn" in message
    assert "DARTS_RNN_V2" in message
    with pytest.raises(GenotypeError) as info:
        DiscreteRNNCell(DARTS_V2, input_size=4, hidden_size=4, rngs=nnx.Rngs(0))
    assert "a recurrent cell needs a genotype of space darts_rnn" in one_line(info)
    with pytest.raises(GenotypeError) as info:
        DARTS_V2.validate(DARTS_RNN_SPACE)
    assert "use a genotype of space 'darts_rnn' (published: DARTS_RNN_V1" in one_line(info)
    # and the other way round
    with pytest.raises(ValueError) as info:
        DiscreteNetwork(DARTS_RNN_V2, num_classes=10, channels=4, layers=3, rngs=nnx.Rngs(0))
    assert "skeleton_of(space)" in one_line(info)


def test_a_recurrent_genotype_holds_recurrent_ops_only():
    data = {"space": "darts_rnn", "recurrent": [[["sep_conv_3x3", 0]]], "recurrent_concat": [1]}
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data).validate()
    assert "allowed: tanh, relu, sigmoid, identity" in one_line(info)
    data["recurrent"] = [[["none", 0]]]
    with pytest.raises(GenotypeError, match="op 'none' is not"):
        Genotype.from_dict(data).validate()
    data["recurrent"] = [[["tanh", 0]]]
    assert len(Genotype.from_dict(data).validate().recurrent) == 1


def test_an_image_config_refuses_a_recurrent_space():
    with pytest.raises(ConfigError) as info:
        load_config("darts_digits", ["model.space=darts_rnn"])
    message = one_line(info)
    assert "'darts_rnn' builds language models" in message and "darts, nb201" in message


def controller_cell(space_name: str, seed: int) -> tuple[jax.Array, NodePath]:
    """ENAS' controller's sample for a recurrent space, and the NodePath it describes:
    per node an input (an index of the states built so far) and an op (an index into
    the derivable ops)."""
    space = get_space(space_name)
    tokens = Controller(space, rngs=nnx.Rngs(seed), hidden=8)(jax.random.key(seed)).tokens
    tokens = tokens["recurrent"]
    ops = jnp.asarray(derivable_ops(space))[tokens[1::2]]
    return tokens, NodePath(tokens[0::2], ops)


def test_the_enas_controller_samples_one_input_and_op_per_node():
    tokens, path = controller_cell("enas_rnn", 0)
    assert tokens.shape == (16,)
    assert all(0 <= int(src) <= node for node, src in enumerate(path.sources))
    cell = RNNSearchCell(ENAS_RNN_SPACE, input_size=3, hidden_size=5, rngs=nnx.Rngs(1))
    x, h = jax.random.normal(jax.random.key(2), (2, 4, 5))[:, :, :3], jnp.zeros((4, 5))
    assert cell(x[0], h, path=path).shape == (4, 5)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_controller_cell_as_edges_runs_as_its_node_path(seed):
    """In darts_rnn (which has `none`) the controller's cell can also be given as one op
    per edge, `none` on the dropped ones; both forms compute the same cell."""
    tokens, path = controller_cell("darts_rnn", seed)
    edges = tokens_to_path(tokens, DARTS_RNN_SPACE)
    kept = np.asarray(edges) != DARTS_RNN_SPACE.ops.index("none")
    assert [int(kept[list(DARTS_RNN_SPACE.node_edges(n))].sum()) for n in range(8)] == [1] * 8
    cell = RNNSearchCell(DARTS_RNN_SPACE, input_size=3, hidden_size=5, rngs=nnx.Rngs(seed))
    keys = jax.random.split(jax.random.key(seed), 2)
    x, h = jax.random.normal(keys[0], (4, 3)), jax.random.normal(keys[1], (4, 5))
    assert_close(
        cell(x, h, path=edges),
        cell(x, h, path=path),
        terms=8 * 5,
        magnitude=4.0,
        why="the same ops on the same states; the dropped edges add exact zeros",
    )
