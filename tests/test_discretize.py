"""The discretizer against hand-built alphas, and genotype JSON and validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasax.core.errors import GenotypeError
from nasax.search.discretize import derive_cell, derive_genotype
from nasax.supernet.genotypes import DARTS_V1, DARTS_V2, PUBLISHED, Genotype
from nasax.supernet.spaces import DARTS_SPACE

OPS = DARTS_SPACE.ops


def weights_for(cell: list[list[tuple[str, int, float]]], none_weight: float = 0.0) -> np.ndarray:
    """(14, 8) weights: every op 0.01 (none `none_weight`), listed (op, src, w) set to w."""
    w = np.full((DARTS_SPACE.n_edges, DARTS_SPACE.n_ops), 0.01)
    w[:, OPS.index("none")] = none_weight
    for node, entries in enumerate(cell):
        for op, src, value in entries:
            edge = DARTS_SPACE.node_edges(node)[src]
            w[edge, OPS.index(op)] = value
    return w


def test_keeps_two_strongest_edges_per_node_and_their_best_ops():
    cell = [
        [("sep_conv_3x3", 0, 0.5), ("skip_connect", 1, 0.6)],
        [("dil_conv_5x5", 2, 0.7), ("max_pool_3x3", 0, 0.3), ("avg_pool_3x3", 1, 0.2)],
        [("sep_conv_5x5", 3, 0.4), ("sep_conv_3x3", 1, 0.45), ("skip_connect", 2, 0.1)],
        [("dil_conv_3x3", 4, 0.9), ("max_pool_3x3", 0, 0.8), ("avg_pool_3x3", 3, 0.05)],
    ]
    got = derive_cell(weights_for(cell), DARTS_SPACE)
    assert got == (
        (("skip_connect", 1), ("sep_conv_3x3", 0)),
        (("dil_conv_5x5", 2), ("max_pool_3x3", 0)),
        (("sep_conv_3x3", 1), ("sep_conv_5x5", 3)),
        (("dil_conv_3x3", 4), ("max_pool_3x3", 0)),
    )


def test_none_weight_never_selects_an_edge_or_an_op():
    # `none` dominates every edge, yet the choice is made among the other ops
    cell = [
        [("sep_conv_3x3", 0, 0.2), ("skip_connect", 1, 0.1)],
        [("dil_conv_5x5", 2, 0.3), ("max_pool_3x3", 1, 0.25)],
        [("sep_conv_5x5", 0, 0.2), ("sep_conv_3x3", 1, 0.21)],
        [("dil_conv_3x3", 4, 0.2), ("max_pool_3x3", 2, 0.22)],
    ]
    got = derive_cell(weights_for(cell, none_weight=0.9), DARTS_SPACE)
    assert all(op != "none" for node in got for op, _ in node)
    assert got[0] == (("sep_conv_3x3", 0), ("skip_connect", 1))
    assert got[3] == (("max_pool_3x3", 2), ("dil_conv_3x3", 4))


def test_skip_connect_cap_replaces_the_weakest_skips():
    cell = [
        [("skip_connect", 0, 0.9), ("skip_connect", 1, 0.8)],
        [("skip_connect", 2, 0.7), ("sep_conv_3x3", 0, 0.5)],
        [("skip_connect", 3, 0.3), ("sep_conv_3x3", 1, 0.4)],
        [("sep_conv_5x5", 4, 0.6), ("dil_conv_3x3", 0, 0.5)],
    ]
    w = weights_for(cell)
    uncapped = derive_genotype({"normal": w, "reduce": w}, DARTS_SPACE)
    n_skip = sum(op == "skip_connect" for node in uncapped.normal for op, _ in node)
    assert n_skip == 4
    capped = derive_genotype({"normal": w, "reduce": w}, DARTS_SPACE, max_skip_connect=2)
    skips = [(op, src) for node in capped.normal for op, src in node if op == "skip_connect"]
    assert skips == [("skip_connect", 0), ("skip_connect", 1)]  # the two strongest stay
    assert sum(op == "skip_connect" for node in capped.reduce for op, _ in node) == 4
    capped.validate()


def test_edge_strength_reweights_edge_choice():
    cell = [[("sep_conv_3x3", 0, 0.5), ("sep_conv_5x5", 1, 0.6)]] + [[]] * 3
    w = weights_for(cell)
    strength = np.ones(14)
    strength[DARTS_SPACE.node_edges(0)[1]] = 0.1
    # node 0 has only two inputs: both stay, but the order follows the reweighted strength
    got = derive_cell(w, DARTS_SPACE, edge_strength=strength)
    assert got[0] == (("sep_conv_3x3", 0), ("sep_conv_5x5", 1))


@pytest.mark.parametrize("genotype", [DARTS_V1, DARTS_V2])
def test_published_genotypes_validate_and_round_trip_through_json(genotype, tmp_path):
    genotype.validate(DARTS_SPACE)
    assert Genotype.from_json(genotype.to_json()) == genotype
    path = tmp_path / "genotype.json"
    genotype.save(path)
    assert Genotype.load(path) == genotype
    assert PUBLISHED["DARTS"] == DARTS_V2


def bad(**change):
    data = DARTS_V2.to_dict()
    data.update(change)
    return data


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (bad(normal=DARTS_V2.to_dict()["normal"][:3]), "has 3 nodes"),
        (bad(normal=[[["conv_7x7", 0], ["sep_conv_3x3", 1]]] * 4), "conv_7x7"),
        (bad(normal=[[["sep_conv_3x3", 5], ["sep_conv_3x3", 1]]] * 4), "input index 5"),
        (bad(normal=[[["none", 0], ["sep_conv_3x3", 1]]] * 4), "'none'"),
        (bad(normal_concat=[2, 9]), "normal_concat"),
        (bad(space="nas-bench-201"), "space"),
        (bad(reduce=[[["sep_conv_3x3", 0]]] * 4), "has 1 edges"),
        (bad(reduce="x"), "genotype.reduce"),
        ({"normal": []}, "missing"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_genotypes_give_genotype_errors_naming_the_problem(data, fragment):
    """Checked as a cell the DARTS search can express (`searched`): its node count too."""
    with pytest.raises(GenotypeError, match=None) as info:
        Genotype.from_dict(data).validate(DARTS_SPACE, searched=True)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (bad(normal=DARTS_V2.to_dict()["normal"][:3]), "normal_concat [2, 3, 4, 5]"),
        (bad(normal=[[["conv_7x7", 0], ["sep_conv_3x3", 1]]] * 4), "conv_7x7"),
        (bad(normal=[[["none", 0], ["sep_conv_3x3", 1]]] * 4), "'none'"),
        (bad(normal=[]), "has 0 nodes"),
        (bad(reduce=[[["sep_conv_3x3", 0]]] * 4), "has 1 edges"),
    ],
)
def test_a_genotype_to_build_may_have_any_node_count_but_must_build(data, fragment):
    """Checked as a cell the DARTS skeleton builds (retraining): any number of nodes and
    any registered op but `none`, as the DARTS reference's network builds NASNet's."""
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data).validate(DARTS_SPACE)
    assert fragment in str(info.value)
    five = bad(normal=[*DARTS_V2.to_dict()["normal"], [["sep_conv_7x7", 0], ["skip_connect", 5]]])
    five["normal_concat"] = [2, 3, 4, 5, 6]
    assert len(Genotype.from_dict(five).validate(DARTS_SPACE).normal) == 5
    with pytest.raises(GenotypeError, match="has 5 nodes; space 'darts' has 4"):
        Genotype.from_dict(five).validate(DARTS_SPACE, searched=True)


def test_load_reports_missing_and_invalid_files(tmp_path):
    with pytest.raises(GenotypeError, match="does not exist"):
        Genotype.load(tmp_path / "missing.json")
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.load(path)
    path.write_text(json.dumps(bad(normal_concat=[])))
    with pytest.raises(GenotypeError, match=r"broken\.json"):
        Genotype.load(path)


# DARTS' second-order cells as the reference repository prints them (its genotypes.py and
# the search log's `genotype = ...` line), pasted unchanged.
REFERENCE_CNN = (
    "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), "
    "('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=range(2, 6), "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
REFERENCE_RNN = (
    "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), "
    "('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))"
)


def test_the_reference_keyword_form_builds_the_published_cells(tmp_path):
    from nasax.supernet.genotypes import DARTS_RNN_V2, load_genotype

    pairs = [pair for node in DARTS_V2.normal for pair in node]
    reduce = [pair for node in DARTS_V2.reduce for pair in node]
    built = Genotype(
        normal=pairs, normal_concat=[2, 3, 4, 5], reduce=reduce, reduce_concat=[2, 3, 4, 5]
    )
    assert built == DARTS_V2 and built.space == "darts"
    nested = Genotype(
        normal=DARTS_V2.normal,
        normal_concat=range(2, 6),
        reduce=DARTS_V2.reduce,
        reduce_concat=range(2, 6),
    )
    assert nested == DARTS_V2
    assert Genotype.from_python(REFERENCE_CNN) == DARTS_V2
    rnn = Genotype.from_python(REFERENCE_RNN)
    assert rnn == DARTS_RNN_V2 and rnn.space == "darts_rnn" and len(rnn.recurrent) == 8
    assert load_genotype(REFERENCE_RNN) == DARTS_RNN_V2
    path = tmp_path / "genotype.txt"
    path.write_text(REFERENCE_CNN + "\n")
    assert load_genotype(path) == DARTS_V2


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda: Genotype(
                normal=[("sep_conv_3x3", 0)] * 3,
                normal_concat=[2],
                reduce=[("max_pool_3x3", 0)] * 2,
                reduce_concat=[2],
            ),
            "leaves 1 for node 1",
        ),
        (
            lambda: Genotype(normal=[("sep_conv_3x3", 0)] * 2, reduce_concat=[2]),
            "'reduce_concat' has no cell",
        ),
        (
            lambda: Genotype(
                normal=[("sep_conv_3x3", 0)] * 2,
                reduce=[("max_pool_3x3", 0)] * 2,
                normal_concat=[2],
            ),
            "reduce_concat=[...]",
        ),
        (
            lambda: Genotype(decoder=[("tanh", 0)], concat=[1]),
            "no search space has exactly the cells decoder",
        ),
        (
            lambda: Genotype(
                normal=[["sep_conv_3x3", "0"]], normal_concat=[2], reduce=[], reduce_concat=[2]
            ),
            "genotype.normal[0]",
        ),
        (
            lambda: Genotype(
                normal=[("sep_conv_3x3", 0)] * 2,
                normal_concat="x",
                reduce=[("max_pool_3x3", 0)] * 2,
                reduce_concat=[2],
            ),
            "concat must list node indices",
        ),
        (
            lambda: Genotype.from_python("Genotype(normal=__import__('os').getcwd())"),
            "must be a literal",
        ),
        (lambda: Genotype.from_python("print('x')"), "one Genotype(...) call"),
        (
            lambda: Genotype.from_python(
                REFERENCE_RNN.replace("('relu', 5)", "('max_pool_3x3', 5)")
            ),
            "max_pool_3x3",
        ),
    ],
)
def test_a_malformed_keyword_genotype_says_what_to_fix_in_one_line(make, fragment):
    with pytest.raises(GenotypeError) as info:
        make()
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
