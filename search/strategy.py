"""The strategy contract: `init` / `step` / `evaluate` / `derive`, registered by name.

A strategy is a NamedTuple of pure functions over an explicit state pytree. The search
loop jits `step` (one XLA program per search step) and owns data, logging,
checkpoints and progress, so a new strategy is one module that registers a builder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from pydantic import BaseModel

from nasax.core.registry import Registry
from nasax.loop.data import Batch
from nasax.loop.runloop import masked_sums
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import PLAIN_FORWARD, ArchParam, Forward, SearchNetwork
from nasax.supernet.spaces import SearchSpace

if TYPE_CHECKING:
    from nasax.search.budget import Budget

Metrics = dict[str, jax.Array]


class SearchSetup(NamedTuple):
    """What every strategy is handed: the space, the supernet and the shared machinery.

    Attributes:
        space: the search space.
        network: builds the supernet from an `nnx.Rngs` and keyword options of the
            network (e.g. `partial_channels`, `edge_normalization`).
        weight_optimizer: optax transformation for the network weights.
        arch_optimizer: optax transformation for the architecture parameters.
        learning_rate: weight learning rate as a function of the step (for logging).
        preprocess: preprocess(batch, rng, train) -> the network's input (normalised float
            images; a language model's tokens and what they carry).
        max_skip_connect: discretizer cap on skip connections in the normal cell.
        epochs: search epochs (for schedules such as temperature annealing).
        steps_per_epoch: search steps per epoch.
        jit: compiles a strategy's own programs (`jax.jit`, or `nasax.engine.blocks.block_jit`
            to run them block by block as the search step runs).
        arch_lr_ratio: optional ratio(span) of the architecture lr at a span of `span`
            epochs to the configured one (`nasax.loop.optim.arch_lr_ratio`), applied by
            `arch_update`.
        weight_lr_ratio: optional ratio(step, span) of the weights' cosine lr over a span
            of `span` epochs to the configured one (`nasax.loop.optim.weight_lr_ratio`),
            applied by `weight_update`.
        budget: the search's budget (`search.cost`; `nasax.search.budget`), or None.
    """

    space: SearchSpace
    network: Callable[..., SearchNetwork]
    weight_optimizer: optax.GradientTransformation
    arch_optimizer: optax.GradientTransformation
    learning_rate: Callable[[jax.Array], jax.Array]
    preprocess: Callable[[Batch, jax.Array, bool], Any]
    max_skip_connect: int | None = None
    epochs: int = 1
    steps_per_epoch: int = 1
    jit: Callable[..., Callable] = jax.jit
    arch_lr_ratio: Callable[[jax.Array], jax.Array] | None = None
    weight_lr_ratio: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    budget: Budget | None = None
    functional: type[FunctionalSupernet] | None = None
    """The functional view of the network (None: `FunctionalSupernet`, image classifiers);
    a language model's view carries its hidden state and masks its windows."""

    def weight_lr(self, state: SupernetState) -> jax.Array:
        """The weights' learning rate at `state`'s step, over the epochs it spans."""
        lr = self.learning_rate(state.step)
        if self.weight_lr_ratio is not None:
            lr = lr * self.weight_lr_ratio(state.step, state.epochs)
        return lr


class Strategy(NamedTuple):
    """A search strategy as pure functions over its state pytree.

    Attributes:
        init: rng -> state.
        step: (state, train_batch, val_batch) -> (state, metrics); jitted by the loop.
        evaluate: (state, batch with mask) -> summed metrics (`loss_sum`, `correct`, `count`).
        derive: state -> Genotype.
        arch_weights: state -> {name: array} of architecture weights to record per epoch.
        select: optional (state, validation batches) -> Genotype, for strategies that
            pick their cell by scoring candidates on held-out data (random search with
            weight sharing); the loop calls it instead of `derive` on evaluation epochs.
        after_epoch: optional (state, validation batches) -> (state, per-step metrics), a
            phase the loop runs after each epoch's weight steps and before its checkpoint
            (ENAS trains its controller here); it draws as many batches as it needs.
        evaluate_cell: optional (state, paths, batch with mask) -> summed metrics of the
            cell `paths` (cell kind -> op index per edge) with the shared weights; the
            loop's test figure then measures the cell `select` chose.
    """

    init: Callable[[jax.Array], Any]
    step: Callable[[Any, Batch, Batch], tuple[Any, Metrics]]
    evaluate: Callable[[Any, Batch], Metrics]
    derive: Callable[[Any], Genotype]
    arch_weights: Callable[[Any], dict[str, np.ndarray]]
    select: Callable[[Any, Iterable[Batch]], Genotype] | None = None
    after_epoch: Callable[[Any, Iterator[Batch]], tuple[Any, list[Metrics]]] | None = None
    evaluate_cell: Callable[[Any, dict[str, jax.Array], Batch], Metrics] | None = None


StrategyBuilder = Callable[[SearchSetup, BaseModel], Strategy]


class RegisteredStrategy(NamedTuple):
    """A strategy as registered: its builder and the schema of its `search.<name>`
    section. Calling it builds the strategy."""

    build: StrategyBuilder
    options: type[BaseModel]

    def __call__(self, setup: SearchSetup, options: BaseModel) -> Strategy:
        return self.build(setup, options)


BUILTIN_STRATEGIES = {
    "darts": "nasax.search.darts",
    "gdas": "nasax.search.gdas",
    "snas": "nasax.search.snas",
    "drnas": "nasax.search.drnas",
    "pcdarts": "nasax.search.pcdarts",
    "beta_darts": "nasax.search.beta_darts",
    "darts_minus": "nasax.search.darts_minus",
    "sdarts_rs": "nasax.search.sdarts",
    "random_ws": "nasax.search.random_ws",
    "enas": "nasax.search.enas",
    "evolution": "nasax.search.evolution",
    "zero_cost": "nasax.search.zero_cost",
}
"""The strategies nasax ships, by the module whose import registers each; a registry
imports one the first time its name is asked for, so `import nasax` loads none."""

STRATEGIES: Registry[RegisteredStrategy] = Registry("search strategy", BUILTIN_STRATEGIES)


def register_strategy(
    name: str, options: type[BaseModel]
) -> Callable[[StrategyBuilder], StrategyBuilder]:
    """Registers a strategy builder with the schema of its `search.<name>` config section."""

    def wrap(builder: StrategyBuilder) -> StrategyBuilder:
        STRATEGIES.register(name, RegisteredStrategy(builder, options))
        return builder

    return wrap


# ------------------------------------------------------------------ supernet state helpers


class Clock(NamedTuple):
    """Where a search step stands for its schedules: the step's index, and the epochs
    the schedules span (`search.epochs`, or fewer when the run loop fits the search to
    its time limit)."""

    step: jax.Array
    epochs: jax.Array


class SupernetState(NamedTuple):
    """Weights, BN statistics, architecture parameters, both optimizer states, and the
    epochs the architecture schedules span (a scalar, so the loop can fit them to a
    time limit and a checkpoint keeps them)."""

    step: jax.Array
    rng: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    arch: nnx.State
    weight_opt: optax.OptState
    arch_opt: optax.OptState
    epochs: jax.Array

    def stepped(
        self,
        params: nnx.State,
        batch_stats: nnx.State,
        arch: nnx.State,
        weight_opt: optax.OptState,
        arch_opt: optax.OptState,
    ) -> SupernetState:
        """The state after a step that computed these: the counter moves on, the rng (which
        the counter keys) and the schedules' span stay."""
        return self._replace(
            step=self.step + 1,
            params=params,
            batch_stats=batch_stats,
            arch=arch,
            weight_opt=weight_opt,
            arch_opt=arch_opt,
        )

    @property
    def clock(self) -> Clock:
        """The step and the schedules' span, as the strategies' schedules read them."""
        return Clock(self.step, self.epochs)


class FunctionalSupernet:
    """Functional access to a supernet: its graph and a forward over explicit state.

    Attributes:
        setup: the shared search setup.
        build: rngs -> a fresh network (`setup.network` with the strategy's options).
        graphdef: the network's structure, from the first `init` (or, before any, from
            an abstract build: the same structure without the 1-2 s that build costs
            a run that initialises anyway).
    """

    def __init__(self, setup: SearchSetup, build: Callable[[nnx.Rngs], SearchNetwork]) -> None:
        self.setup, self.build = setup, build
        self._graphdef: nnx.GraphDef | None = None

    @classmethod
    def create(cls, setup: SearchSetup, **network_options: Any) -> FunctionalSupernet:
        """A supernet of `setup`, built with `network_options` (e.g. `partial_channels`)."""

        def build(rngs: nnx.Rngs) -> SearchNetwork:
            return setup.network(rngs, **network_options)

        return (setup.functional or cls)(setup, build)

    @property
    def graphdef(self) -> nnx.GraphDef:
        if self._graphdef is None:
            abstract = nnx.eval_shape(lambda: self.build(nnx.Rngs(0)))
            self._graphdef, *_ = split_supernet(abstract)
        return self._graphdef

    def init(self, rng: jax.Array) -> SupernetState:
        """Fresh weights and alphas from `rng`, and both optimizers' states."""
        init_rng, state_rng = jax.random.split(rng)
        graphdef, arch, params, stats = split_supernet(self.build(nnx.Rngs(params=init_rng)))
        if self._graphdef is None:
            self._graphdef = graphdef
        return SupernetState(
            step=jnp.zeros((), jnp.int32),
            rng=state_rng,
            params=params,
            batch_stats=stats,
            arch=arch,
            weight_opt=self.setup.weight_optimizer.init(params),
            arch_opt=self.setup.arch_optimizer.init(arch),
            epochs=jnp.asarray(self.setup.epochs, jnp.int32),
        )

    def apply(
        self,
        params: nnx.State,
        batch_stats: nnx.State,
        arch: nnx.State,
        x: jax.Array,
        *,
        train: bool,
        forward: Forward = PLAIN_FORWARD,
    ) -> tuple[jax.Array, nnx.State]:
        """Logits and the updated BN statistics of a pass called with `forward`."""
        model = nnx.merge(self.graphdef, arch, params, batch_stats, copy=True)
        logits = model(x, train=train, **forward._asdict())
        return logits, nnx.state(model, nnx.BatchStat)

    def loss(
        self,
        params: nnx.State,
        batch_stats: nnx.State,
        arch: nnx.State,
        x: jax.Array,
        labels: jax.Array,
        forward: Forward = PLAIN_FORWARD,
    ) -> tuple[jax.Array, tuple[jax.Array, nnx.State]]:
        """Training-mode cross-entropy with (accuracy, updated BN statistics) as aux."""
        logits, stats = self.apply(params, batch_stats, arch, x, train=True, forward=forward)
        loss, accuracy = self.batch_metrics(logits, x, labels)
        return loss, (accuracy, stats)

    def batch_metrics(
        self, logits: jax.Array, x: Any, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Mean cross-entropy and accuracy of a pass's logits on input `x`."""
        return cross_entropy(logits, labels)

    def hits(self, logits: jax.Array, x: Any, labels: jax.Array) -> jax.Array:
        """Correct predictions of a pass on input `x` (a candidate cell's score)."""
        return jnp.sum(jnp.argmax(logits, -1) == labels)

    def count(self, batch: Batch) -> jax.Array | int:
        """The predictions `batch` asks for (what `hits` counts out of)."""
        return batch["label"].shape[0]

    def evaluate(
        self, state: SupernetState, batch: Batch, forward: Forward = PLAIN_FORWARD
    ) -> Metrics:
        """Summed loss and correct count over the real examples of a padded batch.

        A single-path forward (`paths=`) normalises with the batch's own statistics, as
        the candidate scorers do: the running statistics were gathered under whichever
        paths training sampled, fit none of them, and put a random cell at chance level.
        """
        x = self.setup.preprocess(batch, state.rng, False)
        batch_statistics = forward.paths is not None
        logits, _ = self.apply(
            state.params, state.batch_stats, state.arch, x, train=batch_statistics, forward=forward
        )
        return masked_sums(logits, batch["label"], batch["mask"])


def weight_update(
    setup: SearchSetup, state: SupernetState, grads: nnx.State
) -> tuple[nnx.State, optax.OptState]:
    """The weight optimizer's step, at the lr of the epochs the state spans: (new params,
    new optimizer state)."""
    updates, weight_opt = setup.weight_optimizer.update(grads, state.weight_opt, state.params)
    return optax.apply_updates(
        state.params, weight_updates_to_span(setup, state, updates)
    ), weight_opt


def weight_updates_to_span(setup: SearchSetup, state: SupernetState, updates: Any) -> Any:
    """The weight optimizer's `updates` rescaled to the lr of the epochs `state` spans."""
    if setup.weight_lr_ratio is None:
        return updates
    return _scaled(updates, setup.weight_lr_ratio(state.step, state.epochs))


def _scaled(updates: Any, ratio: jax.Array) -> Any:
    """An optimizer's `updates` times a scalar lr ratio (its update is proportional to its lr)."""
    return jax.tree.map(lambda u: u * ratio.astype(u.dtype), updates)


def arch_update(
    setup: SearchSetup, state: SupernetState, grads: nnx.State
) -> tuple[nnx.State, optax.OptState]:
    """The architecture optimizer's step, at the lr of the epochs the state spans when
    that lr scales with the search's steps: (new arch, new optimizer state)."""
    updates, arch_opt = setup.arch_optimizer.update(grads, state.arch_opt, state.arch)
    if setup.arch_lr_ratio is not None:
        updates = _scaled(updates, setup.arch_lr_ratio(state.epochs))
    return optax.apply_updates(state.arch, updates), arch_opt


def step_metrics(
    setup: SearchSetup,
    state: SupernetState,
    grads: nnx.State,
    train: tuple[jax.Array, jax.Array],
    val: tuple[jax.Array, jax.Array],
) -> Metrics:
    """The metrics every supernet strategy logs: (loss, accuracy) on both batches, the
    weight gradient's norm and the learning rate of this step."""
    return {
        "train_loss": train[0],
        "train_acc": train[1],
        "val_loss": val[0],
        "val_acc": val[1],
        "grad_norm": optax.tree.norm(grads),
        "lr": setup.weight_lr(state),
    }


def split_supernet(model: SearchNetwork) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    """(graphdef, arch, params, batch_stats); fails if any variable fits none of them."""
    return nnx.split(model, ArchParam, nnx.Param, nnx.BatchStat)


def softmax_weights(alphas: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """DARTS' op weights: the softmax of each edge's alphas."""
    return {kind: jax.nn.softmax(a, axis=-1) for kind, a in alphas.items()}


def alphas_of(arch: nnx.State) -> dict[str, jax.Array]:
    """Raw architecture parameters by cell kind ({"normal": ..., "reduce": ...} in DARTS)."""
    return _by_kind(arch, "alpha_")


def betas_of(arch: nnx.State) -> dict[str, jax.Array]:
    """PC-DARTS' raw edge scores by cell kind (empty without edge normalisation)."""
    return _by_kind(arch, "beta_")


def _by_kind(arch: nnx.State, prefix: str) -> dict[str, jax.Array]:
    """The arrays named `prefix<kind>` anywhere in `arch` (a wrapper nests them), by kind."""
    found: dict[str, jax.Array] = {}

    def walk(tree: Any) -> None:
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v)
            elif isinstance(k, str) and k.startswith(prefix):
                found[k.removeprefix(prefix)] = v

    walk(nnx.to_pure_dict(arch))
    return found


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (jnp.argmax(logits, -1) == labels).mean()
    return loss, accuracy
