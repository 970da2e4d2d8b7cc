"""ENAS (Pham et al., 2018): an LSTM controller samples cells; the supernet shares weights.

Each search step samples a cell from the controller and trains the supernet's weights on
that single path. After every epoch of such steps, the controller is trained for
`controller_steps` steps by REINFORCE: it samples `aggregate` cells per step, each
rewarded with its accuracy on a validation batch under the shared weights, against a
moving-average baseline, with an entropy bonus. The found cell is the best of
`candidates` controller samples on validation data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from pydantic import BaseModel, ConfigDict, Field

from nasax.loop.data import Batch
from nasax.search.controller import Controller, ControllerOutput, Tokens, tokens_to_paths
from nasax.search.discretize import derive_genotype
from nasax.search.single_path import (
    best_candidate,
    path_scorer,
    paths_genotype,
    scored_part,
    train_path_step,
)
from nasax.search.strategy import (
    FunctionalSupernet,
    Metrics,
    SearchSetup,
    Strategy,
    SupernetState,
    register_strategy,
)
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import Forward

_CONTROLLER = 0xC0
"""Folded into the state's key for the controller phase's samples."""
_CANDIDATES = 0x5E1EC7
"""... for the samples `select` ranks."""
_POLICY = 0x9011C7
"""... for the samples that estimate the controller's per-edge op frequencies."""


class EnasOptions(BaseModel):
    """The `search.enas` section (defaults: the ENAS code's micro-search settings)."""

    model_config = ConfigDict(extra="forbid")

    lstm_size: int = Field(64, ge=1, description="controller LSTM size")
    temperature: float | None = Field(5.0, gt=0, description="logits / temperature (null: off)")
    tanh_constant: float | None = Field(
        1.1, gt=0, description="logits -> c * tanh(logits) (null: off)"
    )
    op_tanh_reduce: float = Field(2.5, gt=0, description="op logits use tanh_constant / this")
    lr: float = Field(0.0035, gt=0, description="controller Adam learning rate")
    adam_b1: float = Field(0.0, ge=0, lt=1, description="controller Adam beta1 (ENAS: 0)")
    adam_eps: float = Field(1e-3, gt=0, description="controller Adam epsilon (ENAS: 1e-3)")
    entropy_weight: float = Field(1e-4, ge=0, description="entropy bonus in the controller loss")
    baseline_decay: float = Field(0.99, ge=0, lt=1, description="moving-average reward baseline")
    controller_steps: int = Field(30, ge=0, description="controller steps after each epoch")
    aggregate: int = Field(10, ge=1, description="sampled cells per controller step")
    candidates: int = Field(100, ge=1, description="controller samples ranked to pick the cell")
    select_batches: int = Field(1, ge=1, description="validation batches that score each one")


class EnasState(NamedTuple):
    """The supernet's state, the controller's parameters and its optimizer, and the
    REINFORCE baseline."""

    net: SupernetState
    controller: nnx.State
    controller_opt: optax.OptState
    baseline: jax.Array
    controller_step: jax.Array

    @property
    def params(self) -> nnx.State:
        return self.net.params

    @property
    def step(self) -> jax.Array:
        """The weight-step counter (the supernet's), which keys the step's random draws."""
        return self.net.step

    def with_step(self, step: jax.Array) -> EnasState:
        """This state with the supernet's step counter set to `step`."""
        return self._replace(net=self.net._replace(step=step))


def reinforce_loss(
    log_probs: jax.Array, entropies: jax.Array, advantages: jax.Array, entropy_weight: float
) -> jax.Array:
    """REINFORCE with an entropy bonus, averaged over samples: the gradient ascends
    advantage-weighted log-probabilities of the sampled cells and their entropy."""
    advantages = jax.lax.stop_gradient(advantages)
    return jnp.mean(-advantages * log_probs - entropy_weight * entropies)


def moving_baseline(
    baseline: jax.Array, rewards: jax.Array, decay: float
) -> tuple[jax.Array, jax.Array]:
    """(advantages, final baseline): each sample is compared with the baseline before it,
    which then moves toward its reward, one sample at a time as in ENAS."""

    def one(b: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
        return decay * b + (1 - decay) * r, r - b

    final, advantages = jax.lax.scan(one, baseline, rewards)
    return advantages, final


@register_strategy("enas", EnasOptions)
def make_enas(setup: SearchSetup, options: EnasOptions) -> Strategy:
    """Builds ENAS over the supernet of `setup`."""
    net = FunctionalSupernet.create(setup)
    space, budget = setup.space, setup.budget
    controller_optimizer = optax.adam(options.lr, b1=options.adam_b1, eps=options.adam_eps)

    def build_controller(rngs: nnx.Rngs) -> Controller:
        return Controller(
            space,
            rngs=rngs,
            hidden=options.lstm_size,
            temperature=options.temperature,
            tanh_constant=options.tanh_constant,
            op_tanh_reduce=options.op_tanh_reduce,
        )

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_controller(nnx.Rngs(0))))
    score = path_scorer(net, setup)

    def run_controller(params: nnx.State, rng: jax.Array, **kw: Any) -> ControllerOutput:
        return nnx.merge(graphdef, params, copy=True)(rng, **kw)

    def cell_paths(tokens: Tokens) -> dict[str, jax.Array]:
        return tokens_to_paths(tokens, space)

    def init(rng: jax.Array) -> EnasState:
        net_rng, controller_rng = jax.random.split(rng)
        params = nnx.state(build_controller(nnx.Rngs(params=controller_rng)))
        return EnasState(
            net=net.init(net_rng),
            controller=params,
            controller_opt=controller_optimizer.init(params),
            baseline=jnp.zeros(()),
            controller_step=jnp.zeros((), jnp.int32),
        )

    def step(state: EnasState, train: Batch, val: Batch) -> tuple[EnasState, Metrics]:
        """A weight step on a cell the controller samples (its loss on `val` is logged)."""
        rng = jax.random.fold_in(jax.random.fold_in(state.net.rng, _CONTROLLER), state.net.step)
        tokens = run_controller(state.controller, jax.random.fold_in(rng, 1)).tokens
        paths = cell_paths(tokens)
        net_state, metrics = train_path_step(net, state.net, train, val, paths, paths)
        return state._replace(net=net_state), metrics

    def controller_step(state: EnasState, batch: Batch) -> tuple[EnasState, Metrics]:
        """One REINFORCE step on `aggregate` sampled cells, rewarded on `batch`."""
        rng = jax.random.fold_in(state.net.rng, state.controller_step)
        keys = jax.random.split(jax.random.fold_in(rng, _CONTROLLER), options.aggregate)
        samples = jax.vmap(lambda k: run_controller(state.controller, k))(keys)
        paths = jax.vmap(cell_paths)(samples.tokens)
        rewards = score(state.net, paths, batch) / net.count(batch)
        if budget is not None:  # MnasNet's reward: accuracy * (cost / target)^w
            rewards = budget.reward(rewards, jax.vmap(budget.table.of_paths)(paths))
        advantages, baseline = moving_baseline(state.baseline, rewards, options.baseline_decay)

        def loss_fn(params: nnx.State) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            out = jax.vmap(lambda k, t: run_controller(params, k, forced=t))(keys, samples.tokens)
            log_probs = jax.vmap(ControllerOutput.log_prob)(out)
            entropies = jax.vmap(ControllerOutput.entropy)(out)
            loss = reinforce_loss(log_probs, entropies, advantages, options.entropy_weight)
            return loss, (log_probs, entropies)

        (loss, (log_probs, entropies)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.controller
        )
        updates, opt_state = controller_optimizer.update(
            grads, state.controller_opt, state.controller
        )
        new_state = state._replace(
            controller=optax.apply_updates(state.controller, updates),
            controller_opt=opt_state,
            baseline=baseline,
            controller_step=state.controller_step + 1,
        )
        metrics = {
            "reward": rewards.mean(),
            "entropy": entropies.mean(),
            "baseline": baseline,
            "advantage": advantages.mean(),
            "log_prob": log_probs.mean(),
            "entropy_bonus": options.entropy_weight * entropies.mean(),
            "controller_objective": loss,
            "controller_grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    compiled_controller_step = setup.jit(controller_step, donate_argnums=(0,))

    def after_epoch(state: EnasState, batches: Iterator[Batch]) -> tuple[EnasState, list[Metrics]]:
        records = []
        for batch in islice(batches, options.controller_steps):
            state, metrics = compiled_controller_step(state, scored_part(batch))
            records.append(metrics)
        return state, records

    def greedy_paths(state: EnasState) -> dict[str, jax.Array]:
        out = run_controller(state.controller, state.net.rng, greedy=True)
        return cell_paths(out.tokens)

    greedy_jit = jax.jit(greedy_paths)  # built once: derive runs every epoch

    def evaluate(state: EnasState, batch: Batch) -> Metrics:
        """Test metrics of the controller's most likely cell with the shared weights."""
        return net.evaluate(state.net, batch, Forward(paths=greedy_paths(state)))

    def sampled_paths(state: EnasState, salt: int, n: int) -> dict[str, jax.Array]:
        """Paths of `n` cells the controller samples, stacked (a fixed draw per state)."""
        keys = jax.random.split(jax.random.fold_in(state.net.rng, salt), n)
        return jax.vmap(lambda k: cell_paths(run_controller(state.controller, k).tokens))(keys)

    @jax.jit
    def candidates(state: EnasState) -> dict[str, jax.Array]:
        return sampled_paths(state, _CANDIDATES, options.candidates)

    def select(state: EnasState, batches: Iterable[Batch]) -> Genotype:
        return best_candidate(
            score, state.net, candidates(state), batches, options.select_batches, space, budget
        )

    def derive(state: EnasState) -> Genotype:
        """Without validation data: the controller's most likely cell; with a budget it
        is over, the best cell within it by the controller's op frequencies."""
        paths = {k: np.asarray(p) for k, p in greedy_jit(state).items()}
        if budget is None or bool(budget.fits(paths)):
            return paths_genotype(paths, space)
        weights = {k: np.asarray(v) for k, v in policy(state).items()}
        return derive_genotype(weights, space, limit=budget.limit)

    @jax.jit
    def policy(state: EnasState) -> dict[str, jax.Array]:
        """How often each op lands on each edge in 256 controller samples (the controller's
        counterpart of softmaxed alphas, for the per-epoch record)."""
        paths = sampled_paths(state, _POLICY, 256)
        return {k: jax.nn.one_hot(p, space.n_ops).mean(0) for k, p in paths.items()}

    return Strategy(
        init=init,
        step=step,
        evaluate=evaluate,
        derive=derive,
        arch_weights=lambda state: {k: np.asarray(v) for k, v in policy(state).items()},
        select=select,
        after_epoch=after_epoch,
        evaluate_cell=lambda state, paths, batch: net.evaluate(
            state.net, batch, Forward(paths=paths)
        ),
    )
