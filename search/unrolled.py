"""Second-order DARTS: the architecture gradient through one virtual weight step.

The virtual step is the real weight optimizer's update on the training batch,
w'(α) = w + U(∇w L_train(w, α)), so it carries momentum and weight decay as the DARTS
reference's `_compute_unrolled_model` does, and its new optimizer state is dropped. The
architecture gradient is d/dα L_val(w'(α), α) = ∂α L_val + (∂g/∂α)ᵀ u, with u the
validation gradient pulled back through the optax update. The mixed second derivative
along u is either exact, by forward over reverse mode (a `jax.jvp` of the arch gradient,
which costs about one more gradient and forms no Hessian; reverse over reverse through
the whole unrolled objective cost far more time and memory, see benchmarks/README.md),
or the reference's finite-difference Hessian-vector product.

Unlike the reference, the virtual step also clips the gradient when `grad_clip` is set:
it is the step the optimizer would really take, and differentiating the optax chain
as it is keeps one definition of the step. While the gradient norm is below the clip
(the usual case) both are the same; above it, u includes the clip's Jacobian (`jax.vjp`
of the optimizer alone), in both forms.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nasax.engine.marking import UNFUSED, forward_differentiable, separate_program
from nasax.search.strategy import (
    FunctionalSupernet,
    SearchSetup,
    SupernetState,
    weight_updates_to_span,
)

Hessian = Literal["exact", "finite_difference"]

FD_RADIUS = 0.01
"""Norm of the weight perturbation of the finite-difference Hessian-vector product (DARTS's r)."""


def virtual_weight_step(
    setup: SearchSetup,
    state: SupernetState,
    grads: nnx.State,
    xi: float | None = None,
) -> nnx.State:
    """The weights one real optimizer step from `state` would give for `grads`.

    The weight optimizer's new state is dropped: only the real weight step commits it.
    Without `xi` it is the real step's update, at the lr of the epochs `state` spans.
    With `xi` set, the update is rescaled from `setup.learning_rate(state.step)` to
    `xi`: exact for optimizers whose last transformation scales by the learning rate,
    as long as the optimizer's step count equals `state.step` (steps skipped under
    `run.nonfinite=skip` leave it behind, which shifts the scale at epoch boundaries).
    """
    updates, _ = setup.weight_optimizer.update(grads, state.weight_opt, state.params)
    if xi is not None:
        lr = setup.learning_rate(state.step)
        scale = jnp.where(lr > 0, xi / jnp.where(lr > 0, lr, 1.0), 0.0)
        updates = jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates)
    else:
        updates = weight_updates_to_span(setup, state, updates)
    return optax.apply_updates(state.params, updates)


def unrolled_arch_grad(
    net: FunctionalSupernet,
    setup: SearchSetup,
    state: SupernetState,
    x_train: jax.Array,
    y_train: jax.Array,
    x_val: jax.Array,
    y_val: jax.Array,
    *,
    hessian: Hessian = "exact",
    xi: float | None = None,
) -> tuple[nnx.State, tuple[jax.Array, jax.Array]]:
    """The second-order DARTS architecture gradient d/dα L_val(w'(α), α).

    Every forward runs in training mode (batch statistics, as the reference does) from
    `state.batch_stats`; none of their BN statistic updates is returned, so the caller
    commits only those of its real weight step.

    Args:
        net: the supernet; only `net.loss` is called, so a strategy with its own loss
            can pass any object with the same `loss` signature.
        setup: gives the weight optimizer of the virtual step and the learning rate.
        state: current weights, BN statistics, alphas and weight optimizer state.
        x_train, y_train: the weight-step batch (preprocessed images, labels).
        x_val, y_val: the architecture-step batch.
        hessian: "exact" takes the mixed second derivative of L_train along the pulled-back
            validation gradient u by forward over reverse mode (`jax.jvp` of the arch
            gradient); "finite_difference" by a central difference of arch gradients at
            w ± ε·u, ε = 0.01/‖u‖ (DARTS).
        xi: the virtual step's learning rate; None uses the scheduled one (DARTS's eta).

    Returns:
        (gradient w.r.t. the arch state, (validation loss, validation accuracy) at w').
    """
    if hessian not in ("exact", "finite_difference"):
        raise ValueError(f"hessian must be 'exact' or 'finite_difference', got {hessian!r}")
    stats = state.batch_stats

    def arch_grads(params: nnx.State) -> nnx.State:
        """∇α L_train(params, α), at the weights or near them."""
        grad_fn = jax.grad(net.loss, argnums=2, has_aux=True)
        return grad_fn(params, stats, state.arch, x_train, y_train)[0]

    def pulled_back(state: SupernetState, grads: nnx.State, v: nnx.State) -> nnx.State:
        """(∂w'/∂g)ᵀ v: `v` pulled back through the optimizer update alone (no network)."""
        _, pullback = jax.vjp(lambda g: virtual_weight_step(setup, state, g, xi), grads)
        return pullback(v)[0]

    # ∇w L_train(w, α): the gradient the virtual step takes.
    grads = jax.grad(net.loss, has_aux=True)(state.params, stats, state.arch, x_train, y_train)[0]
    unrolled = virtual_weight_step(setup, state, grads, xi)
    (val_loss, (val_acc, _)), (v, direct) = jax.value_and_grad(
        net.loss, argnums=(0, 2), has_aux=True
    )(unrolled, stats, state.arch, x_val, y_val)
    # u = (∂w'/∂g)ᵀ v is -ξ·v for SGD with momentum and weight decay, plus the clip's
    # Jacobian when clipping is active; its own program, without XLA's fusion on CPU
    # (inside the step's glue, fusing the clip's pullback did not finish). It recomputes
    # the update's forward, elementwise work that `unrolled` above keeps fused.
    u = separate_program(pulled_back, UNFUSED)(state, grads, v)
    # The implicit term (∂g/∂α)ᵀ u = ∇α ⟨∇w L_train, u⟩ is, by the symmetry of the mixed
    # second derivative, the derivative of ∇α L_train(w, α) along u: exact by forward over
    # reverse mode (no Hessian is formed), or by DARTS' central differences.
    if hessian == "exact":
        _, implicit = jax.jvp(forward_differentiable(arch_grads), (state.params,), (u,))
        arch_grad = jax.tree.map(jnp.add, direct, implicit)
        return arch_grad, (val_loss, val_acc)
    eps = FD_RADIUS / jnp.maximum(optax.tree.norm(u), jnp.finfo(jnp.float32).tiny)
    g_plus = arch_grads(optax.tree.add_scale(state.params, eps, u))
    g_minus = arch_grads(optax.tree.add_scale(state.params, -eps, u))
    arch_grad = jax.tree.map(lambda d, p, m: d + (p - m) / (2 * eps), direct, g_plus, g_minus)
    return arch_grad, (val_loss, val_acc)
