"""The run loop fits the epochs a state's schedules span to a time limit: it times this
process's epochs, ends the run on a complete epoch before the deadline, and the span it
chose travels in the state (so a checkpoint resumes with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nasax.core.config import RunConfig
from nasax.core.rundir import MetricsLog
from nasax.loop import runloop
from nasax.loop.progress import LoopProgress
from nasax.loop.runloop import LoopIO, fit_epochs, run_epochs
from tests.tolerance import assert_close


def test_fit_epochs_counts_whole_epochs_that_end_before_the_deadline():
    assert fit_epochs(2, 22.0, 4.0, 20) == 7  # 5 more whole epochs of 4 s
    assert fit_epochs(2, 3.9, 4.0, 20) == 2  # not one more
    assert fit_epochs(2, -1.0, 4.0, 20) == 2  # already past
    assert fit_epochs(2, 1e9, 4.0, 20) == 20  # never past the configured epochs


class _Clock:
    """A fake `time.perf_counter`: each step takes one second, nothing else takes time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Task:
    """Four steps per epoch, 20 configured epochs, and a state that is only its span."""

    kind, shown, batch_size, steps_per_epoch, epochs = "search", (), 1, 4, 20
    after_epoch = None

    def epoch_batches(self, epoch: int, first: int):
        while True:
            yield ()

    def horizon(self, state: dict[str, Any]) -> int:
        return int(state["epochs"])

    def with_horizon(self, state: dict[str, Any], epochs: int) -> dict[str, Any]:
        return {**state, "epochs": jnp.asarray(epochs)}


def _run(
    tmp_path: Path, monkeypatch, deadline: float | None, start=(0, 0), state=None, slow_from=None
):
    clock = _Clock()
    monkeypatch.setattr(runloop.time, "perf_counter", clock)
    saved: list[tuple[int, dict]] = []

    def step(state, *batches):
        clock.now += 2.0 if slow_from is not None and clock.now >= slow_from else 1.0
        return state, {"loss": jnp.asarray(1.0)}

    tmp_path.mkdir(exist_ok=True)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    io = LoopIO(
        log,
        LoopProgress(80, 20, enabled=False, label="t"),
        lambda s, m: saved.append((int(s["epochs"]), m)),
    )
    result = run_epochs(
        _Task(),
        state or {"epochs": jnp.asarray(20)},
        step,
        io,
        run=RunConfig(log_every=4, progress=False),
        start=start,
        pending=[],
        end_epoch=lambda state, epoch, step, epochs: {},
        resume_hint="",
        deadline=deadline,
    )
    epochs = [r for r in log.records if r["kind"] == "epoch"]
    return result, epochs, saved


def test_a_time_limit_ends_the_run_on_the_last_complete_epoch_that_fits(tmp_path, monkeypatch):
    # Epochs take 4 s; the deadline is at 30 s. The first epoch is not timed (its first
    # calls compile); after the second (8 s), 5 more fit in the 22 s left: 7 in all.
    result, epochs, saved = _run(tmp_path, monkeypatch, deadline=30.0)
    assert [r.get("epochs_planned") for r in epochs] == [None, 7, 7, 7, 7, 7, 7]
    assert result.step == 28 and result.stopped_early and result.planned_epochs == 7
    assert epochs[-1]["stopped"] == "time_limit"
    assert [r for r in epochs if "stopped" in r] == [epochs[-1]]
    # Each epoch-end checkpoint holds the span in force: 20 after the first epoch, then 7.
    assert [span for span, meta in saved] == [20, 7, 7, 7, 7, 7, 7]
    assert int(result.state["epochs"]) == 7


def test_without_a_time_limit_the_span_runs_and_a_resumed_plan_is_kept(tmp_path, monkeypatch):
    result, epochs, _ = _run(tmp_path, monkeypatch, deadline=None)
    assert len(epochs) == 20 and not result.stopped_early and result.planned_epochs is None
    # A checkpoint of a planned run (span 7, 3 epochs done) resumes to epoch 7, no further.
    resumed, epochs, _ = _run(
        tmp_path / "r", monkeypatch, deadline=None, start=(3, 0), state={"epochs": 7}
    )
    assert [r["epoch"] for r in epochs] == [4, 5, 6, 7] and resumed.step == 28


@pytest.mark.parametrize("deadline, steps, planned", [(6.0, 6, None), (9.0, 8, 2)])
def test_a_deadline_near_the_start_stops_at_the_first_step_or_epoch_past_it(
    tmp_path, monkeypatch, deadline, steps, planned
):
    """Before a second epoch ends there is nothing to time: the loop stops at the first step
    past the deadline. After it, an epoch that would not end in time is not started."""
    result, epochs, _ = _run(tmp_path, monkeypatch, deadline=deadline)
    assert result.stopped_early and result.planned_epochs == planned
    assert epochs[-1]["stopped"] == "time_limit" and result.step == steps


def test_epochs_that_slow_down_shorten_the_span_until_it_fits(tmp_path, monkeypatch):
    """Steps take 1 s, then 2 s from t=12 (as after PC-DARTS' warm-up): the span planned
    from the fast epochs (15) shrinks as the last three epochs' mean grows, and the run
    ends on epoch 9 at the deadline."""
    result, epochs, _ = _run(tmp_path, monkeypatch, deadline=60.0, slow_from=12.0)
    assert [r.get("epochs_planned") for r in epochs] == [None, 15, 15, 11, 9, 9, 9, 9, 9]
    assert result.step == 36 and result.planned_epochs == 9


def test_a_checkpoint_from_before_the_span_restores_with_the_configured_epochs():
    """Older search checkpoints lack `epochs`; their runs' schedules spanned search.epochs,
    which is what the fresh state holds. Any other missing entry is still an error."""
    from nasax.core.checkpoint import flatten_state, unflatten_state
    from nasax.search.strategy import SupernetState

    saved = SupernetState(
        jnp.asarray(7), jnp.zeros(2), {"w": jnp.ones(3)}, {}, {}, (), (), jnp.asarray(9)
    )
    fresh = saved._replace(step=jnp.asarray(0), params={"w": jnp.zeros(3)}, epochs=jnp.asarray(50))
    old = {k: v for k, v in flatten_state(saved).items() if k != "epochs"}
    restored = unflatten_state(old, fresh)
    assert int(restored.step) == 7 and int(restored.epochs) == 50
    assert np.array_equal(restored.params["w"], np.ones(3))
    assert int(unflatten_state(flatten_state(saved), fresh).epochs) == 9
    with pytest.raises(KeyError, match="params/w"):
        unflatten_state({k: v for k, v in old.items() if k != "params/w"}, fresh)


def test_a_budget_scaled_arch_lr_follows_the_span():
    """With `budget_steps` the arch lr is budget / steps times the configured one, so a
    span cut from 50 to 25 epochs doubles it (until the steps reach the budget); the
    update of `arch_update` is the update at that lr."""
    from nasax.core.config import ArchOptimConfig
    from nasax.loop.optim import arch_lr_ratio, arch_optimizer
    from nasax.search.strategy import SearchSetup, SupernetState, arch_update

    cfg = ArchOptimConfig(lr=3e-4, budget_steps=19500)
    ratio = arch_lr_ratio(cfg, steps_per_epoch=78, epochs=50)
    assert float(ratio(jnp.asarray(50))) == 1.0
    why = "float32 (lr budget / steps) / base: 5 products and divisions"
    assert_close(ratio(jnp.asarray(25)), 2.0, terms=5, magnitude=2.0, why=why)
    assert_close(ratio(jnp.asarray(35)), 50 / 35, terms=5, magnitude=50 / 35, why=why)
    # Past the budget the lr is the configured one: 300 epochs of 78 steps > 19500.
    want = 3e-4 / (3e-4 * 19500 / 3900)
    assert_close(ratio(jnp.asarray(300)), want, terms=5, magnitude=want, why=why)
    assert arch_lr_ratio(ArchOptimConfig(lr=3e-4), 78, 50) is None

    opt = arch_optimizer(cfg, 50 * 78)
    setup = SearchSetup(*[None] * 3, opt, None, None, epochs=50, arch_lr_ratio=ratio)
    arch = {"a": jnp.zeros(4)}
    grads = {"a": jnp.array([1.0, -2.0, 0.5, 0.0])}
    moved = {}
    for span in (50, 25):
        state = SupernetState(0, None, {}, {}, arch, None, opt.init(arch), jnp.asarray(span))
        new, _ = arch_update(setup, state, grads)
        moved[span] = np.asarray(new["a"])
    # The same Adam step, times the float32 ratio (its 5 roundings) and one more product.
    want = 2 * moved[50]
    why = "an arch step at twice the lr"
    assert_close(moved[25], want, terms=5 + 1, magnitude=abs(want), why=why)
    # Adam's first step moves by the lr, up to its roundings; but its bias correction
    # divides by 1 - b2 = 1e-3, a difference of numbers near 1: their rounding, relative
    # to 1, is relative to 1e-3 after it (see test_optim).
    lr = 3e-4 * 19500 / 3900
    why = "Adam's first step: lr, b1 and b2 rounded, b2's through 1 / (1 - b2)"
    assert_close(np.abs(moved[50]).max(), lr, terms=3, magnitude=lr / (1 - 0.999), why=why)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_weights_cosine_lr_follows_the_span(nesterov):
    """A span cut from 10 to 4 epochs anneals the weights' lr over those 4: the steps of
    `weight_update` equal those of an SGD built for 4 epochs, momentum, weight decay and
    clipping included; at the configured span nothing changes."""
    from nasax.core.config import WeightOptimConfig
    from nasax.loop.optim import epoch_cosine, weight_lr_ratio, weight_optimizer, weight_schedule
    from nasax.search.strategy import SearchSetup, SupernetState, weight_update

    cfg = WeightOptimConfig(
        lr=0.1, lr_min=0.01, weight_decay=0.01, grad_clip=1.0, nesterov=nesterov
    )
    epochs, spe = 10, 2
    ratio = weight_lr_ratio(cfg, epochs, spe)
    configured = weight_schedule(cfg, epochs, spe)
    for count in range(0, 2 * epochs * spe):
        assert float(ratio(jnp.asarray(count), jnp.asarray(epochs))) == 1.0
        if count < 4 * spe:
            want = float(epoch_cosine(0.1, 0.01, 4, spe)(count))
            got = float(configured(count) * ratio(jnp.asarray(count), jnp.asarray(4)))
            # Two float32 cosine schedules (5 roundings each) of terms up to lr = 0.1,
            # one divided by the other.
            assert_close(got, want, terms=2 * 5 + 1, magnitude=0.1, why=f"lr at step {count}")
    assert weight_lr_ratio(WeightOptimConfig(schedule="constant"), epochs, spe) is None

    opt = weight_optimizer(cfg, epochs, spe)
    setup = SearchSetup(None, None, opt, None, configured, None, epochs=epochs,
                        steps_per_epoch=spe, weight_lr_ratio=ratio)  # fmt: skip
    reference = weight_optimizer(cfg, 4, spe)
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    ref_params, ref_opt = params, reference.init(params)
    state = SupernetState(0, None, params, {}, {}, opt.init(params), None, jnp.asarray(4))
    sizes = np.abs(np.asarray(params["w"], np.float64))
    for step in range(4 * spe):
        grads = {"w": jnp.array([0.3, -1.5, 2.0]) * (step + 1)}
        new, weight_opt = weight_update(setup, state, grads)
        state = state._replace(step=step + 1, params=new, weight_opt=weight_opt)
        updates, ref_opt = reference.update(grads, ref_opt, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        # w sums its start and the steps; a step has its own ~20 roundings (the clip's
        # norm of 3, decay, momentum, Nesterov, the two lrs and their ratio).
        sizes = sizes + np.abs(np.asarray(updates["w"], np.float64))
        why = f"SGD step {step + 1} at the span's lr"
        assert_close(new["w"], ref_params["w"], terms=20, magnitude=sizes, why=why)
    why = "two float32 cosine schedules of terms up to 0.1, one divided by the other"
    want = epoch_cosine(0.1, 0.01, 4, spe)(7)
    assert_close(
        setup.weight_lr(state._replace(step=7)), want, terms=2 * 5 + 1, magnitude=0.1, why=why
    )


def test_the_retrainings_lr_and_drop_path_follow_the_span_and_are_unchanged_without_one():
    """A retraining's cosine lr and drop-path ramp read the span from the state: cut from
    10 epochs to 4 they anneal over those 4 (the closed forms); at 10, in a compiled step,
    they are those of the configured schedules to the bit."""
    import jax

    from nasax.core.config import WeightOptimConfig
    from nasax.loop.optim import spanned_weight_schedule, weight_schedule
    from nasax.train.regularizers import drop_path_rate

    cfg = WeightOptimConfig(lr=0.025, lr_min=0.001)
    epochs, spe = 10, 3
    spanned = jax.jit(spanned_weight_schedule(cfg, epochs, spe))
    configured = jax.jit(weight_schedule(cfg, epochs, spe))
    ramp = jax.jit(lambda step, span: drop_path_rate(step, spe, epochs, 0.3, span))
    fixed_ramp = jax.jit(lambda step: drop_path_rate(step, spe, epochs, 0.3))
    for step in range(epochs * spe):
        count = jnp.asarray(step, jnp.int32)
        assert float(spanned(count, jnp.int32(epochs))) == float(configured(count))
        assert float(ramp(count, jnp.int32(epochs))) == float(fixed_ramp(count))
        epoch = step // spe
        if epoch < 4:
            want = 0.001 + 0.5 * (0.025 - 0.001) * (1 + np.cos(np.pi * epoch / 4))
            # A float32 cosine schedule: the angle's product and division, the cosine,
            # then lr_min + half the range times (1 + cos): 5 roundings of terms up to lr.
            got = spanned(count, jnp.int32(4))
            assert_close(got, want, terms=5, magnitude=0.025, why=f"lr at step {step}")
            why = f"drop path at step {step}: 0.3 * epoch * (10 / 4) / 10 in float32"
            assert_close(ramp(count, jnp.int32(4)), 0.3 * epoch / 4, terms=4, why=why)
    constant = spanned_weight_schedule(WeightOptimConfig(lr=0.1, schedule="constant"), 10, spe)
    assert float(constant(jnp.asarray(7), jnp.int32(4))) == np.float32(0.1)


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_spanned_weight_optimizer_steps_as_sgd_built_for_the_span(nesterov):
    """`spanned_weight_optimizer` told a span of 4 epochs steps as `weight_optimizer` built
    for 4 (momentum, weight decay, clipping included), and told the configured 10 as the
    one built for 10, to the bit; its state is `weight_optimizer`'s, so checkpoints of
    either restore into the other."""
    import jax

    from nasax.core.config import WeightOptimConfig
    from nasax.loop.optim import spanned_weight_optimizer, weight_optimizer

    cfg = WeightOptimConfig(
        lr=0.1, lr_min=0.01, weight_decay=0.01, grad_clip=1.0, nesterov=nesterov
    )
    epochs, spe = 10, 2
    spanned = spanned_weight_optimizer(cfg, epochs, spe)
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    assert jax.tree.structure(spanned.init(params)) == jax.tree.structure(
        weight_optimizer(cfg, epochs, spe).init(params)
    )

    @jax.jit
    def spanned_step(params, opt, grads, span):
        updates, opt = spanned.update(grads, opt, params, span=span)
        return optax.apply_updates(params, updates), opt

    for span in (epochs, 4):
        reference = weight_optimizer(cfg, span, spe)

        @jax.jit
        def reference_step(params, opt, grads, reference=reference):
            updates, opt = reference.update(grads, opt, params)
            return optax.apply_updates(params, updates), opt

        mine, ref = (params, spanned.init(params)), (params, reference.init(params))
        sizes = np.abs(np.asarray(params["w"], np.float64))
        for step in range(span * spe):
            grads = {"w": jnp.array([0.3, -1.5, 2.0]) * (step + 1)}
            mine = spanned_step(*mine, grads, jnp.int32(span))
            before, ref = ref[0]["w"], reference_step(*ref, grads)
            if span == epochs:
                np.testing.assert_array_equal(mine[0]["w"], ref[0]["w"])
                continue
            # w sums its start and the steps; a step has its own ~20 roundings (the clip's
            # norm of 3, decay, momentum, Nesterov, the cosine lr).
            sizes = sizes + np.abs(np.asarray(ref[0]["w"] - before, np.float64))
            why = f"SGD step {step + 1} at the lr of a span of {span}"
            assert_close(mine[0]["w"], ref[0]["w"], terms=20, magnitude=sizes, why=why)
