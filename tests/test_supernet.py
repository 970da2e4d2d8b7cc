"""The DARTS supernet: parameter parity with the reference, op shapes, mixed edges, splits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from nasax.search.strategy import split_supernet
from nasax.supernet import DARTS_SPACE, OPS, ArchParam, MixedEdge, SearchNetwork
from nasax.supernet import ops as ops_lib
from tests.tolerance import assert_close


def param_count(channels: int, layers: int, classes: int, in_channels: int = 3) -> int:
    abstract = nnx.eval_shape(
        lambda: SearchNetwork(
            DARTS_SPACE,
            channels=channels,
            layers=layers,
            num_classes=classes,
            in_channels=in_channels,
            rngs=nnx.Rngs(0),
        )
    )
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize(
    ("channels", "layers", "classes", "expected"),
    [
        # Counted from the published definition and checked against the PyTorch
        # reference (shared/bench/torch_darts_ref.py): 1.930618 M at the paper setting.
        (16, 8, 10, 1_930_618),
        (8, 5, 10, 394_210),
        (4, 3, 7, 72_659),
    ],
)
def test_search_network_parameter_count_matches_reference(channels, layers, classes, expected):
    assert param_count(channels, layers, classes) == expected


def test_arch_parameters_are_14_by_8_per_cell_kind():
    net = SearchNetwork(DARTS_SPACE, channels=4, layers=3, num_classes=10, rngs=nnx.Rngs(0))
    arch = nnx.state(net, ArchParam)
    shapes = sorted(x.shape for x in jax.tree.leaves(arch))
    assert shapes == [(14, 8), (14, 8)]
    assert DARTS_SPACE.n_edges == 14 and DARTS_SPACE.n_ops == 8


def test_weight_and_arch_leaves_are_disjoint_and_cover_everything():
    net = SearchNetwork(DARTS_SPACE, channels=4, layers=3, num_classes=10, rngs=nnx.Rngs(0))
    _, arch, params, stats = split_supernet(net)
    groups = [arch, params, stats]
    paths = [{p for p, _ in jax.tree_util.tree_flatten_with_path(g)[0]} for g in groups]
    everything = {p for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(net))[0]}
    assert all(a.isdisjoint(b) for i, a in enumerate(paths) for b in paths[i + 1 :])
    assert set().union(*paths) == everything
    assert len(paths[0]) == 2  # only the alphas are architecture parameters


def test_forward_gives_logits_for_each_image():
    net = SearchNetwork(
        DARTS_SPACE, channels=4, layers=3, num_classes=7, in_channels=1, rngs=nnx.Rngs(0)
    )
    logits = nnx.jit(lambda net, x: net(x, train=True))(net, jnp.ones((3, 8, 8, 1)))
    assert logits.shape == (3, 7)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", DARTS_SPACE.ops)
@pytest.mark.parametrize("size", [8, 7])
def test_each_primitive_keeps_shape_at_stride_1_and_halves_it_at_stride_2(name, size):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 6))
    for stride in (1, 2):
        op = ops_lib.build_op(name, 6, stride, False, nnx.Rngs(0))
        y = op(x, True)
        half = -(-size // stride)
        assert y.shape == (2, half, half, 6), (name, stride)


def test_avg_pool_excludes_padding():
    x = jnp.ones((1, 4, 4, 1))
    # Sums of small integers over their counts: exact.
    np.testing.assert_array_equal(ops_lib.avg_pool(x, 1), 1.0)  # a corner averages 4 ones, not 4/9
    ramp = jnp.arange(16.0).reshape(1, 4, 4, 1)
    assert float(ops_lib.avg_pool(ramp, 1)[0, 0, 0, 0]) == (0 + 1 + 4 + 5) / 4


def test_max_pool_ignores_padding_for_negative_inputs():
    x = -jnp.ones((1, 4, 4, 1))
    np.testing.assert_array_equal(ops_lib.max_pool(x, 2), -1.0)  # a maximum: exact


def xla_conv(x, w, stride, padding, dilation, groups=1):
    """The plain XLA convolution the ops' CPU forms are checked against."""
    return lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def term_sizes(conv, x, w, probe):
    """The sums of |term| behind conv(x, w) and behind its gradients along `probe`, for a
    conv (linear in x and in w): conv at |x|, |w| and its gradients there along |probe|."""
    x, w, probe = abs(x), abs(w), abs(probe)
    gx, gw = jax.grad(lambda x, w: jnp.sum(conv(x, w) * probe), (0, 1))(x, w)
    return conv(x, w), gx, gw


@pytest.mark.parametrize(
    ("kernel", "dilation", "stride", "size", "channels"),
    # Past 256 channels the windows' kernel gradient is autodiff's, not a dense conv's.
    [(3, 1, 1, 9, 24), (5, 1, 2, 9, 24), (3, 2, 1, 9, 24), (5, 2, 1, 8, 260), (3, 1, 2, 7, 260)],
)
def test_depthwise_conv_equals_the_native_grouped_form(kernel, dilation, stride, size, channels):
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(keys[0], (2, size, size, channels))
    w = jax.random.normal(keys[1], (kernel, kernel, 1, channels))
    pad = dilation * (kernel - 1) // 2

    def native(x, w):
        return xla_conv(x, w, stride, pad, dilation, groups=channels)

    def ours(x, w):
        return ops_lib.depthwise_conv(x, w, stride=stride, padding=pad, dilation=dilation)

    got, want = ours(x, w), native(x, w)
    probe = jax.random.normal(keys[2], want.shape)
    # Per channel: a value sums kernel^2 taps, an input's gradient at most as many, the
    # kernel's gradient one product per output position.
    taps, positions = kernel * kernel, want.shape[0] * want.shape[1] * want.shape[2]
    sizes = term_sizes(native, x, w, probe)
    assert_close(got, want, terms=taps, magnitude=sizes[0], why="depthwise conv")

    def grads(f, w=w):
        return jax.grad(lambda x, w: jnp.sum(f(x, w) * probe), (0, 1))(x, w)

    for g_ours, g_native, terms, size, name in zip(
        grads(ours), grads(native), (taps, positions), sizes[1:], "xw", strict=True
    ):
        assert_close(g_ours, g_native, terms=terms, magnitude=size, why=f"depthwise d/d{name}")

    # Exact second-order DARTS differentiates through the gradient.
    def curvature(f):
        return jax.grad(lambda w: jnp.sum(jnp.tanh(grads(f, w)[0])))(w)

    # A kernel gradient with sech^2(g_x) <= 1 in place of x, plus g_x's own rounding,
    # passed on by |d sech^2| <= 0.77: the kernel gradient's sums at x = 1 + g_x's sizes.
    size = term_sizes(native, 1 + sizes[1], w, probe)[2]
    why = "depthwise curvature"
    assert_close(
        curvature(ours), curvature(native), terms=positions + taps, magnitude=size, why=why
    )


@pytest.mark.parametrize(("size", "stride"), [(9, 1), (9, 2), (8, 2), (7, 1)])
def test_max_pool_and_its_gradient_equal_reduce_window(size, stride):
    keys = jax.random.split(jax.random.PRNGKey(size + stride), 2)
    x = jax.random.normal(keys[0], (2, size, size, 3))
    # Ties: the gradient goes to the first maximal tap, as reduce_window's (and PyTorch's).
    x = x.at[:, 2, 2:4, :].set(5.0).at[:, 4:6, 5, :].set(4.0)  # tied maxima
    want = ops_lib._max_pool_window(x, stride)
    np.testing.assert_array_equal(ops_lib.max_pool(x, stride), want)
    probe = jax.random.normal(keys[1], want.shape)

    def grad(pool):
        return jax.jit(jax.grad(lambda x: jnp.sum(pool(x, stride) * probe)))(x)

    # An input's gradient sums the probe of each window it is the maximum of (9 at most).
    sizes = jax.grad(lambda x: jnp.sum(ops_lib._max_pool_window(x, stride) * abs(probe)))(x)
    why = "max-pool gradient"
    assert_close(
        grad(ops_lib.max_pool), grad(ops_lib._max_pool_window), terms=9, magnitude=sizes, why=why
    )
    y = ops_lib.max_pool(x.at[0, 1, 1, 0].set(jnp.nan), stride)
    assert bool(jnp.isnan(y[0, 0, 0, 0]))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [
        (9, 3, 1, 1, 1),
        (9, 3, 2, 1, 1),
        (8, 5, 2, 2, 1),
        (7, 3, 1, 2, 2),
        (7, 5, 2, 4, 2),
        (7, 1, 2, 0, 1),
    ],
)
def test_conv2d_gradients_match_autodiff_of_the_plain_conv(size, kernel, stride, padding, dilation):
    keys = jax.random.split(jax.random.PRNGKey(size * kernel + stride), 4)
    x = jax.random.normal(keys[0], (2, size, size, 3))
    w = jax.random.normal(keys[1], (kernel, kernel, 3, 5))

    def plain(x, w):
        return xla_conv(x, w, stride, padding, dilation)

    def ours(x, w):
        return ops_lib.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)

    want = plain(x, w)
    probe = jax.random.normal(keys[2], want.shape)
    # A value sums kernel^2 x 3 taps, an input's gradient at most kernel^2 x 5, the
    # kernel's gradient one product per output position.
    taps, positions = kernel * kernel, want.shape[0] * want.shape[1] * want.shape[2]
    sizes = term_sizes(plain, x, w, probe)
    assert_close(ours(x, w), want, terms=taps * 3, magnitude=sizes[0], why="conv")

    def grads(f, w=w):
        return jax.grad(lambda x, w: jnp.sum(f(x, w) * probe), (0, 1))(x, w)

    def assert_grads_close(got, how):
        for g_ours, g_plain, terms, size, name in zip(
            got, grads(plain), (taps * 5, positions), sizes[1:], "xw", strict=True
        ):
            assert_close(g_ours, g_plain, terms=terms, magnitude=size, why=f"{how} d/d{name}")

    assert_grads_close(grads(ours), "conv")

    # Exact second-order DARTS differentiates through the gradient, and GDAS runs the
    # conv inside a `lax.switch` branch: both must give the same numbers.
    def curvature(f):
        return jax.grad(lambda w: jnp.sum(jnp.tanh(grads(f, w)[0])))(w)

    # A kernel gradient with sech^2(g_x) <= 1 in place of x, plus g_x's own rounding,
    # passed on by |d sech^2| <= 0.77: the kernel gradient's sums at x = 1 + g_x's sizes.
    size = term_sizes(plain, 1 + sizes[1], w, probe)[2]
    why = "conv curvature"
    assert_close(
        curvature(ours), curvature(plain), terms=positions + taps * 5, magnitude=size, why=why
    )

    def switched(f):
        branches = [lambda x, w: f(x, w), lambda x, w: jnp.zeros_like(want)]
        loss = lambda x, w: jnp.sum(lax.switch(jnp.int32(0), branches, x, w) * probe)
        return jax.grad(loss, (0, 1))(x, w)

    assert_grads_close(switched(ours), "switched conv")


FORWARD_CASES = {
    "conv2d": (lambda x, w: ops_lib.conv2d(x, w, stride=2, padding=1, dilation=1), (3, 3, 4, 5)),
    "dil_conv2d": (
        lambda x, w: ops_lib.conv2d(x, w, stride=1, padding=2, dilation=2),
        (3, 3, 4, 4),
    ),
    "depthwise": (
        lambda x, w: ops_lib.depthwise_conv(x, w, stride=2, padding=2, dilation=1),
        (5, 5, 1, 4),
    ),
    "max_pool": (lambda x, w: ops_lib.max_pool(x * w, 2), (4,)),
}


@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_over_reverse_through_the_ops_equals_reverse_over_reverse(case):
    """Exact second-order DARTS pushes a tangent through the arch gradient (`jax.jvp` of
    a `jax.grad`), which the ops' CPU forms with custom VJPs refuse (depending on the JAX
    version and the transforms around them). Under `forward_differentiable` they take
    plain forms with the same values and gradients, and forward over reverse gives what
    reverse over reverse gives."""
    from nasax.engine.marking import forward_differentiable

    op, w_shape = FORWARD_CASES[case]
    keys = jax.random.split(jax.random.PRNGKey(len(case)), 5)
    x = jax.random.normal(keys[0], (2, 7, 7, 4))
    x = x.at[:, 2, 2:4, :].set(3.0)  # tied maxima for the pool
    w = jax.random.normal(keys[1], w_shape)
    u = jax.random.normal(keys[2], w_shape)
    probe = jax.random.normal(keys[3], op(x, w).shape)
    probe_x = jax.random.normal(keys[4], x.shape)

    def loss(w, x):
        return jnp.sum(jnp.tanh(op(x, w)) * probe)

    def input_grad(w):
        """A gradient that goes back through the op, as the arch gradient's does."""
        return jax.grad(loss, argnums=1)(w, x)

    traced = forward_differentiable(lambda w: (op(x, w), jax.grad(loss)(w, x)))
    # A value sums a product per kernel tap (1 for the pool); the kernel's gradient one
    # per output position, each through sech^2 of a value whose rounding |d sech^2| <= 0.77
    # passes on. (A max-pool's sums are bounded by those of |x| |w| too.)
    out = op(x, w)
    taps, positions = int(np.prod(w_shape[:-1])), out.shape[0] * out.shape[1] * out.shape[2]
    out_sizes, _, w_sizes = term_sizes(op, x, w, probe)
    got_out, got_grad = traced(w)
    assert_close(got_out, out, terms=taps, magnitude=out_sizes, why=f"{case} traced")
    why = f"{case} traced gradient"
    w_sizes = w_sizes * (1 + float(out_sizes.max()))
    assert_close(got_grad, jax.grad(loss)(w, x), terms=positions + taps, magnitude=w_sizes, why=why)
    _, forward_over_reverse = jax.jvp(forward_differentiable(input_grad), (w,), (u,))
    reverse_over_reverse = jax.grad(lambda w: jnp.vdot(input_grad(w), probe_x))(w)
    # A second derivative contracted with two random directions, the same products in
    # other orders over the taps and positions above; its terms' sizes are not worked
    # out: 1e-4 (840 eps32) of the result, which the first derivatives' bounds reach.
    np.testing.assert_allclose(
        jnp.vdot(forward_over_reverse, probe_x), jnp.vdot(reverse_over_reverse, u), rtol=1e-4
    )


def test_batch_norm_matches_torch_running_statistics():
    bn = ops_lib.BatchNorm(3, affine=True)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 5, 5, 3)) * 2 + 1
    y = bn(x, True)
    n = 4 * 5 * 5
    flat = np.asarray(x, np.float64).reshape(-1, 3)
    # Per channel: a mean of n values, then the mean of n normalised ones that cancel; the
    # first mean's rounding shifts every y by up to mean|x| / std.
    sizes = np.abs(flat).mean(0) / flat.std(0) + np.abs(np.asarray(y)).reshape(-1, 3).mean(0)
    assert_close(y.mean((0, 1, 2)), 0.0, terms=2 * n, magnitude=sizes, why="normalised means")
    unbiased = np.var(flat, axis=0) * n / (n - 1)
    # Sums of n squares (of x around its mean), then 0.9 + 0.1 of them.
    sizes = 0.9 + 0.1 * (flat**2).mean(0) * n / (n - 1)
    why = "running variance"
    assert_close(bn.var[...], 0.9 + 0.1 * unbiased, terms=n + 2, magnitude=sizes, why=why)
    why = "running mean: 0.1 of a mean of n values"
    sizes = 0.1 * np.abs(flat).mean(0)
    assert_close(bn.mean[...], 0.1 * flat.mean(0), terms=n + 1, magnitude=sizes, why=why)


def test_mixed_edge_is_the_weighted_sum_of_its_ops():
    edge = MixedEdge(DARTS_SPACE.ops, 4, 1, nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 6, 4))
    alphas = jax.random.normal(jax.random.PRNGKey(4), (DARTS_SPACE.n_ops,))
    w = jax.nn.softmax(alphas)
    why = "a softmax over 8 (an exp, a sum, a division), summed again"
    assert_close(w.sum(), 1.0, terms=1 + 8 + 1 + 8, why=why)
    got = edge(x, w, False)
    want, sizes = 0.0, 0.0
    for k, op, bn in zip(edge.positions, edge.ops, edge.norms):
        y = op(x, False)
        y = y if bn is None else bn(y, False)
        want, sizes = want + w[k] * y, sizes + w[k] * abs(y)
    # The same op outputs (the same code), weighted and summed in another order.
    why = "mixed edge against its ops' weighted sum"
    assert_close(got, want, terms=DARTS_SPACE.n_ops, magnitude=sizes, why=why)
    # only `none` carries weight: the edge outputs zeros
    none_only = jnp.zeros(DARTS_SPACE.n_ops).at[DARTS_SPACE.ops.index("none")].set(1.0)
    np.testing.assert_array_equal(edge(x, none_only, False), 0.0)  # 0 times finite values
    assert OPS.get("none").zero and len(edge.ops) == DARTS_SPACE.n_ops - 1


def test_softmax_op_weights_sum_to_one_for_every_edge():
    net = SearchNetwork(DARTS_SPACE, channels=4, layers=3, num_classes=10, rngs=nnx.Rngs(5))
    for alphas in net.alphas().values():
        why = "a softmax over 8 (an exp, a sum, a division), summed again"
        assert_close(jax.nn.softmax(alphas, -1).sum(-1), 1.0, terms=1 + 8 + 1 + 8, why=why)


@pytest.mark.parametrize("shape", [(3, 3, 8, 8), (1, 5, 3, 7), (5, 5, 1, 48), (256, 10)])
def test_torch_default_init_draws_the_values_of_variance_scaling(shape):
    # Drawn flat for a faster compile; the values must stay those of the stock initializer
    # (and so of every earlier run), down to the bound's float32 rounding.
    stock = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(ops_lib.torch_default_init(key, shape), stock(key, shape))
    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(
        ops_lib.flat_uniform(key, shape, jnp.dtype(jnp.float32), -0.1, 0.1),
        jax.random.uniform(key, shape, jnp.float32, -0.1, 0.1),
    )
