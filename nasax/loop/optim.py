"""Optimizers as in the DARTS reference: SGD on weights (search, retrain), Adam on alphas."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from nasax.core.config import ArchOptimConfig, WeightOptimConfig


def epoch_cosine(
    lr: float, lr_min: float, epochs: int | jax.Array, steps_per_epoch: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Cosine annealing stepped once per epoch (PyTorch's CosineAnnealingLR, T_max=epochs;
    `epochs` may be a traced array: a time limit's span)."""

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


def weight_lr_ratio(
    cfg: WeightOptimConfig, epochs: int, steps_per_epoch: int
) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """ratio(count, span): the cosine lr at step `count` of a search of `span` epochs over
    the lr of `weight_schedule` (a search of `epochs`), so a time limit that shortens the
    span still anneals the lr to `lr_min` by its last epoch. SGD's update, with momentum
    or Nesterov, is proportional to its lr, so the update times the ratio is the update at
    the span's lr. None for a constant lr; exactly 1 at `epochs`."""
    if cfg.schedule == "constant":
        return None
    configured = epoch_cosine(cfg.lr, cfg.lr_min, epochs, steps_per_epoch)

    def ratio(count: jax.Array, span: jax.Array) -> jax.Array:
        lr = epoch_cosine(cfg.lr, cfg.lr_min, jnp.maximum(span, 1), steps_per_epoch)(count)
        base = configured(count)
        scaled = jnp.where(base > 0, lr / jnp.where(base > 0, base, 1.0), 0.0)
        return jnp.where(span == epochs, 1.0, scaled).astype(jnp.float32)

    return ratio


def _weight_chain(
    cfg: WeightOptimConfig, scale_by_lr: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
    """Gradient clipping, L2 weight decay, then `optax.sgd`'s structure (momentum or
    identity, then `scale_by_lr`): PyTorch's order of operations, one state layout for
    every lr a weight optimizer steps with."""
    momentum = cfg.momentum or None
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    parts += [
        optax.add_decayed_weights(cfg.weight_decay),
        optax.chain(
            optax.trace(momentum, cfg.nesterov) if momentum is not None else optax.identity(),
            scale_by_lr,
        ),
    ]
    return optax.chain(*parts)


def weight_optimizer(
    cfg: WeightOptimConfig, epochs: int, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Gradient clipping, L2 weight decay, SGD with momentum (PyTorch's order of operations)."""
    schedule = weight_schedule(cfg, epochs, steps_per_epoch)
    return _weight_chain(cfg, optax.scale_by_learning_rate(schedule))


def spanned_weight_schedule(
    cfg: WeightOptimConfig, epochs: int, steps_per_epoch: int
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """lr(count, span): the weights' lr at step `count` of a run whose cosine spans `span`
    epochs (a traced scalar, which a time limit may set below `epochs`).

    At `span == epochs` it is `weight_schedule`'s lr to the bit: the configured cosine's
    argument is computed as `epoch_cosine` computes it (XLA turns its division by the
    constant `epochs` into a product by the reciprocal, which a division by a traced span
    does not round alike) and selected, and the operations after it are `epoch_cosine`'s,
    so the compiled step fuses and rounds them as it did without a span.
    """
    if cfg.schedule == "constant":
        return lambda count, span: jnp.asarray(cfg.lr, jnp.float32)
    lr, lr_min = cfg.lr, cfg.lr_min

    def schedule(count: jax.Array, span: jax.Array) -> jax.Array:
        epoch = count // steps_per_epoch
        configured = math.pi * jnp.minimum(epoch, epochs) / epochs
        spanned = math.pi * jnp.minimum(epoch, span) / jnp.maximum(span, 1)
        angle = jnp.where(span == epochs, configured, spanned)
        return lr_min + 0.5 * (lr - lr_min) * (1 + jnp.cos(angle))

    return schedule


def scale_by_spanned_lr(
    schedule: Callable[[jax.Array, jax.Array], jax.Array],
) -> optax.GradientTransformationExtraArgs:
    """`optax.scale_by_learning_rate` of a `schedule(count, span)`, the span given to
    `update` as the extra argument `span`; its state is `optax.scale_by_schedule`'s."""

    def init(params: optax.Params) -> optax.ScaleByScheduleState:
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(
        updates: optax.Updates,
        state: optax.ScaleByScheduleState,
        params: optax.Params | None = None,
        *,
        span: jax.Array,
        **extra_args: object,
    ) -> tuple[optax.Updates, optax.ScaleByScheduleState]:
        step_size = -1 * schedule(state.count, span)
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def spanned_weight_optimizer(
    cfg: WeightOptimConfig, epochs: int, steps_per_epoch: int
) -> optax.GradientTransformationExtraArgs:
    """`weight_optimizer` with its cosine lr over the epochs given to each update,
    `update(grads, state, params, span=epochs_spanned)`: one compiled step serves every
    span a time limit fits, and at `span == epochs` the steps are `weight_optimizer`'s to
    the bit. Its state is `weight_optimizer`'s, so their checkpoints are interchangeable."""
    schedule = spanned_weight_schedule(cfg, epochs, steps_per_epoch)
    return _weight_chain(cfg, scale_by_spanned_lr(schedule))


def arch_lr(cfg: ArchOptimConfig, steps: int | None = None) -> float:
    """The architecture learning rate of a search of `steps` steps.

    Adam moves each alpha by about lr per step whatever the gradient's scale, so a search
    shorter than the `budget_steps` its lr was tuned for would end with alphas that
    barely left their initial values (GDAS' 250 NAS-Bench-201 epochs in a 30-epoch
    proxy: 40x fewer steps). Scaling lr by budget_steps / steps lets them travel as far.
    """
    if cfg.budget_steps is None or not steps or steps >= cfg.budget_steps:
        return cfg.lr
    return cfg.lr * cfg.budget_steps / steps


def arch_lr_ratio(
    cfg: ArchOptimConfig, steps_per_epoch: int, epochs: int
) -> Callable[[jax.Array], jax.Array] | None:
    """ratio(span): `arch_lr` for a search of `span` epochs over its value at `epochs`, for
    a search whose time limit shortened its span; None when the lr does not scale with
    the steps (no `budget_steps`). Adam's update is proportional to its lr, so the
    update times the ratio is the update at the span's lr. Exactly 1 at `epochs`."""
    if cfg.budget_steps is None:
        return None
    budget, base = cfg.budget_steps, arch_lr(cfg, epochs * steps_per_epoch)

    def ratio(span: jax.Array) -> jax.Array:
        steps = jnp.maximum(span * steps_per_epoch, 1).astype(jnp.float32)
        lr = jnp.where(steps < budget, cfg.lr * budget / steps, cfg.lr)
        return jnp.where(span == epochs, 1.0, lr / base)

    return ratio


def arch_optimizer(cfg: ArchOptimConfig, steps: int | None = None) -> optax.GradientTransformation:
    """Adam with L2 weight decay added to the gradient, as torch.optim.Adam does, at
    `arch_lr(cfg, steps)` for a search of `steps` steps."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.adam(arch_lr(cfg, steps), b1=cfg.betas[0], b2=cfg.betas[1]),
    )
