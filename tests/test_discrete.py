"""The network a genotype is retrained as: published sizes, drop path, auxiliary head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax import DiscreteCell, DiscreteNetwork, Genotype, GenotypeError, genotypes
from nasax.supernet.cells import Cell, FixedEdge, drop_path
from nasax.supernet.discrete import AuxiliaryHead, param_counts
from nasax.train.regularizers import cutout, drop_path_rate
from tests.tolerance import assert_close


def abstract(genotype: Genotype, **kwargs) -> DiscreteNetwork:
    return nnx.eval_shape(lambda: DiscreteNetwork(genotype, **kwargs, rngs=nnx.Rngs(0)))


# Counts of the DARTS reference's NetworkCIFAR (`count_parameters_in_MB` leaves out the
# auxiliary head); DARTS_V2 is the paper's 3.3M (3.349342 MB in its logs). The others
# come from a PyTorch re-implementation of the reference network.
@pytest.mark.parametrize(
    ("genotype", "channels", "layers", "in_channels", "params", "aux"),
    [
        (genotypes.DARTS_V2, 36, 20, 3, 3_349_342, 476_426),
        (genotypes.DARTS_V1, 36, 20, 3, 3_169_414, 476_426),
        # Five-node cells with 7x7 and 7x1-1x7 ops, and concats of 3 to 5 nodes.
        (genotypes.NASNET, 36, 20, 3, 3_830_950, 457_994),
        (genotypes.AMOEBANET, 36, 20, 3, 3_145_078, 457_994),
        (genotypes.DARTS_V2, 8, 5, 1, 36_586, 419_082),
        (genotypes.DARTS_V2, 4, 3, 1, 2_642, 410_890),
    ],
)
def test_parameter_counts_match_the_reference(genotype, channels, layers, in_channels, params, aux):
    net = abstract(
        genotype,
        num_classes=10,
        channels=channels,
        layers=layers,
        in_channels=in_channels,
        auxiliary=True,
    )
    assert param_counts(net) == {
        "params": params,
        "params_auxiliary": aux,
        "params_total": params + aux,
    }
    plain = abstract(
        genotype, num_classes=10, channels=channels, layers=layers, in_channels=in_channels
    )
    assert param_counts(plain)["params_total"] == params


def test_cells_are_the_shared_cell_with_the_genotype_ops_on_fixed_edges():
    g = genotypes.DARTS_V2
    net = abstract(g, num_classes=10, channels=4, layers=3, in_channels=1)
    kinds = ["reduce" if c.cell.reduction else "normal" for c in net.cells]
    assert kinds == ["normal", "reduce", "reduce"]
    for cell in net.cells:
        assert isinstance(cell.cell, Cell)
        nodes, concat = g.cell("reduce" if cell.cell.reduction else "normal")
        assert all(isinstance(e, FixedEdge) for e in cell.cell.edges)
        assert [e.op_name for e in cell.cell.edges] == [op for n in nodes for op, _ in n]
        assert cell.cell.wiring == tuple((i, src) for i, n in enumerate(nodes) for _, src in n)
        assert cell.cell.concat == concat


@pytest.fixture(scope="module")
def tiny_net():
    return DiscreteNetwork(
        genotypes.DARTS_V2,
        num_classes=10,
        channels=4,
        layers=3,
        in_channels=1,
        auxiliary=True,
        rngs=nnx.Rngs(0),
    )


def images(n=6, size=8, channels=1, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, channels))


def run(net, *inputs, **kwargs):
    """A forward on a copy, so BatchNorm statistics of `net` stay untouched."""
    graphdef, state = nnx.split(net)
    return nnx.merge(graphdef, state, copy=True)(*inputs, **kwargs)


def test_drop_path_is_the_identity_at_rate_zero_and_in_eval_mode(tiny_net):
    x, key = images(), jax.random.PRNGKey(3)
    plain_train = run(tiny_net, x, train=True)
    np.testing.assert_array_equal(
        run(tiny_net, x, train=True, drop_path_rate=0.0, rng=key), plain_train
    )
    plain_eval = run(tiny_net, x, train=False)
    np.testing.assert_array_equal(
        run(tiny_net, x, train=False, drop_path_rate=0.5, rng=key), plain_eval
    )
    dropped = run(tiny_net, x, train=True, drop_path_rate=0.5, rng=key)
    assert not np.allclose(dropped, plain_train)  # whole paths zeroed: O(1) changes


def test_drop_path_zeroes_whole_examples_and_keeps_the_expectation():
    x = jnp.ones((4000, 2, 2, 3))
    y = np.asarray(drop_path(x, 0.3, jax.random.PRNGKey(0)))
    per_example = y.reshape(4000, -1)
    kept = np.all(per_example == 1 / 0.7, axis=1)
    dropped = np.all(per_example == 0, axis=1)
    assert np.all(kept | dropped)
    # 4000 Bernoulli(0.7) draws: the kept share lies within 5 standard deviations.
    assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / 4000)


def test_drop_path_spares_identity_edges():
    skips = tuple((("skip_connect", 0), ("skip_connect", 1)) for _ in range(4))
    g = Genotype.darts(skips, (2, 3, 4, 5), skips, (2, 3, 4, 5))
    cell = DiscreteCell(g, "normal", c_prev_prev=4, c_prev=4, channels=4, rngs=nnx.Rngs(0))
    assert not any(e.droppable for e in cell.cell.edges)
    reduce = DiscreteCell(g, "reduce", c_prev_prev=4, c_prev=4, channels=4, rngs=nnx.Rngs(0))
    # A stride-2 skip is a factorized reduction, not the identity: it may be dropped.
    assert all(e.droppable for e in reduce.cell.edges)
    s0, s1 = images(channels=4), images(channels=4, seed=1)
    kept = run(cell, s0, s1, train=True)
    np.testing.assert_array_equal(
        run(cell, s0, s1, train=True, drop_path_rate=0.9, rng=jax.random.PRNGKey(0)), kept
    )


def test_auxiliary_head_runs_only_in_training(tiny_net):
    x = images()
    logits, aux = run(tiny_net, x, train=True, return_aux=True)
    assert logits.shape == aux.shape == (6, 10)
    logits_eval, aux_eval = run(tiny_net, x, train=False, return_aux=True)
    assert aux_eval is None and logits_eval.shape == (6, 10)
    without = DiscreteNetwork(
        genotypes.DARTS_V2, num_classes=10, channels=4, layers=3, in_channels=1, rngs=nnx.Rngs(0)
    )
    assert without.auxiliary is None
    assert run(without, x, train=True, return_aux=True)[1] is None


@pytest.mark.parametrize("size", [2, 8, 16])
def test_auxiliary_head_takes_any_feature_size(size):
    head = AuxiliaryHead(6, 10, nnx.Rngs(0))
    assert head(images(3, size, 6), train=False).shape == (3, 10)


def test_cifar_geometry_gives_logits_and_halves_resolution_twice():
    g = genotypes.DARTS_V2
    net = DiscreteNetwork(g, num_classes=10, channels=4, layers=6, rngs=nnx.Rngs(0))
    x = images(2, 32, 3)
    s0 = s1 = net.stem(x, False)
    sizes = []
    for cell in net.cells:
        s0, s1 = s1, cell(s0, s1)
        sizes.append(s1.shape[1:])
    assert sizes == [(32, 32, 16)] * 2 + [(16, 16, 32)] * 2 + [(8, 8, 64)] * 2
    assert net(x).shape == (2, 10)


def test_genotypes_that_do_not_fit_the_space_are_refused():
    good = genotypes.DARTS_V2.to_dict()
    bad_op = {**good, "normal": [[["conv_7x7", 0], ["sep_conv_3x3", 1]], *good["normal"][1:]]}
    bad_input = {
        **good,
        "reduce": [[["max_pool_3x3", 2], ["max_pool_3x3", 1]], *good["reduce"][1:]],
    }
    short = {**good, "normal": good["normal"][:3]}
    for data, fragment in [
        (bad_op, "'conv_7x7' is not an op"),
        (bad_input, "input index 2 out of range"),
        # Any node count builds (NASNet has five), but not a concat of missing nodes.
        (short, r"normal_concat \[2, 3, 4, 5\] must list distinct node indices in 0\.\.4"),
    ]:
        with pytest.raises(GenotypeError, match=fragment):
            DiscreteNetwork(Genotype.from_dict(data), num_classes=10, rngs=nnx.Rngs(0))


def test_load_genotype_by_name_path_or_run_directory(tmp_path):
    assert genotypes.load_genotype("DARTS_V2") is genotypes.DARTS_V2
    genotypes.DARTS_V1.save(tmp_path / "genotype.json")
    assert genotypes.load_genotype(tmp_path) == genotypes.DARTS_V1
    assert genotypes.load_genotype(tmp_path / "genotype.json") == genotypes.DARTS_V1
    with pytest.raises(GenotypeError, match="did you mean 'DARTS_V2'"):
        genotypes.load_genotype("DARTS_V3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenotypeError, match=r"without a genotype\.json"):
        genotypes.load_genotype(tmp_path / "empty")


def test_cutout_zeroes_one_clipped_square_per_image():
    x = jnp.ones((500, 12, 12, 2))
    y = np.asarray(cutout(x, jax.random.PRNGKey(0), 4))
    zeros = (y == 0).all(axis=-1)  # every channel is cut together
    assert np.array_equal(zeros, (y == 0).any(axis=-1))
    for mask in zeros:
        rows, cols = np.nonzero(mask)
        assert 1 <= len(rows) <= 16
        # The zeros form one axis-aligned rectangle of at most 4 x 4.
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h <= 4 and w <= 4 and h * w == len(rows)
    assert max(int(m.sum()) for m in zeros) == 16  # an unclipped square somewhere
    np.testing.assert_array_equal(cutout(x, jax.random.PRNGKey(0), 0), x)


def test_drop_path_rate_ramps_linearly_per_epoch():
    rates = [float(drop_path_rate(jnp.asarray(s), 10, 4, 0.2)) for s in (0, 9, 10, 25, 39)]
    want = np.array([0.0, 0.0, 0.05, 0.1, 0.15])
    why = "float32 0.2 * epoch / 10, per value"
    assert_close(rates, want, terms=3, magnitude=want, why=why)


@pytest.mark.parametrize("genotype", [genotypes.NASNET, genotypes.AMOEBANET])
def test_five_node_published_cells_train_and_load_by_name(genotype):
    """NASNet and AmoebaNet, whose cells have five nodes and ops beyond the search
    space, build, run forward and backward, and load by their reference names."""
    from nasax.supernet.genotypes import load_genotype

    name = "NASNet" if genotype is genotypes.NASNET else "AmoebaNet"
    assert load_genotype(name) == genotype
    net = DiscreteNetwork(
        genotype, num_classes=10, channels=4, layers=3, in_channels=1, rngs=nnx.Rngs(0)
    )
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x, train=False) ** 2)

    grads = jax.grad(loss)(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > len(norms) // 2


@pytest.mark.parametrize("stride", [1, 2])
def test_factorized_conv_is_a_7x7_conv_with_the_composed_kernel(stride):
    """conv_7x1_1x7 (a 1x7 then a 7x1 conv) equals one 7x7 conv whose kernel composes
    the two, between the same ReLU and BatchNorm."""
    from jax import lax

    from nasax.supernet.ops import FactorizedConv

    op = FactorizedConv(3, 7, stride, True, nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 9, 9, 3))
    kernel = jnp.einsum("xjam,ixmb->ijab", op.row[...], op.column[...])
    full = lax.conv_general_dilated(
        jax.nn.relu(x),
        kernel,
        (stride, stride),
        ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    expected = op.bn(full, False)
    # Both sum the same 7 x 7 x 3 x 3 products x * row * column (taps, input channels,
    # channels between the two convs), grouped otherwise; the sums of their sizes are the
    # conv of |x| with the composed |kernel| (BN at its initial statistics scales by ~1).
    sizes = lax.conv_general_dilated(
        jax.nn.relu(x),
        jnp.einsum("xjam,ixmb->ijab", abs(op.row[...]), abs(op.column[...])),
        (stride, stride),
        ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    why = "factorized conv against the composed 7x7 conv, per value"
    assert_close(op(x, False), expected, terms=7 * 7 * 3 * 3, magnitude=sizes, why=why)
