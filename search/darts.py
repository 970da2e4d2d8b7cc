"""DARTS (Liu et al., 2019): alternate an architecture step and a weight step.

Each search step is one jitted program: the alphas take an Adam step on the gradient
of the validation loss, then the weights take an SGD step on the training loss under
the updated alphas. Op weights are the softmax of the alphas. First order takes the
validation gradient at the current weights; second order takes it through one virtual
weight step (`nasax.search.unrolled`).
"""

from __future__ import annotations

from typing import Literal

import jax
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nasax.loop.data import Batch
from nasax.search.budget import with_budget
from nasax.search.discretize import derive_genotype
from nasax.search.strategy import (
    FunctionalSupernet,
    Metrics,
    SearchSetup,
    Strategy,
    SupernetState,
    alphas_of,
    arch_update,
    register_strategy,
    softmax_weights,
    step_metrics,
    weight_update,
)
from nasax.search.unrolled import unrolled_arch_grad
from nasax.supernet.genotypes import Genotype


class DartsOptions(BaseModel):
    """The `search.darts` section: first or second order, and how second order is taken."""

    model_config = ConfigDict(extra="forbid")

    order: Literal[1, 2] = Field(
        1, description="1: alpha gradient at the current weights; 2: through a virtual step"
    )
    hessian: Literal["exact", "finite_difference"] = Field(
        "exact",
        description="order 2: jax.grad through the optax update, or DARTS's finite differences",
    )
    unrolled_lr: float | None = Field(
        None, gt=0, description="order 2: virtual step learning rate (null: the scheduled one)"
    )

    @model_validator(mode="after")
    def _second_order_knobs_need_order_2(self) -> DartsOptions:
        """hessian and unrolled_lr shape the virtual step, which only order 2 takes."""
        if self.order == 1:
            for key, value in (("hessian", self.hessian), ("unrolled_lr", self.unrolled_lr)):
                if value != DartsOptions.model_fields[key].default:
                    raise ValueError(
                        f"search.darts.{key}={value!r} only applies to second-order DARTS; "
                        "set search.darts.order=2 or drop it"
                    )
        return self


def op_weights(state: SupernetState) -> dict[str, np.ndarray]:
    """Softmax of the alphas per cell kind, on the host."""
    return {k: np.asarray(jax.nn.softmax(a, axis=-1)) for k, a in alphas_of(state.arch).items()}


@register_strategy("darts", DartsOptions)
def make_darts(setup: SearchSetup, options: DartsOptions) -> Strategy:
    """Builds DARTS of `options.order` over the supernet of `setup`.

    Second order reports the validation loss and accuracy of the virtual weights w'
    (what its alpha step minimises), and commits only the BN statistics of the real
    weight step: the virtual and unrolled forwards only exist to take the gradient.
    """
    net = FunctionalSupernet.create(setup)

    def step(state: SupernetState, train: Batch, val: Batch) -> tuple[SupernetState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        train_rng, val_rng = jax.random.split(rng)
        x_train = setup.preprocess(train, train_rng, True)
        x_val = setup.preprocess(val, val_rng, True)

        if options.order == 1:
            arch_grad_fn = jax.value_and_grad(net.loss, argnums=2, has_aux=True)
            (val_loss, (val_acc, stats)), arch_grad = arch_grad_fn(
                state.params, state.batch_stats, state.arch, x_val, val["label"]
            )
        else:
            arch_grad, (val_loss, val_acc) = unrolled_arch_grad(
                net,
                setup,
                state,
                x_train,
                train["label"],
                x_val,
                val["label"],
                hessian=options.hessian,
                xi=options.unrolled_lr,
            )
            stats = state.batch_stats
        arch_grad, cost_metrics = with_budget(
            setup.budget, state.arch, arch_grad, val_loss, softmax_weights
        )
        arch, arch_opt = arch_update(setup, state, arch_grad)

        weight_grad_fn = jax.value_and_grad(net.loss, argnums=0, has_aux=True)
        (train_loss, (train_acc, stats)), grads = weight_grad_fn(
            state.params, stats, arch, x_train, train["label"]
        )
        params, weight_opt = weight_update(setup, state, grads)
        metrics = step_metrics(setup, state, grads, (train_loss, train_acc), (val_loss, val_acc))
        if cost_metrics:  # the cross-entropy stays `val_loss`; the cost term is apart
            metrics |= cost_metrics
            metrics["val_objective"] = val_loss + cost_metrics["budget_penalty"]
        return state.stepped(params, stats, arch, weight_opt, arch_opt), metrics

    def derive(state: SupernetState) -> Genotype:
        return derive_genotype(
            op_weights(state),
            setup.space,
            max_skip_connect=setup.max_skip_connect,
            limit=setup.budget and setup.budget.limit,
        )

    def arch_weights(state: SupernetState) -> dict[str, np.ndarray]:
        return {f"alpha_{k}": np.asarray(a) for k, a in alphas_of(state.arch).items()}

    return Strategy(
        init=net.init, step=step, evaluate=net.evaluate, derive=derive, arch_weights=arch_weights
    )
