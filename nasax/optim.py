"""Optimizers as in the DARTS reference: SGD on weights (search, retrain), Adam on alphas."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import optax

from nasax.config import ArchOptimConfig, WeightOptimConfig


def epoch_cosine(
    lr: float, lr_min: float, epochs: int, steps_per_epoch: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Cosine annealing stepped once per epoch (PyTorch's CosineAnnealingLR, T_max=epochs)."""

    def schedule(count: jnp.ndarray) -> jnp.ndarray:
        epoch = jnp.minimum(count // steps_per_epoch, epochs)
        return lr_min + 0.5 * (lr - lr_min) * (1 + jnp.cos(math.pi * epoch / epochs))

    return schedule


def weight_schedule(
    cfg: WeightOptimConfig, epochs: int, steps_per_epoch: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The weight learning rate as a function of the step count."""
    if cfg.schedule == "constant":
        return lambda count: jnp.asarray(cfg.lr, jnp.float32)
    return epoch_cosine(cfg.lr, cfg.lr_min, epochs, steps_per_epoch)


def weight_optimizer(
    cfg: WeightOptimConfig, epochs: int, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Gradient clipping, L2 weight decay, SGD with momentum (PyTorch's order of operations)."""
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    parts += [
        optax.add_decayed_weights(cfg.weight_decay),
        optax.sgd(
            weight_schedule(cfg, epochs, steps_per_epoch),
            momentum=cfg.momentum or None,
            nesterov=cfg.nesterov,
        ),
    ]
    return optax.chain(*parts)


def arch_optimizer(cfg: ArchOptimConfig) -> optax.GradientTransformation:
    """Adam with L2 weight decay added to the gradient, as torch.optim.Adam does."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.adam(cfg.lr, b1=cfg.betas[0], b2=cfg.betas[1]),
    )
