"""The anti-collapse strategies (β-DARTS, DARTS-, SDARTS-RS) checked against hand-computed
values, and each one's search step against first-order DARTS when its addition is off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.search.beta_darts import beta_decay
from nasax.search.darts_minus import AuxSkipEdge, with_aux_skip
from nasax.search.options import strategy_options, validate_config
from nasax.search.sdarts import perturb
from nasax.search.strategy import STRATEGIES, Clock, SearchSetup
from nasax.supernet.cells import MixedEdge
from nasax.supernet.network import Forward
from tests.tolerance import assert_close

SETUP = SearchSetup(*[None] * 6, epochs=5, steps_per_epoch=10)
ALPHA_GRAD_TERMS = 16 * (8 * 8 * 4 + 4 * 4 * 8 + 2 * 2 * 16)
"""The longest sum behind an alpha's gradient on the tiny NB201 supernet: its three cells
share the alphas, so an edge's op weight sums a product per activation of the batch (16)
in all three (8x8x4, 4x4x8 and 2x2x16)."""


def _strategy(name: str, options: dict, tiny_npz: str, epochs: int = 5):
    """A strategy over the tiny NB201 supernet (C4, one cell per stage), 2 steps per epoch."""
    from nasax.loop.data import load_dataset
    from nasax.search.task import build_setup

    config = validate_config(
        {
            "data": {"name": f"npz:{tiny_npz}"},
            "model": {"space": "nb201", "stem_multiplier": 1, "channels": 4, "layers": 1},
            "search": {"strategy": name, "epochs": epochs, "batch_size": 16, name: options},
        }
    )
    setup = build_setup(config, load_dataset(config.data.name), steps_per_epoch=2)
    return STRATEGIES.get(name)(setup, strategy_options(config.search)), setup


def test_beta_decay_is_the_mean_logsumexp_and_its_gradient_the_softmax():
    normal = jnp.array([[0.0, 0.0, 0.0, 0.0], [np.log(3.0), 0.0, 0.0, 0.0]])
    reduce = jnp.array([[np.log(5.0), np.log(2.0), 0.0, 0.0]])
    alphas = {"normal": normal, "reduce": reduce}
    # Rows: log(4), log(3 + 3) = log 6, log(5 + 2 + 1 + 1) = log 9; mean over the 3 rows.
    why = "float32 logsumexp: 4 exps, their sum and a log per row, a mean of 3 rows"
    expected = (np.log(4) + np.log(6) + np.log(9)) / 3
    assert_close(beta_decay(alphas), expected, terms=4 + 2 + 3, why=why)
    grad = jax.grad(beta_decay)(alphas)
    why = "float32 softmax / 3: 4 exps, their sum, a division, a division by 3"
    assert_close(grad["normal"][1], np.array([3, 1, 1, 1]) / 6 / 3, terms=4 + 3, why=why)
    assert_close(grad["reduce"][0], np.array([5, 2, 1, 1]) / 9 / 3, terms=4 + 3, why=why)


def test_epoch_progress_runs_from_0_in_the_first_epoch_to_1_in_the_last():
    from nasax.search.relaxed import epoch_progress

    progress = epoch_progress(SETUP)
    got = [float(progress(Clock(jnp.asarray(s), jnp.asarray(5)))) for s in (0, 9, 10, 25, 49, 99)]
    assert got == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]  # epochs over 4: exact in float32
    # A time limit that leaves 3 of the 5 epochs: the same course over 3 epochs.
    got = [float(progress(Clock(jnp.asarray(s), jnp.asarray(3)))) for s in (0, 10, 20, 29, 49)]
    assert got == [0.0, 0.5, 1.0, 1.0, 1.0]  # epochs over 2: exact


def test_aux_skip_adds_beta_times_the_input_outside_the_ops():
    edge = AuxSkipEdge(("none", "skip_connect", "avg_pool_3x3"), 4, 1, nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 4))
    weights = with_aux_skip({"e": jnp.array([[0.2, 0.3, 0.0]])}, jnp.asarray(0.5))["e"]
    np.testing.assert_array_equal(weights, np.float32([[0.2, 0.3, 0.0, 0.5]]))  # copies
    # skip_connect is the identity at stride 1: 0.3 x + 0.5 x. Each value sums 4 weighted
    # ops, two of them zero: its terms are its own size.
    x64 = np.asarray(x, np.float64)
    want = 0.8 * x64
    why = "4 weighted ops summed, per value"
    assert_close(edge(x, weights[0], False), want, terms=4, magnitude=abs(want), why=why)
    # Rows of the ops' length leave the auxiliary skip out.
    want = 0.3 * x64
    why = "3 weighted ops summed, per value"
    assert_close(edge(x, weights[0, :3], False), want, terms=3, magnitude=abs(want), why=why)
    reducing = AuxSkipEdge(("none", "skip_connect"), 4, 2, nnx.Rngs(0))
    y = reducing(x, jnp.array([0.0, 0.0, 1.0]), False)
    np.testing.assert_array_equal(y, reducing.aux(x, False))  # 0 op + 0 op + 1 aux: exact
    assert y.shape == (2, 3, 3, 4)
    plain = MixedEdge(("none", "skip_connect"), 4, 1, nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"3 op weights for an edge of 2 ops.*edge="):
        plain(x, jnp.array([0.0, 0.5, 0.5]), False)


def test_perturbed_weights_are_clipped_and_renormalised_per_edge():
    weights = jnp.array([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]])
    noise = jnp.array([[0.6, -0.4, 0.1], [-0.7, -0.5, -0.1]])
    got = perturb(weights, noise)
    # Row 1: clip(1.1, -0.1, 0.3) = (1, 0, 0.3), over 1.3. Row 2: all clipped to zero, so
    # the whole weight goes to the strongest op before the noise.
    expected = np.array([[1 / 1.3, 0.0, 0.3 / 1.3], [1.0, 0.0, 0.0]])
    why = "clipped rows of 3 non-negative values over their sum: per value"
    assert_close(got, expected, terms=3 + 1, magnitude=expected, why=why)


@pytest.mark.parametrize(
    "name, options",
    [
        ("beta_darts", {"scale": 0.0}),
        ("sdarts_rs", {"epsilon_min": 0.0, "epsilon_max": 0.0}),
        ("darts_minus", {"beta_max": 0.0}),  # NB201 edges are stride 1: no extra weights
    ],
)
def test_with_its_addition_off_the_step_is_first_order_darts(name, options, tiny_npz):
    strategy, _ = _strategy(name, options, tiny_npz)
    darts, _ = _strategy("darts", {}, tiny_npz)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    starts, updates = [], []
    for s in (strategy, darts):
        state = s.init(jax.random.PRNGKey(0))
        starts.append(jax.tree.leaves(state.arch))
        step = jax.jit(s.step)
        for _ in range(2):
            state, _ = step(state, batch, batch)
        moved = [np.asarray(a, np.float64) for a in jax.tree.leaves(state.arch)]
        updates.append([a - np.asarray(a0, np.float64) for a, a0 in zip(moved, starts[-1])])
    for a0, b0 in zip(*starts):
        np.testing.assert_array_equal(a0, b0)  # one initialiser, one key
    # The two steps are the same maths in other float32 orders (other XLA fusions, and
    # SDARTS renormalises softmax rows that sum to 1 within an ulp). Their rounding
    # reaches the alphas through their gradients' longest sums, whose error Adam passes on
    # in proportion to its update (the lr a step): the magnitude is the update's. Rounding
    # moves the updates by up to 1.3e-7 (SSE4.2 code; 1e-9 with AVX), under the bound of
    # 5e-7; a 1% error in the second step's gradient moves them by 1.5e-6, a dropped
    # edge's by 1e-3. (Adam ignores a gradient's constant factor: no test of this shape
    # sees one.)
    for a, b in zip(*updates):
        assert_close(a, b, terms=ALPHA_GRAD_TERMS, why=f"{name}: alpha updates of 2 steps")


def test_beta_decay_and_noise_change_the_step_when_on(tiny_npz):
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    finals = {}
    for name, options in (
        ("darts", {}),
        ("beta_darts", {"scale": 50.0}),
        ("sdarts_rs", {"epsilon_min": 0.03, "epsilon_max": 0.3}),
        ("darts_minus", {"beta_max": 1.0}),
    ):
        strategy, _ = _strategy(name, options, tiny_npz, epochs=2)  # 2 steps per epoch
        state = strategy.init(jax.random.PRNGKey(0))
        step = jax.jit(strategy.step)
        history = []
        for _ in range(3):
            state, metrics = step(state, batch, batch)
            history.append(metrics)
        finals[name] = (state, history)
    # The schedules: first epoch at the start value, the last epoch at the end value.
    for name, key, first, last in (
        ("beta_darts", "beta_decay_weight", 0.0, 50.0),
        ("darts_minus", "aux_skip_beta", 1.0, 0.0),
        ("sdarts_rs", "epsilon", 0.03, 0.3),
    ):
        got = [float(m[key]) for m in finals[name][1]]
        # float32: a product and a sum from the span's ends, within approx's rel 1e-6.
        assert got == pytest.approx([first, first, last]), name
    darts_alpha = jax.tree.leaves(finals["darts"][0].arch)[0]
    for name in ("beta_darts", "sdarts_rs", "darts_minus"):
        alpha = jax.tree.leaves(finals[name][0].arch)[0]
        assert alpha.shape == darts_alpha.shape == (6, 5)
        # Above the rounding between these programs (1.3e-7 at most, test above), below
        # the lr-sized (3e-4) moves the additions make.
        assert not np.allclose(alpha, darts_alpha, atol=1e-6), name


def test_a_single_path_is_evaluated_with_the_batchs_statistics(tiny_npz):
    """The supernet's test figure for one cell ignores the running BN statistics (shared by
    every path training sampled); the mixed supernet's uses them."""
    from nasax.search.strategy import FunctionalSupernet

    _, setup = _strategy("darts", {}, tiny_npz)
    net = FunctionalSupernet.create(setup)
    state = net.init(jax.random.PRNGKey(0))
    spoiled = state._replace(batch_stats=jax.tree.map(lambda v: v + 100.0, state.batch_stats))
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
        "mask": np.arange(16) < 16,
    }
    paths = {"normal": jnp.array([3, 1, 3, 2, 4, 3])}
    evaluate = jax.jit(net.evaluate)
    single = [evaluate(s, batch, Forward(paths=paths)) for s in (state, spoiled)]
    mixed = [evaluate(s, batch) for s in (state, spoiled)]
    # The same program on the same values when the running statistics are not read.
    assert float(single[0]["loss_sum"]) == float(single[1]["loss_sum"])
    assert abs(float(mixed[0]["loss_sum"]) - float(mixed[1]["loss_sum"])) > 1e-3


def test_schedules_and_the_warm_up_follow_the_epochs_the_state_spans(tiny_npz):
    """A time limit shortens the span the loop writes into the state: PC-DARTS' warm-up
    (2 of 4 epochs) then ends after 1 of 2, and β-DARTS' lambda reaches its end a
    configured epoch earlier."""
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    pcdarts, _ = _strategy("pcdarts", {"arch_warmup_epochs": 2, "partial_channels": 1}, tiny_npz, 4)
    step = jax.jit(pcdarts.step)
    fresh = pcdarts.init(jax.random.PRNGKey(0))
    assert int(fresh.epochs) == 4
    moved = {}
    for span in (4, 2):
        state = fresh._replace(epochs=jnp.asarray(span, jnp.int32))
        alphas = []
        for _ in range(3):  # steps 0-2; an epoch is 2 steps
            before = jax.tree.leaves(state.arch)[0]
            state, _ = step(state, batch, batch)
            # Moved: an Adam step of about the lr (3e-4), past allclose's 1e-5 |a| + 1e-8.
            alphas.append(not np.allclose(jax.tree.leaves(state.arch)[0], before))
        moved[span] = alphas
    assert moved == {4: [False, False, False], 2: [False, False, True]}
    # Unset, the warm-up is 30% of search.epochs (the paper's 15 of 50): 1 of 4 here.
    default, _ = _strategy("pcdarts", {"partial_channels": 1}, tiny_npz, 4)
    state, step = default.init(jax.random.PRNGKey(0)), jax.jit(default.step)
    alphas = []
    for _ in range(3):
        before = jax.tree.leaves(state.arch)[0]
        state, _ = step(state, batch, batch)
        alphas.append(not np.allclose(jax.tree.leaves(state.arch)[0], before))  # as above
    assert alphas == [False, False, True]

    beta, _ = _strategy("beta_darts", {"scale": 50.0}, tiny_npz, 4)
    step = jax.jit(beta.step)
    state = beta.init(jax.random.PRNGKey(0))._replace(epochs=jnp.asarray(3, jnp.int32))
    weights = []
    for _ in range(6):
        state, metrics = step(state, batch, batch)
        weights.append(float(metrics["beta_decay_weight"]))
    assert weights == [0.0, 0.0, 25.0, 25.0, 50.0, 50.0]  # 50 times 0, 1/2, 1: exact


def test_beta_darts_logs_the_cross_entropy_as_val_loss_and_its_regulariser_apart(tiny_npz):
    """`val_loss` is the validation batch's cross-entropy, as an independent pass of the
    supernet gives it; the regulariser is `beta_reg` (lambda times beta_decay) and
    `val_objective` their sum, the figure the alphas descend."""
    from nasax.search.strategy import FunctionalSupernet, alphas_of, softmax_weights

    strategy, setup = _strategy("beta_darts", {"scale": 50.0}, tiny_npz, epochs=2)
    net = FunctionalSupernet.create(setup)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (16, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    x = setup.preprocess(batch, jax.random.PRNGKey(0), True)  # digits: no augmentation

    @jax.jit
    def cross_entropy(state):
        forward = Forward(weights=softmax_weights(alphas_of(state.arch)))
        loss, _ = net.loss(state.params, state.batch_stats, state.arch, x, batch["label"], forward)
        return loss

    state, step = strategy.init(jax.random.PRNGKey(0)), jax.jit(strategy.step)
    for lam in (0.0, 0.0, 50.0, 50.0):  # 2 steps per epoch; lambda rises from 0 to 50
        want_loss = float(cross_entropy(state))
        want_reg = lam * float(beta_decay(alphas_of(state.arch)))
        state, metrics = step(state, batch, batch)
        got = {k: float(metrics[k]) for k in ("val_loss", "beta_reg", "val_objective")}
        why = "the validation cross-entropy in two programs: forward sums through 3 cells"
        assert_close(got["val_loss"], want_loss, terms=ALPHA_GRAD_TERMS, why=why)
        why = "lambda times a mean of 6 logsumexps of 5"
        assert_close(got["beta_reg"], want_reg, terms=5 + 2 + 6 + 1, why=why)
        why = "their float32 sum"
        assert_close(got["val_objective"], got["val_loss"] + got["beta_reg"], terms=2, why=why)
    # At lambda 50 the regulariser (50 log 5 for near-zero alphas) dwarfs the loss.
    assert got["beta_reg"] > 10 * got["val_loss"]
