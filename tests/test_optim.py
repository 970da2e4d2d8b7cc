"""The weight optimizer follows PyTorch's SGD: weight decay in the gradient, then
(Nesterov) momentum."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nasax.config import WeightOptimConfig
from nasax.optim import weight_optimizer


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
        np.testing.assert_allclose(p, ref, rtol=1e-6)
