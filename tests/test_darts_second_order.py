"""Second-order DARTS: exact and finite-difference hypergradients against a brute force.

A tiny supernet (one reduction cell with one node whose edges mix max-pool and
sep-conv, 2 channels, 6x6 images) keeps the compiled programs small: the float32
search step, and one float64 program that returns both hypergradients and the unrolled
objective at the points the brute-force differences need.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nasax.core.errors import ConfigError
from nasax.search.options import load_config, strategy_options, validate_config
from nasax.search.strategy import STRATEGIES, FunctionalSupernet, alphas_of
from nasax.search.task import build_setup
from nasax.search.unrolled import unrolled_arch_grad, virtual_weight_step
from nasax.supernet.network import SearchNetwork
from nasax.supernet.spaces import SearchSpace
from tests.test_search_step import tiny_dataset
from tests.tolerance import assert_close

SPACE = SearchSpace("unrolled_test", ("max_pool_3x3", "sep_conv_3x3"), n_nodes=1)
GRAD_CLIP = 0.5
"""Below the tiny net's gradient norm, so the virtual step clips (checked below)."""
XI = 1.0
"""A virtual step well above the weight lr (0.025), so the second-order term is large."""
FD_SHARE = 0.1
"""The finite-difference Hessian (radius 0.01, as DARTS) gets the second-order term to 10%:
the tiny net's ReLU and max-pool kinks, not float error, limit it (it converges to the
exact term as the radius shrinks)."""
DIRECTIONS = 4
H = 1e-6


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(tree)])


def to64(tree):
    return jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        tree,
    )


def reference_virtual_step(params, grads, buf, xi, *, clip, weight_decay, momentum):
    """The DARTS reference's unrolled weights, w - ξ(clip(g) + wd·w + momentum·buf), by hand."""
    scale = jnp.minimum(1.0, clip / optax.tree.norm(grads))
    return jax.tree.map(
        lambda w, g, b: w - xi * (scale * g + weight_decay * w + momentum * b), params, grads, buf
    )


@pytest.fixture(scope="module")
def tiny():
    """A second-order DARTS strategy on the tiny supernet, and its first jitted step."""
    config = validate_config(
        {
            "model": {"channels": 2, "layers": 1},
            "search": {"batch_size": 8, "darts": {"order": 2}},
            "optim": {"weights": {"grad_clip": GRAD_CLIP}},
        }
    )
    data = tiny_dataset()
    network = partial(
        SearchNetwork, SPACE, channels=2, layers=1, num_classes=data.num_classes, in_channels=1
    )
    setup = build_setup(config, data, steps_per_epoch=4)._replace(
        space=SPACE, network=lambda rngs: network(rngs=rngs)
    )
    strategy = STRATEGIES.get("darts")(setup, strategy_options(config.search))

    def batch(i: int) -> dict:
        return {"image": data.x_train[8 * i : 8 * i + 8], "label": data.y_train[8 * i : 8 * i + 8]}

    state0 = strategy.init(jax.random.PRNGKey(0))
    state1, metrics = jax.jit(strategy.step)(state0, batch(0), batch(1))
    return SimpleNamespace(
        config=config,
        setup=setup,
        net=FunctionalSupernet.create(setup),
        batch=batch,
        state0=state0,
        state1=state1,
        metrics=metrics,
    )


@pytest.fixture(scope="module")
def oracle(tiny):
    """One float64 program: exact, finite-difference and first-order arch gradients, the
    weight-gradient norm, and the hand-built unrolled objective at a stack of alphas."""
    net, setup, w = tiny.net, tiny.setup, tiny.config.optim.weights

    def program(state, x_train, y_train, x_val, y_val, points, xi):
        args = (net, setup, state, x_train, y_train, x_val, y_val)
        exact = unrolled_arch_grad(*args, hessian="exact", xi=xi)[0]
        fd = unrolled_arch_grad(*args, hessian="finite_difference", xi=xi)[0]
        stats = state.batch_stats
        first = jax.grad(net.loss, argnums=2, has_aux=True)(
            state.params, stats, state.arch, x_val, y_val
        )[0]

        def weight_grads(arch):
            return jax.grad(net.loss, has_aux=True)(state.params, stats, arch, x_train, y_train)[0]

        def unrolled_objective(arch):
            unrolled = reference_virtual_step(
                state.params,
                weight_grads(arch),
                optax.tree.get(state.weight_opt, "trace"),
                xi,
                clip=w.grad_clip,
                weight_decay=w.weight_decay,
                momentum=w.momentum,
            )
            return net.loss(unrolled, stats, arch, x_val, y_val)[0]

        grad_norm = optax.tree.norm(weight_grads(state.arch))
        return exact, fd, first, grad_norm, jax.vmap(unrolled_objective)(points)

    compiled = jax.jit(program)

    def run(state, train, val, rngs=None, xi=XI, directions=()):
        """Runs the program at `state` on preprocessed batches, the alphas moved ±H along
        each direction (point 0 is the alphas themselves)."""
        with jax.enable_x64(True):
            rngs = rngs or (state.rng, state.rng)
            x_train = setup.preprocess(train, rngs[0], True)
            x_val = setup.preprocess(val, rngs[1], True)
            state = to64(state)
            moved = [state.arch]
            for d in directions:
                for sign in (1.0, -1.0):
                    moved.append(jax.tree.map(lambda a, v, s=sign: a + s * H * v, state.arch, d))
            moved += [state.arch] * (1 + 2 * DIRECTIONS - len(moved))  # one shape: one compile
            points = jax.tree.map(lambda *xs: jnp.stack(xs), *moved)
            out = compiled(
                state,
                x_train.astype(jnp.float64),
                train["label"],
                x_val.astype(jnp.float64),
                val["label"],
                points,
                jnp.float64(xi),
            )
            return jax.device_get(out)

    return run


@pytest.fixture(scope="module")
def at_momentum(tiny, oracle):
    """The oracle after one real step (non-zero momentum buffer), along random directions."""
    rng = np.random.default_rng(0)
    directions = []
    for _ in range(DIRECTIONS):
        d = jax.tree.map(lambda a: rng.standard_normal(np.shape(a)), tiny.state1.arch)
        norm = np.linalg.norm(flat(d))
        directions.append(jax.tree.map(lambda v, n=norm: v / n, d))
    exact, fd, first, grad_norm, values = oracle(
        tiny.state1, tiny.batch(2), tiny.batch(3), directions=directions
    )
    return SimpleNamespace(
        exact=flat(exact),
        fd=flat(fd),
        first=flat(first),
        grad_norm=float(grad_norm),
        values=values,
        directions=[flat(d) for d in directions],
    )


def test_exact_and_finite_difference_hypergradients_agree(tiny, at_momentum):
    r = at_momentum
    momentum_buffer = flat(optax.tree.get(tiny.state1.weight_opt, "trace"))
    assert np.abs(momentum_buffer).max() > 0
    assert r.grad_norm > GRAD_CLIP  # the virtual step clips: its Jacobian is not -ξ·I
    second_order = np.linalg.norm(r.exact - r.first)
    assert second_order > 0.2 * np.linalg.norm(r.exact)
    assert np.linalg.norm(r.fd - r.exact) < FD_SHARE * second_order


def test_hypergradients_match_differences_of_the_unrolled_objective(at_momentum):
    r = at_momentum
    scale = np.linalg.norm(r.exact)
    fd_tolerance = FD_SHARE * np.linalg.norm(r.exact - r.first)
    first_misses = 0
    for k, d in enumerate(r.directions):
        f0, fp, fm = r.values[0], r.values[1 + 2 * k], r.values[2 + 2 * k]
        # ReLU and max-pool kinks lie close to almost any point of a tiny net: at a kink
        # the derivative must equal the difference from one side.
        diffs = ((fp - fm) / (2 * H), (fp - f0) / H, (f0 - fm) / H)
        # float64 differences at step H: rounding eps64 |f| / H ~ 2e-10 |f| (within
        # 1e-7 |grad|), truncation H |f''| for the one-sided ones (within 1e-4 |fd|).
        assert any(abs(r.exact @ d - fd) <= 1e-4 * abs(fd) + 1e-7 * scale for fd in diffs), (
            k,
            r.exact @ d,
            diffs,
        )
        assert any(abs(r.fd @ d - fd) <= fd_tolerance for fd in diffs), (k, r.fd @ d, diffs)
        first_misses += all(abs(r.first @ d - fd) > fd_tolerance for fd in diffs)
    assert first_misses > 0  # the differences tell first from second order


def test_second_order_step_is_an_adam_step_on_the_unrolled_gradient(tiny, oracle):
    state, new = tiny.state0, tiny.state1
    assert all(np.isfinite(float(v)) for v in tiny.metrics.values())
    assert int(new.step) == 1
    # Changed: an SGD step (lr 0.025) moves them far past allclose's 1e-5 |w| + 1e-8.
    changed = [not np.allclose(a, b) for a, b in zip(flat(state.params), flat(new.params))]
    assert np.mean(changed) > 0.9
    # the step's alpha update: Adam (+ L2) on the exact hypergradient with ξ = the lr,
    # the virtual step on the train batch and the unrolled loss on the val batch
    rngs = jax.random.split(jax.random.fold_in(state.rng, state.step))
    lr = float(tiny.setup.learning_rate(state.step))
    grad = oracle(state, tiny.batch(0), tiny.batch(1), rngs=tuple(rngs), xi=lr)[0]
    grad = jax.tree.map(lambda g, a: jnp.asarray(g, a.dtype), grad, state.arch)
    arch_opt = tiny.setup.arch_optimizer
    updates, _ = arch_opt.update(grad, arch_opt.init(state.arch), state.arch)
    want = alphas_of(optax.apply_updates(state.arch, updates))
    got, before = alphas_of(new.arch), alphas_of(state.arch)
    # Adam's first step is lr g / (|g| + 1e-8): the float32 hypergradient's rounding only
    # reaches it through the 1e-8, nothing beside gradients of 6e-3 and more (the normal
    # alphas, in no cell, have none but their decay). What is left: the step's roundings.
    why = "Adam's first step: a square root, a division, a product, a sum"
    for kind in ("normal", "reduce"):
        assert_close(got[kind], want[kind], terms=4, why=f"{kind}: {why}")
        assert not np.allclose(got[kind], before[kind])  # moved by about the lr, 3e-4


def test_virtual_step_is_the_reference_sgd_step(tiny):
    setup, state, w = tiny.setup, tiny.state1, tiny.config.optim.weights
    buf = optax.tree.get(state.weight_opt, "trace")
    lr, xi = float(setup.learning_rate(state.step)), 0.3
    reference = partial(
        reference_virtual_step,
        clip=w.grad_clip,
        weight_decay=w.weight_decay,
        momentum=w.momentum,
    )

    @jax.jit
    def both(grads):
        got = [
            virtual_weight_step(setup, state, grads),
            virtual_weight_step(setup, state, grads, xi),
        ]
        want = [reference(state.params, grads, buf, lr), reference(state.params, grads, buf, xi)]
        return got, want

    rng = np.random.default_rng(1)
    n = flat(buf).size
    # The clip's norm sums a square per weight; then 4 terms per weight, w the largest.
    why = f"virtual step: a norm of {n} weights' gradients, then w - xi (g + wd w + m buf)"
    for size in (0.1 * GRAD_CLIP, 10 * GRAD_CLIP):  # clip inactive, then active
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), buf)
        got, want = both(optax.tree.scale(size / optax.tree.norm(grads), grads))
        for g, r in zip(got, want):
            assert_close(flat(g), flat(r), terms=n + 4, why=why)


def test_second_order_knobs_are_validated_and_shipped():
    options = strategy_options(load_config("darts2_digits").search)
    assert (options.order, options.hessian, options.unrolled_lr) == (2, "exact", None)
    for section, key in (
        ({"hessian": "finite_difference"}, "search.darts.hessian"),
        ({"unrolled_lr": 0.1}, "search.darts.unrolled_lr"),
        ({"order": 2, "hessian": "newton"}, "search.darts.hessian"),
        ({"order": 2, "unrolled_lr": 0}, "search.darts.unrolled_lr"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config({"search": {"darts": section}})
    fd = validate_config({"search": {"darts": {"order": 2, "hessian": "finite_difference"}}})
    assert strategy_options(fd.search).hessian == "finite_difference"
