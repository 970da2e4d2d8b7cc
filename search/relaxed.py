"""The first-order bilevel step shared by the relaxation strategies (GDAS, SNAS, DrNAS,
PC-DARTS): only how architecture parameters become the supernet's op weights differs.

A `Relaxation` says that; `relaxed_strategy` turns it into a `Strategy` whose step is
one jitted program: an architecture step on the validation batch (skipped by `lax.cond`
during a warm-up), then a weight step on the training batch under the updated
architecture, each with a fresh sample of the relaxation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nasax.loop.data import Batch
from nasax.search.budget import budget_metrics, with_budget
from nasax.search.discretize import derive_genotype
from nasax.search.strategy import (
    Clock,
    FunctionalSupernet,
    Metrics,
    SearchSetup,
    Strategy,
    SupernetState,
    alphas_of,
    arch_update,
    betas_of,
    softmax_weights,
    step_metrics,
    weight_update,
)
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import Forward, node_softmax


class Relaxation(NamedTuple):
    """How a strategy turns architecture parameters into a forward of the supernet.

    Attributes:
        sample: (alphas by kind, rng, clock) -> the `Forward` of a training-mode pass;
            differentiable in the alphas. The `Clock` gives the step and the epochs the
            schedules span; schedules read it through `epoch_progress`.
        weights: alphas by kind -> deterministic (edges, ops) op weights by kind, used to
            evaluate the supernet and to derive the genotype.
        eval_forward: alphas by kind -> the `Forward` of evaluation (default: the
            mixed forward with `weights`).
        penalty: optional (alphas by kind, clock) -> the regularisers added to the
            architecture loss, by the names the log gives them (`beta_reg`); the
            logged `val_loss` stays the cross-entropy, and `val_objective` is the sum.
        metrics: optional clock -> extra scalars to log (e.g. the temperature).
        weight_sample: optional forward of the weight step, with the same arguments as
            `sample` (default: `sample`), for strategies that train the weights under
            other op weights than the alphas see (SDARTS' perturbed ones).
    """

    sample: Callable[[dict[str, jax.Array], jax.Array, Clock], Forward]
    weights: Callable[[dict[str, jax.Array]], dict[str, jax.Array]]
    eval_forward: Callable[[dict[str, jax.Array]], Forward] | None = None
    penalty: Callable[[dict[str, jax.Array], Clock], Metrics] | None = None
    metrics: Callable[[Clock], Metrics] | None = None
    weight_sample: Callable[[dict[str, jax.Array], jax.Array, Clock], Forward] | None = None


class Annealing(BaseModel):
    """A temperature schedule over the search epochs (value per epoch, first to last)."""

    model_config = ConfigDict(extra="forbid")

    tau_max: float = Field(10.0, gt=0, description="temperature of the first epoch")
    tau_min: float = Field(0.1, gt=0, description="temperature of the last epoch")
    anneal: str = Field(
        "linear", pattern="^(linear|exponential)$", description="the schedule's shape"
    )

    @model_validator(mode="after")
    def _order(self) -> Annealing:
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must not exceed tau_max ({self.tau_max})")
        return self


class ArchOut(NamedTuple):
    """An architecture step's results: the new alphas and their optimizer state, the
    BN statistics, the validation batch's cross-entropy, accuracy and architecture
    objective (before any cost term), the regularisers' terms, and the cost term's
    metrics (`with_budget`'s; empty without a budget)."""

    arch: nnx.State
    arch_opt: optax.OptState
    stats: nnx.State
    loss: jax.Array
    acc: jax.Array
    objective: jax.Array
    terms: Metrics
    cost: Metrics


def epoch_progress(setup: SearchSetup) -> Callable[[Clock], jax.Array]:
    """progress(clock): the step's epoch as a fraction of the epochs the schedules span,
    0 in the first epoch and 1 in the last. Schedules written per epoch this way keep
    their shape at any budget, and follow a span the loop fits to a time limit."""

    def progress(clock: Clock) -> jax.Array:
        last = jnp.maximum(clock.epochs - 1, 1)
        return jnp.minimum(clock.step // setup.steps_per_epoch, last) / last

    return progress


def temperature(options: Annealing, setup: SearchSetup) -> Callable[[Clock], jax.Array]:
    """tau(clock): steps through the epochs from `tau_max` to `tau_min`, linearly as in GDAS
    or geometrically."""
    hi, lo = options.tau_max, options.tau_min
    epoch_fraction = epoch_progress(setup)

    def tau(clock: Clock) -> jax.Array:
        progress = epoch_fraction(clock)
        if options.anneal == "linear":
            return hi - (hi - lo) * progress
        return hi * (lo / hi) ** progress

    return tau


def gumbel(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Gumbel(0, 1) noise, redrawn (a bounded number of times) until every value is finite.

    -log(-log(u)) overflows when u rounds to 0 or 1; GDAS resamples such draws.
    """

    def draw(carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple:
        key, _, tries = carry
        key, sub = jax.random.split(key)
        return key, jax.random.gumbel(sub, shape), tries + 1

    def bad(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, g, tries = carry
        return jnp.logical_and(~jnp.all(jnp.isfinite(g)), tries < 100)

    _, g, _ = lax.while_loop(bad, draw, draw((rng, jnp.zeros(shape), jnp.zeros((), jnp.int32))))
    return g


def softmax_forward(alphas: dict[str, jax.Array], rng: jax.Array, clock: Clock) -> Forward:
    """A `Relaxation.sample` without randomness: the mixed forward under softmax(alpha)."""
    return Forward(weights=softmax_weights(alphas))


def per_kind(
    draw: Callable[[jax.Array, jax.Array], Any], arrays: dict[str, jax.Array], rng: jax.Array
) -> dict[str, Any]:
    """{kind: draw(array, key)}, one key of `rng` per cell kind, in sorted kind order."""
    keys = jax.random.split(rng, len(arrays))
    return {kind: draw(a, key) for key, (kind, a) in zip(keys, sorted(arrays.items()))}


def relaxed_strategy(
    setup: SearchSetup,
    relaxation: Relaxation,
    *,
    network_options: dict[str, Any] | None = None,
    arch_warmup_epochs: int = 0,
    joint: bool = False,
) -> Strategy:
    """A first-order bilevel strategy over `relaxation`.

    Args:
        setup: the shared search setup.
        relaxation: how alphas become op weights.
        network_options: keyword options for the supernet (e.g. partial channels).
        arch_warmup_epochs: epochs in which only the weights train (PC-DARTS), out of
            `setup.epochs`; a shorter span (a time limit) shortens it in proportion.
        joint: update weights and alphas together on the training batch (SNAS'
            single-level objective) instead of alternating with the validation batch.
    """
    net = FunctionalSupernet.create(setup, **(network_options or {}))

    def warmup_steps(clock: Clock) -> jax.Array:
        """The warm-up's steps: its share of the configured epochs, of the epochs the
        clock spans (rounded half up), so equal to `arch_warmup_epochs` when they agree."""
        e = setup.epochs
        return (2 * arch_warmup_epochs * clock.epochs + e) // (2 * e) * setup.steps_per_epoch

    Aux = tuple[jax.Array, nnx.State]

    def loss(
        params: nnx.State,
        arch: nnx.State,
        stats: nnx.State,
        x: jax.Array,
        labels: jax.Array,
        rng: jax.Array,
        clock: Clock,
        sample: Callable[..., Forward] = relaxation.sample,
    ) -> tuple[jax.Array, Aux]:
        """Cross-entropy under a fresh sample of the relaxation."""
        forward = sample(alphas_of(arch), rng, clock)
        return net.loss(params, stats, arch, x, labels, forward)

    def weight_loss(params: nnx.State, arch: nnx.State, *args: Any) -> tuple[jax.Array, Aux]:
        """`loss` under the weight step's sample."""
        return loss(params, arch, *args, sample=relaxation.weight_sample or relaxation.sample)

    def penalised(value: jax.Array, arch: nnx.State, clock: Clock) -> tuple[jax.Array, Metrics]:
        """`value` plus the relaxation's penalty on the alphas, and the penalty's terms."""
        if relaxation.penalty is None:
            return value, {}
        terms = relaxation.penalty(alphas_of(arch), clock)
        return value + sum(terms.values()), terms

    def regularised(
        params: nnx.State, arch: nnx.State, *args: Any
    ) -> tuple[jax.Array, tuple[jax.Array, Aux, Metrics]]:
        """The architecture objective, `loss` plus the penalty, with (the cross-entropy,
        its aux, the penalty's terms) as aux."""
        value, aux = loss(params, arch, *args)
        objective, terms = penalised(value, arch, args[-1])
        return objective, (value, aux, terms)

    def arch_step(state: SupernetState, x: jax.Array, labels: jax.Array, rng: jax.Array) -> ArchOut:
        grad_fn = jax.value_and_grad(regularised, argnums=1, has_aux=True)
        (objective, (val_loss, (val_acc, stats), terms)), grads = grad_fn(
            state.params, state.arch, state.batch_stats, x, labels, rng, state.clock
        )
        grads, cost = with_budget(setup.budget, state.arch, grads, objective, relaxation.weights)
        arch, arch_opt = arch_update(setup, state, grads)
        return ArchOut(arch, arch_opt, stats, val_loss, val_acc, objective, terms, cost)

    def frozen_arch(
        state: SupernetState, x: jax.Array, labels: jax.Array, rng: jax.Array
    ) -> ArchOut:
        """Warm-up: alphas unchanged; the validation loss is still measured for the log."""
        val_loss, (val_acc, _) = loss(
            state.params, state.arch, state.batch_stats, x, labels, rng, state.clock
        )
        objective, terms = penalised(val_loss, state.arch, state.clock)
        cost = budget_metrics(setup.budget, state.arch, relaxation.weights, objective)
        return ArchOut(
            state.arch, state.arch_opt, state.batch_stats, val_loss, val_acc, objective, terms, cost
        )

    def step(state: SupernetState, train: Batch, val: Batch) -> tuple[SupernetState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        train_rng, val_rng, train_sample, val_sample = jax.random.split(rng, 4)
        x_train = setup.preprocess(train, train_rng, True)
        batch_args = (state.batch_stats, x_train, train["label"], train_sample, state.clock)
        if joint:
            grad_fn = jax.value_and_grad(regularised, argnums=(0, 1), has_aux=True)
            (objective, (train_loss, (train_acc, stats), terms)), (grads, arch_grads) = grad_fn(
                state.params, state.arch, *batch_args
            )
            arch_grads, cost = with_budget(
                setup.budget, state.arch, arch_grads, objective, relaxation.weights
            )
            arch, arch_opt = arch_update(setup, state, arch_grads)
            val_loss, val_acc = train_loss, train_acc
        else:
            x_val = setup.preprocess(val, val_rng, True)
            args = (state, x_val, val["label"], val_sample)
            if arch_warmup_epochs:
                out = lax.cond(
                    state.step >= warmup_steps(state.clock), arch_step, frozen_arch, *args
                )
            else:
                out = arch_step(*args)
            arch, arch_opt, stats, val_loss, val_acc, objective, terms, cost = out
            grad_fn = jax.value_and_grad(weight_loss, has_aux=True)
            (train_loss, (train_acc, stats)), grads = grad_fn(
                state.params, arch, stats, *batch_args[1:]
            )
        params, weight_opt = weight_update(setup, state, grads)
        metrics = step_metrics(setup, state, grads, (train_loss, train_acc), (val_loss, val_acc))
        if relaxation.metrics is not None:
            metrics.update(relaxation.metrics(state.clock))
        metrics |= terms | cost
        if terms or "budget_penalty" in cost:
            # The objective the alphas took their step on: on the training batch when
            # the step is joint (SNAS), else on the validation batch.
            name = "train_objective" if joint else "val_objective"
            metrics[name] = objective + cost.get("budget_penalty", 0.0)
        return state.stepped(params, stats, arch, weight_opt, arch_opt), metrics

    def evaluate(state: SupernetState, batch: Batch) -> Metrics:
        alphas = alphas_of(state.arch)
        if relaxation.eval_forward is not None:
            return net.evaluate(state, batch, relaxation.eval_forward(alphas))
        return net.evaluate(state, batch, Forward(weights=relaxation.weights(alphas)))

    def derive(state: SupernetState) -> Genotype:
        weights = relaxation.weights(alphas_of(state.arch))
        betas = betas_of(state.arch)
        return derive_genotype(
            {k: np.asarray(w) for k, w in weights.items()},
            setup.space,
            max_skip_connect=setup.max_skip_connect,
            limit=setup.budget and setup.budget.limit,
            edge_strength={k: np.asarray(node_softmax(b, setup.space)) for k, b in betas.items()}
            or None,
        )

    def arch_weights(state: SupernetState) -> dict[str, np.ndarray]:
        raw = {f"alpha_{k}": a for k, a in alphas_of(state.arch).items()}
        raw |= {f"beta_{k}": b for k, b in betas_of(state.arch).items()}
        return {k: np.asarray(v) for k, v in raw.items()}

    return Strategy(
        init=net.init, step=step, evaluate=evaluate, derive=derive, arch_weights=arch_weights
    )
