"""Spaces defined in the config from a registered one: checked keys, a search, a retraining."""

from __future__ import annotations

import json

import pytest
from flax import nnx

from nasax.app.cli import main
from nasax.core.errors import ConfigError
from nasax.search.options import load_config
from nasax.supernet import Genotype, SearchNetwork, get_space
from tests.conftest import TINY, TINY_TRAIN

SMALL = (
    "{base: darts, nodes: 2, inputs_per_node: 1, ops: [max_pool_3x3, skip_connect, sep_conv_3x3]}"
)
"""Two nodes that keep one input each, three ops: a small DARTS-skeleton space."""


def test_a_mapping_defines_a_space_and_its_name_records_it():
    config = load_config("darts_digits", [f"model.space={SMALL}"])
    name = "darts:nodes=2:inputs_per_node=1:ops=max_pool_3x3,skip_connect,sep_conv_3x3"
    assert config.model.space == name
    assert load_config("darts_digits", [f"model.space={name}"]).model.space == name
    space = get_space(name)
    assert (space.n_nodes, space.edges_per_node, space.n_inputs) == (2, 1, 2)
    assert space.ops == ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
    assert space.edges == ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2)) and space.concat == (2, 3)
    net = nnx.eval_shape(
        lambda: SearchNetwork(space, channels=4, layers=3, num_classes=10, rngs=nnx.Rngs(0))
    )
    shapes = {kind: getattr(net, f"alpha_{kind}").shape for kind in ("normal", "reduce")}
    assert shapes == {"normal": (5, 3), "reduce": (5, 3)}
    nb201 = load_config("darts_nb201_digits", ["model.space={base: nb201, nodes: 2}"])
    assert get_space(nb201.model.space).edges == ((0, 0), (1, 0), (1, 1))


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ("{base: darts, nodez: 3}", "unknown key 'model.space.nodez' (did you mean 'nodes'?)"),
        ("{nodes: 3}", "model.space.base: Field required"),
        ("{base: dartz}", "unknown search space 'dartz' (did you mean 'darts'?)"),
        ("{base: darts, nodes: 0}", "model.space.nodes: Input should be greater than or equal"),
        ("{base: darts, ops: [nor_conv_3x3]}", "model.space.ops must list distinct ops of"),
        ("{base: darts, ops: [skip_connect, skip_connect]}", "got skip_connect, skip_connect"),
        ("{base: darts, ops: [none]}", "never derives 'none'"),
        ("{base: darts, inputs_per_node: 3}", "inputs_per_node is 3, but a cell's first node"),
        ("{base: nb201, inputs_per_node: 1}", "space 'nb201' keeps every edge"),
    ],
)
def test_a_space_that_does_not_fit_its_base_gets_one_line_naming_the_key(space, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("darts_digits", [f"model.space={space}"])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_defined_space_searches_and_its_cell_retrains(tiny_npz, tmp_path):
    def sets(items: list[str]) -> list[str]:
        items = [*items, f"data.name=npz:{tiny_npz}", f"model.space={SMALL}"]
        return [a for item in items for a in ("--set", item)]

    run = tmp_path / "search"
    assert (
        main(["search", "darts_digits", *sets([*TINY, "search.epochs=1"]), "--out", str(run)]) == 0
    )
    genotype = Genotype.load(run / "genotype.json")
    assert genotype.space.startswith("darts:nodes=2:inputs_per_node=1:")
    for kind in ("normal", "reduce"):
        nodes, concat = genotype.cell(kind)
        assert [len(node) for node in nodes] == [1, 1] and concat == (2, 3)
        assert {op for node in nodes for op, _ in node} <= {
            "max_pool_3x3",
            "skip_connect",
            "sep_conv_3x3",
        }
    final = tmp_path / "final"
    train = ["train", "retrain_digits", "--genotype", str(run), "--out", str(final)]
    assert main([*train, *sets([*TINY_TRAIN, "train.epochs=1"])]) == 0
    summary = json.loads((final / "summary.json").read_text())
    assert summary["genotype"] == genotype.to_dict() and summary["params"] > 0
