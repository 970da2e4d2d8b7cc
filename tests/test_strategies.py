"""The relaxation strategies' building blocks, checked by hand: single-path edges, partial
channels, Gumbel and Dirichlet samples, temperature schedules, random cells."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.core.errors import ConfigError
from nasax.search.drnas import concentration, dirichlet_kl, dirichlet_mean
from nasax.search.gdas import hard_gumbel
from nasax.search.options import strategy_options, validate_config
from nasax.search.pcdarts import PartialChannelEdge, channel_shuffle
from nasax.search.relaxed import Annealing, gumbel, temperature
from nasax.search.single_path import paths_genotype, sample_paths
from nasax.search.strategy import Clock, SearchSetup
from nasax.supernet.cells import MixedEdge
from nasax.supernet.network import node_softmax
from nasax.supernet.ops import register_op
from nasax.supernet.spaces import DARTS_SPACE, SPACES, SearchSpace
from tests.tolerance import assert_close

CALLS: list[int] = []


class _Probe(nnx.Module):
    """An op that records each time it really runs (a host callback) and adds `tag`."""

    def __init__(self, tag: int, stride: int) -> None:
        self.tag, self.stride = tag, stride

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        jax.debug.callback(lambda: CALLS.append(self.tag))
        return x[:, :: self.stride, :: self.stride, :] + self.tag


for _tag in (1, 2, 3):
    register_op(f"probe_{_tag}")(lambda c, stride, affine, rngs, t=_tag: _Probe(t, stride))
PROBE_SPACE = SPACES.register(
    "probe", SearchSpace(name="probe", ops=("none", "probe_1", "probe_2", "probe_3"))
)


def _edge(**kw) -> MixedEdge:
    return MixedEdge(PROBE_SPACE.ops, 4, 1, nnx.Rngs(0), **kw)


def test_single_path_edge_runs_only_the_chosen_op():
    edge = _edge()
    x = jnp.zeros((1, 2, 2, 4))
    run = nnx.jit(lambda edge, x, w, p: edge(x, w, False, path=p))
    one_hot = jnp.array([0.0, 0.0, 1.0, 0.0])
    for path, expected in ((1, [1]), (2, [2]), (3, [3]), (0, [])):
        CALLS.clear()
        y = run(edge, x, one_hot, jnp.asarray(path))
        jax.block_until_ready(y)
        assert expected == CALLS
        # One-hot straight-through weights: the output is weights[path] * op(x) + the rest.
        value = one_hot[path] * (float(expected[0]) if expected else 0.0) + 1.0 - one_hot[path]
        np.testing.assert_array_equal(y, np.full(x.shape, value))  # small integers: exact
    CALLS.clear()
    jax.block_until_ready(nnx.jit(lambda edge, x: edge(x, jnp.ones(4) / 4, False))(edge, x))
    assert sorted(CALLS) == [1, 2, 3]  # the mixed edge runs every op but `none`


def test_single_path_gradient_reaches_every_weight():
    edge = _edge()
    x = jnp.ones((1, 2, 2, 4))
    grad = jax.grad(lambda w: edge(x, w, False, path=jnp.asarray(2)).sum())(jnp.eye(4)[2])
    # d/dw[path] = sum(op(x)) = 16 * 3; the others enter as constants: d/dw[k] = 16.
    np.testing.assert_array_equal(grad, [16.0, 16.0, 48.0, 16.0])  # sums of 16 integers


def test_partial_channel_edge_splits_bypasses_and_shuffles():
    edge = PartialChannelEdge(("none", "skip_connect"), 4, 1, nnx.Rngs(0), k=2)
    x = jnp.arange(4.0).reshape(1, 1, 1, 4) + 1  # channels a=1, b=2, c=3, d=4
    y = edge(x, jnp.array([0.0, 0.5]), False)
    # a, b through the ops (0.5 * identity), c, d bypassed; shuffle with 2 groups: a c b d.
    # Halves of integers and copies: exact.
    np.testing.assert_array_equal(y[0, 0, 0], [0.5, 3.0, 1.0, 4.0])
    np.testing.assert_array_equal(channel_shuffle(jnp.arange(6.0), 3), [0, 2, 4, 1, 3, 5])


def test_partial_channel_edge_max_pools_the_bypass_at_stride_2():
    edge = PartialChannelEdge(("none", "max_pool_3x3"), 4, 2, nnx.Rngs(0), k=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
    y = edge(x, jnp.array([1.0, 0.0]), True)
    assert y.shape == (2, 3, 3, 4)
    # Channel 0 went through the ops (weight 0 -> zeros); channels 1..3 are 2x2 max pools
    # (odd sizes padded at the far edge), shuffled to positions 1..3 for K = 4. Zeros,
    # maxima and copies: exact.
    np.testing.assert_array_equal(y[..., 0], 0.0)
    np.testing.assert_array_equal(y[:, 0, 0, 1:], jnp.max(x[:, :2, :2, 1:], axis=(1, 2)))
    np.testing.assert_array_equal(y[:, 2, 2, 1:], x[:, 4, 4, 1:])
    with pytest.raises(ValueError, match="partial_channels=3"):
        PartialChannelEdge(("skip_connect",), 4, 1, nnx.Rngs(0), k=3)


def test_edge_normalisation_softmaxes_over_each_nodes_incoming_edges():
    beta = jnp.arange(14.0)
    weights = node_softmax(beta, DARTS_SPACE)
    for node in range(4):
        edges = DARTS_SPACE.node_edges(node)
        np.testing.assert_array_equal(  # the same softmax of the same slice
            weights[edges.start : edges.stop], jax.nn.softmax(beta[edges.start : edges.stop])
        )


def test_hard_gumbel_is_one_hot_with_the_soft_samples_gradient():
    alpha = jax.random.normal(jax.random.PRNGKey(1), (14, 8))
    rng = jax.random.PRNGKey(2)
    weights, index = hard_gumbel(alpha, rng, jnp.asarray(0.5))
    # one_hot - probs + probs: two roundings of numbers <= 1.
    assert_close(weights, jax.nn.one_hot(index, 8), terms=2, why="straight-through one-hot")
    probe = jax.random.normal(jax.random.PRNGKey(3), (14, 8))
    g = gumbel(rng, alpha.shape)

    def soft(a: jax.Array) -> jax.Array:
        return jnp.sum(probe * jax.nn.softmax((jax.nn.log_softmax(a) + g) / 0.5))

    hard_grad = jax.grad(lambda a: jnp.sum(probe * hard_gumbel(a, rng, jnp.asarray(0.5))[0]))
    # Back through a softmax over 8 (/ 0.5) and a log-softmax over 8: each gradient's
    # terms add up to at most 2 |probe| / 0.5, then twice that.
    why = "straight-through gradient against the soft sample's"
    magnitude = 4 * float(jnp.abs(probe).max()) / 0.5
    assert_close(
        hard_grad(alpha), jax.grad(soft)(alpha), terms=8 + 8 + 2, magnitude=magnitude, why=why
    )


def test_temperature_anneals_from_tau_max_to_tau_min_by_epoch():
    setup = SearchSetup(*[None] * 6, epochs=5, steps_per_epoch=10)
    linear = temperature(Annealing(tau_max=10.0, tau_min=0.1), setup)
    five = [linear(Clock(jnp.asarray(s), jnp.asarray(5))) for s in (0, 9, 10, 20, 49, 500)]
    # float32 tau_max - (tau_max - tau_min) progress: 3 roundings of numbers up to 10 (0.1
    # comes out of 10 - 9.9, 4e-7 off).
    why = "float32 linear annealing"
    assert_close(five, [10.0, 10.0, 7.525, 5.05, 0.1, 0.1], terms=3, magnitude=10.0, why=why)
    geometric = temperature(Annealing(tau_max=1.0, tau_min=0.01, anneal="exponential"), setup)
    # 1 * 0.01 ** 0.5 as exp(0.5 log 0.01): the exponent's rounding, relative to
    # |log 0.01| = 4.6, becomes relative to the result.
    why = "float32 geometric annealing"
    tau = geometric(Clock(jnp.asarray(20), jnp.asarray(5)))
    assert_close(tau, 0.1, terms=3, magnitude=0.1 * abs(np.log(0.01)), why=why)
    # Spanning 2 epochs (a time limit): tau_max in the first, tau_min from the second on.
    two = [linear(Clock(jnp.asarray(s), jnp.asarray(2))) for s in (9, 10, 40)]
    assert_close(two, [10.0, 0.1, 0.1], terms=3, magnitude=10.0, why="float32 linear annealing")


def test_drnas_samples_lie_on_the_simplex_and_train_the_concentration():
    alpha = jax.random.normal(jax.random.PRNGKey(0), (14, 8))
    samples = jax.random.dirichlet(jax.random.PRNGKey(1), concentration(alpha), (64, 14))
    assert bool(jnp.all(samples >= 0))
    # A softmax over 8 (an exp, a sum of 8, a division), summed again over 8.
    assert_close(samples.sum(-1), 1.0, terms=1 + 8 + 1 + 8, why="Dirichlet samples' sums")
    grad = jax.grad(
        lambda a: jax.random.dirichlet(jax.random.PRNGKey(1), concentration(a))[:, 0].sum()
    )(alpha)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0
    mean = dirichlet_mean({"normal": alpha})["normal"]
    # A sum of 8, a division, summed again over 8.
    assert_close(mean.sum(-1), 1.0, terms=8 + 1 + 8, why="Dirichlet means' sums")


def test_dirichlet_kl_matches_a_monte_carlo_estimate():
    from scipy.special import gammaln
    from scipy.stats import dirichlet

    conc = np.array([2.0, 0.7, 1.3, 4.0])
    x = dirichlet.rvs(conc, size=200_000, random_state=0)
    log_ratio = dirichlet.logpdf(x.T, conc) - dirichlet.logpdf(x.T, np.full(4, 1.5))
    standard_error = log_ratio.std() / np.sqrt(log_ratio.size)  # 0.004, of a KL of 1.64
    kl = float(dirichlet_kl(jnp.asarray(conc), 1.5))
    assert kl == pytest.approx(log_ratio.mean(), abs=4 * standard_error)  # Monte Carlo
    # KL(p || p): 5 float32 parts that cancel, two of them sums of 4, of sizes up to
    # lgamma(6) = 4.8 and 4 |lgamma(1.5)| = 0.48.
    sizes = 2 * (gammaln(6.0) + 4 * abs(gammaln(1.5)))
    kl = dirichlet_kl(jnp.full(4, 1.5), 1.5)
    assert_close(kl, 0.0, terms=5 + 4 + 4, magnitude=sizes, why="KL of a Dirichlet with itself")


def test_random_cells_are_valid_genotypes_with_two_inputs_per_node():
    sample = jax.jit(jax.vmap(lambda k: sample_paths(k, DARTS_SPACE, ("normal", "reduce"))))
    paths = sample(jax.random.split(jax.random.PRNGKey(0), 200))
    none = DARTS_SPACE.ops.index("none")
    seen_ops = set()
    for i in range(200):
        cells = {k: np.asarray(p[i]) for k, p in paths.items()}
        genotype = paths_genotype(cells, DARTS_SPACE).validate()
        for kind in ("normal", "reduce"):
            assert np.sum(cells[kind] != none) == 8  # two kept edges for each of 4 nodes
            nodes, _ = genotype.cell(kind)
            assert all(len({src for _, src in node}) == 2 for node in nodes)
            seen_ops |= {op for node in nodes for op, _ in node}
    assert seen_ops == set(DARTS_SPACE.ops) - {"none"}


@pytest.mark.parametrize(
    "section, fragment",
    [
        ({"strategy": "gdas", "gdas": {"tau_min": 20.0}}, "tau_min"),
        ({"strategy": "snas", "snas": {"anneal": "cosine"}}, "anneal"),
        ({"strategy": "drnas", "drnas": {"regularizer": "l1"}}, "regularizer"),
        ({"strategy": "pcdarts", "pcdarts": {"partial_channel": 4}}, "partial_channel"),
        ({"strategy": "random_ws", "random_ws": {"candidates": 0}}, "candidates"),
        ({"strategy": "beta_darts", "beta_darts": {"scale": -1.0}}, "scale"),
        ({"strategy": "darts_minus", "darts_minus": {"beta": 1.0}}, "beta"),
        ({"strategy": "sdarts_rs", "sdarts_rs": {"epsilon_min": 0.5}}, "epsilon_min"),
    ],
)
def test_strategy_sections_reject_bad_values_naming_the_key(section, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate_config({"search": section})


def test_pcdarts_refuses_a_warmup_that_leaves_no_architecture_epochs(tiny_npz):
    from nasax.loop.data import load_dataset
    from nasax.search.strategy import STRATEGIES
    from nasax.search.task import build_setup

    search = {"strategy": "pcdarts", "epochs": 10, "pcdarts": {"arch_warmup_epochs": 15}}
    config = validate_config({"data": {"name": f"npz:{tiny_npz}"}, "search": search})
    setup = build_setup(config, load_dataset(config.data.name), steps_per_epoch=4)
    with pytest.raises(ConfigError, match="arch_warmup_epochs=15"):
        STRATEGIES.get("pcdarts")(setup, strategy_options(config.search))


def test_a_gdas_forward_runs_one_op_per_edge_of_every_cell():
    from nasax.search.gdas import hard_gumbel
    from nasax.supernet.network import SearchNetwork

    net = SearchNetwork(PROBE_SPACE, channels=4, layers=3, num_classes=3, rngs=nnx.Rngs(0))
    alphas = {k: jnp.zeros((14, 4)).at[:, 0].set(-30.0) for k in ("normal", "reduce")}
    drawn = {
        k: hard_gumbel(a, jax.random.PRNGKey(i), 1.0) for i, (k, a) in enumerate(alphas.items())
    }
    forward = {
        "weights": {k: w for k, (w, _) in drawn.items()},
        "paths": {k: p for k, (_, p) in drawn.items()},
    }
    CALLS.clear()
    run = nnx.jit(lambda net, x: net(x, train=True, **forward))
    jax.block_until_ready(run(net, jnp.ones((2, 8, 8, 3))))
    # `none` is all but never drawn at alpha -30: each of 3 cells x 14 edges runs one op.
    kinds = ("normal", "reduce", "reduce")  # layers=3: cells 1 and 2 reduce
    expected = sorted(int(t) for k in kinds for t in drawn[k][1])
    assert sorted(CALLS) == expected and len(CALLS) == 42
