"""First-order DARTS: exact gradients, one jitted program per step, both groups updated."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nasax.loop.data import Dataset
from nasax.search.options import strategy_options, validate_config
from nasax.search.strategy import STRATEGIES, FunctionalSupernet, alphas_of, cross_entropy
from nasax.search.task import build_setup
from nasax.supernet.spaces import DARTS_OPS, SPACES, SearchSpace
from tests.tolerance import assert_close


def tiny_dataset(n: int = 32, size: int = 6) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.int32)
    return Dataset(
        "tiny", x, y, x[:8], y[:8], 3, np.array([128.0], np.float32), np.array([64.0], np.float32)
    )


# Every DARTS op on both cell kinds, but one intermediate node (2 edges) per cell: the
# step compiles in a fraction of the full 14-edge cell's time.
ONE_NODE = SPACES.register("darts_one_node", SearchSpace("darts_one_node", DARTS_OPS, n_nodes=1))


@pytest.fixture(scope="module")
def darts():
    config = validate_config(
        {
            "model": {"space": ONE_NODE.name, "channels": 2, "layers": 3},
            "search": {"batch_size": 8},
        }
    )
    data = tiny_dataset()
    setup = build_setup(config, data, steps_per_epoch=4)
    strategy = STRATEGIES.get("darts")(setup, strategy_options(config.search))
    batch = lambda i: {
        "image": data.x_train[8 * i : 8 * i + 8],
        "label": data.y_train[8 * i : 8 * i + 8],
    }
    return setup, strategy, batch


def test_search_loss_gradients_match_finite_differences(darts):
    setup, strategy, batch = darts
    state = strategy.init(jax.random.PRNGKey(0))
    net = FunctionalSupernet.create(setup)
    b = batch(0)
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        params, stats, arch = to64(state.params), to64(state.batch_stats), to64(state.arch)
        x = setup.preprocess(b, state.rng, False).astype(jnp.float64)

        def loss(params, arch):
            logits, _ = net.apply(params, stats, arch, x, train=True)
            return cross_entropy(logits, b["label"])[0]

        g_params, g_arch = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, arch)
        f = jax.jit(loss)
        rng = np.random.default_rng(0)
        # A tiny net has ReLU and max-pool kinks close to almost any point, so the
        # gradient is compared with the one-sided differences too: at a kink it must
        # equal the derivative from one side.
        eps = 1e-7
        for tree, grads, which in ((arch, g_arch, 1), (params, g_params, 0)):
            leaves, treedef = jax.tree.flatten(tree)
            grad_leaves = jax.tree.leaves(grads)
            picks = rng.choice(len(leaves), size=min(6, len(leaves)), replace=False)
            for li in picks:
                flat = np.asarray(leaves[li]).ravel()
                k = int(rng.integers(flat.size))
                values = {}
                for step in (-eps, 0.0, eps):
                    new = flat.copy()
                    new[k] += step
                    moved = list(leaves)
                    moved[li] = jnp.asarray(new.reshape(leaves[li].shape))
                    t = jax.tree.unflatten(treedef, moved)
                    values[step] = float(f(t, arch) if which == 0 else f(params, t))
                forward = (values[eps] - values[0.0]) / eps
                backward = (values[0.0] - values[-eps]) / eps
                central = (values[eps] - values[-eps]) / (2 * eps)
                analytic = float(np.asarray(grad_leaves[li]).ravel()[k])
                # float64 differences at step 1e-7: rounding eps64 |f| / 1e-7 ~ 5e-9
                # (within abs 1e-7), truncation 1e-7 |f''| for the one-sided ones and
                # 1e-14 |f'''| for the central one (within 1e-4 of the derivative).
                assert any(
                    analytic == pytest.approx(fd, rel=1e-4, abs=1e-7)
                    for fd in (central, forward, backward)
                ), (which, li, k, analytic, forward, backward)
        assert float(jnp.abs(g_arch["alpha_normal"][...]).sum()) > 0
        assert float(jnp.abs(g_arch["alpha_reduce"][...]).sum()) > 0


def test_step_is_one_program_without_host_transfers(darts):
    _, strategy, batch = darts
    state = strategy.init(jax.random.PRNGKey(1))
    step = jax.jit(strategy.step, donate_argnums=(0,))
    hlo = step.lower(state, batch(0), batch(1)).as_text()
    assert hlo.count("func.func public @main") == 1
    before = {k: np.asarray(v) for k, v in alphas_of(state.arch).items()}
    before_params = [np.asarray(p) for p in jax.tree.leaves(state.params)]
    train, val = jax.device_put(batch(0)), jax.device_put(batch(1))
    state = jax.device_put(state)
    step(state, train, val)  # compile outside the guard
    state = strategy.init(jax.random.PRNGKey(1))
    state = jax.device_put(state)
    with jax.transfer_guard("disallow"):
        state, metrics = step(state, train, val)
        state, metrics = step(state, val, train)
    assert int(state.step) == 2
    after = {k: np.asarray(v) for k, v in alphas_of(state.arch).items()}
    # Moved: Adam steps of about the lr (3e-4) and SGD steps (lr 0.025), far past
    # allclose's 1e-5 |x| + 1e-8.
    assert all(not np.allclose(before[k], after[k]) for k in before)
    changed = [not np.allclose(a, b) for a, b in zip(before_params, jax.tree.leaves(state.params))]
    assert sum(changed) > 0.9 * len(changed)
    assert set(metrics) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr"}


def test_alpha_step_is_an_adam_step_on_the_validation_gradient(darts):
    setup, strategy, batch = darts
    state = strategy.init(jax.random.PRNGKey(2))
    net = FunctionalSupernet.create(setup)
    val = batch(1)
    # recompute what the step does to the alphas: grad of the val loss, then Adam + L2
    val_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))[1]
    x_val = setup.preprocess(val, val_rng, True)

    def arch_loss(arch):
        logits, _ = net.apply(state.params, state.batch_stats, arch, x_val, train=True)
        return cross_entropy(logits, val["label"])[0]

    g = jax.grad(arch_loss)(state.arch)
    updates, _ = setup.arch_optimizer.update(g, setup.arch_optimizer.init(state.arch), state.arch)
    want = jax.tree.map(lambda a, u: a + u, state.arch, updates)
    step = jax.jit(strategy.step, donate_argnums=(0,))  # the same program as the loop's
    new_state, _ = step(jax.tree.map(jnp.copy, state), batch(0), val)
    # Adam's first step is lr g / (|g| + 1e-8): the gradients' rounding (two programs)
    # only reaches it through the 1e-8, nothing beside gradients of 3e-4 and more. What is
    # left: the step's own roundings.
    why = "Adam's first step: a square root, a division, a product, a sum"
    for k in ("alpha_normal", "alpha_reduce"):
        assert_close(new_state.arch[k][...], want[k][...], terms=4, why=f"{k}: {why}")
    # Adam's first step moves every coordinate by about the learning rate (within
    # 1e-8 / |g| and its bias correction's rounding; rel 0.1 asks for "about" only).
    delta = np.abs(
        np.asarray(new_state.arch["alpha_normal"][...] - state.arch["alpha_normal"][...])
    )
    assert np.median(delta) == pytest.approx(3e-4, rel=0.1)


def test_non_finite_metrics_stop_the_run_naming_the_step():
    from nasax.core.errors import NonFiniteError
    from nasax.loop.runloop import flush_metrics

    pending = [{"train_loss": jnp.asarray(0.5)}, {"train_loss": jnp.asarray(jnp.nan)}]
    with pytest.raises(NonFiniteError, match=r"train_loss became nan at step 10 \(epoch 3\)"):
        flush_metrics(pending, epoch=2, step=10)
    record = flush_metrics(
        [{"train_loss": jnp.asarray(1.0)}, {"train_loss": jnp.asarray(3.0)}], 0, 2
    )
    assert record == {"kind": "search", "epoch": 1, "step": 2, "train_loss": 2.0}
