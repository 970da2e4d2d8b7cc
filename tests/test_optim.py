"""The weight optimizer follows PyTorch's SGD: weight decay in the gradient, then
(Nesterov) momentum."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nasax.core.config import WeightOptimConfig
from nasax.loop.optim import arch_optimizer, weight_optimizer
from tests.tolerance import assert_close


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_pytorchs_update_rule(nesterov):
    cfg = WeightOptimConfig(
        lr=0.1,
        momentum=0.9,
        weight_decay=0.01,
        grad_clip=None,
        schedule="constant",
        nesterov=nesterov,
    )
    opt = weight_optimizer(cfg, epochs=1, steps_per_epoch=10)
    p = jnp.array([1.0, -2.0])
    state = opt.init(p)
    ref, buf = np.array([1.0, -2.0]), np.zeros(2)
    for t in range(4):
        g = np.array([0.5, 0.25]) * (t + 1)
        updates, state = opt.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, updates)
        d = g + 0.01 * ref  # torch.optim.SGD: d_p = g + wd * p; buf = m * buf + d_p
        buf = 0.9 * buf + d
        ref = ref - 0.1 * (d + 0.9 * buf if nesterov else buf)
        # float32 against float64: 8 roundings a step, carried over the steps, of values
        # that reach p no larger than |p| <= 2 (the buffers, up to 5, enter times lr 0.1).
        # The first component ends near 0.06: its error is relative to 2, not to it.
        assert_close(p, ref, terms=8 * (t + 1), magnitude=2.0, why=f"SGD step {t + 1}")


def test_arch_lr_scales_up_to_the_budget_it_was_tuned_for_and_never_down():
    from nasax.core.config import ArchOptimConfig
    from nasax.loop.optim import arch_lr

    tuned = ArchOptimConfig(lr=3e-4, budget_steps=19_500)
    assert arch_lr(tuned, 2_340) == pytest.approx(3e-4 * 19_500 / 2_340)
    assert arch_lr(tuned, 19_500) == pytest.approx(3e-4)
    assert arch_lr(tuned, 50_000) == pytest.approx(3e-4)
    assert arch_lr(ArchOptimConfig(lr=3e-4), 10) == pytest.approx(3e-4)
    # The optimizer takes that rate: Adam's first step moves each alpha by about lr.
    opt = arch_optimizer(ArchOptimConfig(lr=1e-3, budget_steps=1000, weight_decay=0.0), 100)
    params = {"a": jnp.zeros(3)}
    updates, _ = opt.update({"a": jnp.array([1.0, -2.0, 0.5])}, opt.init(params), params)
    # Adam's first step is lr g / (|g| + 1e-8), lr up to its rounding; but its bias
    # correction divides by 1 - b2 = 1e-3, a difference of numbers near 1 (b2 = 0.999 in
    # float32 is 1.3e-8 off): their rounding, relative to 1, is relative to 1e-3 after
    # it (the step comes out 6.4e-6 short).
    why = "Adam's first step: lr, b1 and b2 rounded, b2's through 1 / (1 - b2)"
    assert_close(np.abs(updates["a"]), 1e-2, terms=3, magnitude=1e-2 / (1 - 0.999), why=why)
