"""The NAS-Bench-201 space as an instance of the engine: space, networks, genotypes, CLI."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import nasax
from nasax.app.cli import main
from nasax.core.errors import ConfigError, GenotypeError
from nasax.search.discretize import derive_genotype
from nasax.search.options import load_config, validate_config
from nasax.search.strategy import split_supernet
from nasax.supernet import (
    DARTS_SPACE,
    DARTS_V2,
    NB201_LARGEST,
    NB201_RESNET,
    NB201_SPACE,
    ArchParam,
    DiscreteNetwork,
    Genotype,
    MixedEdge,
    NB201Cell,
    NB201Network,
    NB201SearchNetwork,
    PlainCell,
    skeleton_of,
)
from nasax.supernet.discrete import param_counts
from nasax.supernet.nb201 import ResidualReduction, avg_pool_2x2
from nasax.train.evaluate import load_train_run
from nasax.train.export import preprocess_for
from nasax.train.task import check_train_config
from tests.tolerance import assert_close

OPS = NB201_SPACE.ops
NO_CONV = "|avg_pool_3x3~0|+|skip_connect~0|none~1|+|none~0|avg_pool_3x3~1|skip_connect~2|"
ALL_1X1 = "+".join(
    "|" + "".join(f"nor_conv_1x1~{src}|" for src in range(node + 1)) for node in range(3)
)


def test_space_is_nas_bench_201():
    assert OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert NB201_SPACE.edges == ((0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2))
    assert (NB201_SPACE.n_edges, NB201_SPACE.n_ops, NB201_SPACE.concat) == (6, 5, (3,))
    assert NB201_SPACE.cell_kinds == ("normal",) and NB201_SPACE.derive_none
    assert not NB201_SPACE.pool_norms and NB201_SPACE.edges_per_node is None
    # DARTS keeps its defaults
    assert DARTS_SPACE.concat == (2, 3, 4, 5) and DARTS_SPACE.cell_kinds == ("normal", "reduce")
    assert skeleton_of("nb201").search_network is NB201SearchNetwork
    assert skeleton_of(NB201_SPACE).discrete_network is NB201Network


# ------------------------------------------------------------------ end to end


def cli(command: str, config: str, sets: list[str], out: Path, *extra: str) -> list[str]:
    return [command, config, *[a for s in sets for a in ("--set", s)], "--out", str(out), *extra]


TINY_NB201 = ["model.channels=4", "model.layers=1", "run.progress=false", "run.plots=false"]


@pytest.fixture(scope="module")
def searched(tiny_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nb201") / "search"
    sets = [*TINY_NB201, "search.epochs=1", "search.batch_size=16", f"data.name=npz:{tiny_npz}"]
    assert main(cli("search", "darts_nb201_digits", sets, out)) == 0
    return out


@pytest.fixture(scope="module")
def trained(searched, tiny_npz) -> Path:
    out = searched.parent / "train"
    sets = [*TINY_NB201, "train.epochs=1", "train.batch_size=32", "train.drop_path=0.2"]
    sets.append(f"data.name=npz:{tiny_npz}")
    assert main(cli("train", "retrain_nb201_cifar10", sets, out, "--genotype", str(searched))) == 0
    return out


def test_search_derives_a_valid_nb201_genotype(searched):
    genotype = Genotype.load(searched / "genotype.json")
    assert genotype.space == "nb201" and len(genotype.normal) == 3
    assert Genotype.from_arch_string(str(genotype)) == genotype
    with np.load(searched / "alphas.npz") as f:
        assert f["alpha_normal"].shape == (1, 6, 5) and "alpha_reduce" not in f.files
        assert list(f["ops"]) == list(OPS)
    summary = json.loads((searched / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["genotype"] == genotype.to_dict()


def test_the_searched_cell_retrains_exports_and_reloads(searched, trained, tmp_path):
    genotype = Genotype.load(searched / "genotype.json")
    assert nasax.load_genotype(trained) == genotype
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["steps"] == 4 and summary["params_auxiliary"] == 0
    _, _, dataset, trainer, state, _ = load_train_run(trained)
    module = trainer.module(state)
    assert isinstance(module, NB201Network) and param_counts(module)["params"] == summary["params"]

    assert main(["export", str(trained), "--out", str(tmp_path / "model")]) == 0
    model = nasax.load_model(tmp_path / "model")
    assert isinstance(model, NB201Network) and model.genotype == genotype
    x = preprocess_for(tmp_path / "model")(dataset.x_test[:6].astype(np.float32))
    np.testing.assert_array_equal(model(x, train=False), module(x, train=False))


def test_training_nb201_with_an_auxiliary_head_stops_before_writing(tiny_npz, tmp_path, capsys):
    sets = [*TINY_NB201, "train.auxiliary=true", f"data.name=npz:{tiny_npz}"]
    out = tmp_path / "run"
    assert main(cli("train", "retrain_nb201_cifar10", sets, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "train.auxiliary" in err and len(err.splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------ search network


@pytest.fixture(scope="module")
def search_net() -> NB201SearchNetwork:
    """The tiny supernet's structure and shapes (nothing allocated or compiled)."""
    return nnx.eval_shape(
        lambda: NB201SearchNetwork(
            NB201_SPACE,
            channels=4,
            layers=1,
            num_classes=10,
            in_channels=1,
            edge_normalization=True,
            rngs=nnx.Rngs(0),
        )
    )


def test_search_network_has_one_cell_kind_and_a_split_that_covers_everything(search_net):
    arch = nnx.to_pure_dict(nnx.state(search_net, ArchParam))
    assert {k: v.shape for k, v in arch.items()} == {"alpha_normal": (6, 5), "beta_normal": (6,)}
    kinds = [type(b) for b in search_net.cells]
    assert kinds == [PlainCell, ResidualReduction, PlainCell, ResidualReduction, PlainCell]
    _, arch, params, stats = split_supernet(search_net)
    paths = [{p for p, _ in jax.tree_util.tree_flatten_with_path(g)[0]} for g in (arch, params)]
    paths.append({p for p, _ in jax.tree_util.tree_flatten_with_path(stats)[0]})
    everything = {p for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(search_net))[0]}
    assert all(a.isdisjoint(b) for i, a in enumerate(paths) for b in paths[i + 1 :])
    assert set().union(*paths) == everything


def test_search_network_takes_weights_paths_and_edge_weights(search_net):
    graphdef, state = nnx.split(search_net)
    x = jax.ShapeDtypeStruct((8, 8, 8, 1), jnp.float32)
    choice = jnp.array([3, 0, 1, 2, 4, 3])  # one op per edge, `none` included

    def forward(state, x, **kwargs):
        net = nnx.merge(graphdef, state, copy=True)
        assert set(net.alphas()) == set(net.edge_weights()) == {"normal"}
        return net(x, train=True, **kwargs)

    # shapes only (tracing, no compile); the CLI search above runs the default forward
    for kwargs in (
        {},
        {"weights": {"normal": jnp.ones((6, 5)) / 5}},
        {"paths": {"normal": choice}},
        {"edge_weights": {"normal": jnp.ones(6)}, "paths": {"normal": choice}},
    ):
        assert jax.eval_shape(partial(forward, **kwargs), state, x).shape == (8, 10)


def test_a_single_path_computes_the_chosen_ops_only():
    def make_edge(i, c, stride, rngs):
        return MixedEdge(OPS, c, stride, rngs, pool_norms=False)

    cell = PlainCell(4, NB201_SPACE.edges, make_edge, NB201_SPACE.concat, nnx.Rngs(0))
    graphdef, state = nnx.split(cell)
    choice = jnp.array([3, 0, 1, 2, 4, 3])

    @jax.jit
    def both(state, x):
        cell = nnx.merge(graphdef, state, copy=True)
        return cell(x, jax.nn.one_hot(choice, 5), False), cell(x, None, False, paths=choice)

    mixed, single = both(state, jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 4)))
    assert single.shape == (2, 5, 5, 4)
    # The node sums of up to 3 edges behind ops up to 3 deep (nodes 1, 2, 3), each op at
    # most a 3x3 conv over 4 channels.
    why = "single path against one-hot mixed edges"
    assert_close(single, mixed, terms=3 * (3 * 3 * 4) + 3, why=why)


def test_bad_sizes_stems_and_spaces_are_refused():
    kwargs = dict(channels=4, num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cells per stage"):
        NB201SearchNetwork(NB201_SPACE, layers=0, **kwargs)
    with pytest.raises(ValueError, match="stem_multiplier=1"):
        NB201SearchNetwork(NB201_SPACE, layers=1, stem_multiplier=3, **kwargs)
    with pytest.raises(ValueError, match="one-input cells"):
        NB201SearchNetwork(DARTS_SPACE, layers=1, **kwargs)
    with pytest.raises(ValueError, match="no auxiliary head"):
        NB201Network(NB201_RESNET, layers=1, auxiliary=True, **kwargs)
    with pytest.raises(ValueError, match="skeleton"):
        DiscreteNetwork(NB201_RESNET, layers=3, **kwargs)
    with pytest.raises(ValueError, match="one-input cells"):
        NB201Network(DARTS_V2, layers=1, **kwargs)


# ------------------------------------------------------------------ discrete network


# Exact counts of NAS-Bench-201's TinyNetwork (affine BatchNorms, bias-free convs), the
# same as a PyTorch re-implementation of it gives. At C=16, N=5 on CIFAR-10 they span
# the paper's range: 0.073 MB without convs to 1.532 MB with a 3x3 conv on every edge.
@pytest.mark.parametrize(
    ("arch", "channels", "layers", "classes", "in_channels", "params"),
    [
        (NO_CONV, 16, 5, 10, 3, 73_306),
        (str(NB201_RESNET), 16, 5, 10, 3, 559_386),
        (ALL_1X1, 16, 5, 10, 3, 241_306),
        (str(NB201_LARGEST), 16, 5, 10, 3, 1_531_546),
        (NO_CONV, 16, 5, 100, 3, 79_156),
        (str(NB201_LARGEST), 16, 5, 100, 3, 1_537_396),
        (str(NB201_RESNET), 4, 1, 10, 1, 10_982),
    ],
)
def test_parameter_counts_match_nas_bench_201(arch, channels, layers, classes, in_channels, params):
    genotype = nasax.load_genotype(arch)
    net = nnx.eval_shape(
        lambda: NB201Network(
            genotype,
            num_classes=classes,
            channels=channels,
            layers=layers,
            in_channels=in_channels,
            rngs=nnx.Rngs(0),
        )
    )
    assert param_counts(net) == {"params": params, "params_auxiliary": 0, "params_total": params}


def test_cell_keeps_its_shape_and_sums_its_edges():
    skips = Genotype.from_arch_string(
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|skip_connect~1|skip_connect~2|"
    )
    cell = NB201Cell(skips, channels=3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 3))
    # node 3 = 0 + x + 2x: like 3 x, the exact 3 x rounded once, in any order
    np.testing.assert_array_equal(cell(x, train=True), 3 * x)


def test_reduction_shortcut_pools_odd_sizes_up():
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    y = avg_pool_2x2(x)
    assert y.shape == (1, 3, 3, 1)
    assert float(y[0, 0, 0, 0]) == (0 + 1 + 5 + 6) / 4 and float(y[0, 2, 2, 0]) == 24.0


# ------------------------------------------------------------------ genotypes


@pytest.mark.parametrize("genotype", [NB201_RESNET, NB201_LARGEST])
def test_arch_strings_round_trip(genotype, tmp_path):
    text = genotype.to_arch_string()
    assert str(genotype) == text
    assert Genotype.from_arch_string(text) == genotype
    assert nasax.load_genotype(text) == genotype
    assert Genotype.from_json(genotype.to_json()) == genotype
    genotype.save(tmp_path / "genotype.json")
    assert nasax.load_genotype(tmp_path) == genotype
    assert genotype.normal_concat == (3,) and list(genotype.cells) == ["normal"]


def test_published_nb201_cells_are_looked_up_by_name():
    assert nasax.load_genotype("NB201_RESNET") is NB201_RESNET
    assert str(NB201_RESNET) == (
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
    )
    with pytest.raises(GenotypeError, match="did you mean 'NB201_RESNET'"):
        nasax.load_genotype("NB201_RESNT")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "node 0 is ''"),
        ("nor_conv_3x3~0", "each node looks like |op~input|"),
        ("|nor_conv_3x3~0|+|none~0|", "has 2 nodes"),
        ("|nor_conv_3x3-0|+|none~0|none~1|+|none~0|none~1|none~2|", "must look like op~input"),
        ("|nor_conv_3x3~x|+|none~0|none~1|+|none~0|none~1|none~2|", "must look like op~input"),
        ("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|", "'conv_9x9' is not in space"),
        ("|sep_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "'sep_conv_3x3'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "input index 1 out of range"),
        ("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|", "reads each of 0..1 once"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "has 1 edges"),
    ],
)
def test_malformed_arch_strings_give_one_line_errors(text, fragment):
    with pytest.raises(GenotypeError) as info:
        Genotype.from_arch_string(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def nb201_dict(**change) -> dict:
    data = NB201_RESNET.to_dict()
    data.update(change)
    return data


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({**DARTS_V2.to_dict(), "space": "nb201"}, "has 4 nodes; space 'nb201' has 3"),
        (nb201_dict(normal=NB201_RESNET.to_dict()["normal"][:2]), "has 2 nodes"),
        (nb201_dict(normal=[[["nor_conv_3x3", 0]]] * 3), "genotype.normal[1] has 1 edges"),
        (
            nb201_dict(
                normal=[[["conv", 0]], [["none", 0], ["none", 1]], [["none", i] for i in range(3)]]
            ),
            "op 'conv' is not in space 'nb201'",
        ),
        (nb201_dict(normal_concat=[1, 2, 3]), "must be [3]"),
        (nb201_dict(reduce=[[["none", 0]]], reduce_concat=[1]), "has no reduce cell"),
    ],
)
def test_genotypes_that_do_not_fit_nb201_are_refused(data, fragment):
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data).validate()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_genotype_files_from_before_generic_cells_still_load(tmp_path):
    """Files written when a genotype had four fixed fields hold an empty reduction cell
    for NAS-Bench-201; they load as the one-cell genotype they describe, and save back
    with the cells the space has."""
    old = {**NB201_RESNET.to_dict(), "reduce": [], "reduce_concat": []}
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(old))
    loaded = Genotype.load(path)
    assert loaded == NB201_RESNET and list(loaded.cells) == ["normal"]
    assert set(loaded.to_dict()) == {"space", "normal", "normal_concat"}


def test_the_string_form_is_for_one_cell_spaces():
    with pytest.raises(GenotypeError, match="holds one cell; space 'darts' has normal and reduce"):
        DARTS_V2.to_arch_string()
    with pytest.raises(GenotypeError, match="holds one cell"):
        Genotype.from_arch_string(str(NB201_RESNET), space="darts")
    assert str(DARTS_V2) == repr(DARTS_V2)


# ------------------------------------------------------------------ discretizer


def weights_for(ops: list[str], runner_up: list[str] | None = None) -> np.ndarray:
    """(6, 5) weights: every op 0.1, `ops[e]` 0.5 on edge e, `runner_up[e]` 0.3."""
    w = np.full((6, 5), 0.1)
    for e, op in enumerate(ops):
        w[e, OPS.index(op)] = 0.5
    for e, op in enumerate(runner_up or []):
        w[e, OPS.index(op)] = max(w[e, OPS.index(op)], 0.3)
    return w


def test_derivation_keeps_every_edge_and_may_pick_none():
    ops = ["nor_conv_3x3", "none", "nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3"]
    g = derive_genotype({"normal": weights_for(ops)}, NB201_SPACE)
    assert str(g) == (
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
    )
    assert g.space == "nb201" and g.normal_concat == (3,) and list(g.cells) == ["normal"]
    g.validate()
    # all edges are kept, so edge strength does not change the cell
    strength = {"normal": np.array([1.0, 0.01, 5.0, 0.2, 3.0, 0.5])}
    assert derive_genotype({"normal": weights_for(ops)}, NB201_SPACE, edge_strength=strength) == g


def test_skip_cap_gives_the_weakest_skips_their_next_best_op():
    ops = ["skip_connect"] * 6
    w = weights_for(ops, ["nor_conv_1x1", "none", "avg_pool_3x3", "nor_conv_3x3", "none", "none"])
    w[0, OPS.index("skip_connect")] = 0.6  # the strongest skip
    w[3, OPS.index("skip_connect")] = 0.55
    g = derive_genotype({"normal": w}, NB201_SPACE, max_skip_connect=2)
    assert str(g) == "|skip_connect~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|none~2|"


# ------------------------------------------------------------------ config


def test_config_selects_nb201_and_refuses_what_does_not_fit():
    config = validate_config({"model": {"space": "nb201", "stem_multiplier": 1}})
    assert config.model.space == "nb201"
    with pytest.raises(ConfigError, match=r"set model\.stem_multiplier=1"):
        validate_config({"model": {"space": "nb201"}})
    with pytest.raises(ConfigError, match=r"unknown search space 'nb210' \(did you mean 'nb201'"):
        validate_config({"model": {"space": "nb210"}})
    with pytest.raises(ConfigError, match=r"no auxiliary head; set train\.auxiliary=false"):
        check_train_config(config)
    config.train.auxiliary = False
    check_train_config(config)


def test_shipped_nb201_configs_follow_the_nas_bench_201_protocols():
    c = load_config("darts_nb201_cifar10")
    assert (c.data.name, c.model.space, c.model.channels, c.model.layers) == (
        "tfds:cifar10",
        "nb201",
        16,
        5,
    )
    assert (c.search.batch_size, c.search.epochs, c.search.train_portion) == (64, 50, 0.5)
    w, a = c.optim.weights, c.optim.arch
    assert (w.lr, w.lr_min, w.momentum, w.weight_decay, w.grad_clip, w.schedule) == (
        0.025,
        0.001,
        0.9,
        3e-4,
        5.0,
        "cosine",
    )
    assert (a.lr, a.betas, a.weight_decay) == (3e-4, (0.5, 0.999), 1e-3)
    r = load_config("retrain_nb201_cifar10")
    t, w = r.train, r.optim.weights
    assert (r.model.channels, r.model.layers, t.epochs, t.batch_size) == (16, 5, 200, 256)
    assert (w.lr, w.lr_min, w.momentum, w.weight_decay, w.grad_clip) == (0.1, 0.0, 0.9, 5e-4, None)
    assert (t.auxiliary, t.drop_path, t.cutout) == (False, 0.0, 0)
    check_train_config(r)
    assert load_config("darts_nb201_digits").model.space == "nb201"
