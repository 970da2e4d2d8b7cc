"""Random search with weight sharing (Li & Talwalkar, 2019).

The supernet trains on uniformly sampled architectures, one per step, each edge running
only its sampled op. Selection samples `candidates` random architectures, scores each
with the shared weights on the same validation batches, and keeps the best.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nasax.data import Batch
from nasax.search.discretize import derive_genotype
from nasax.search.strategy import (
    Metrics,
    SearchSetup,
    Strategy,
    Supernet,
    SupernetState,
    alphas_of,
    cross_entropy,
    register_strategy,
    step_metrics,
    weight_update,
)
from nasax.supernet.genotypes import Genotype
from nasax.supernet.spaces import SearchSpace

_EVAL_CELL = 0x5E1EC7
"""Folded into the state's key to draw the cell that `evaluate` and `derive` use."""

Paths = dict[str, jax.Array]
"""Cell kind -> (edges,) op index per edge."""


class RandomWsOptions(BaseModel):
    """The `search.random_ws` section."""

    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(100, ge=1, description="random architectures ranked at the end")
    select_batches: int = Field(10, ge=1, description="validation batches that score each one")


def derivable_ops(space: SearchSpace) -> np.ndarray:
    """Indices of the ops a derived cell may hold on a kept edge."""
    return np.array([k for k, op in enumerate(space.ops) if op != "none" or space.derive_none])


def sample_cell(rng: jax.Array, space: SearchSpace) -> jax.Array:
    """A uniformly random cell of `space` as (edges,) op indices; dropped edges get `none`.

    Each node keeps `edges_per_node` distinct incoming edges (all when None), and each
    kept edge one op drawn uniformly from the derivable ops, as a random genotype would.
    """
    none = space.ops.index("none") if "none" in space.ops else -1
    choices = jnp.asarray(derivable_ops(space))
    op_key, edge_key = jax.random.split(rng)
    ops = choices[jax.random.randint(op_key, (space.n_edges,), 0, len(choices))]
    if space.edges_per_node is None:
        return ops
    kept = []
    for node, key in enumerate(jax.random.split(edge_key, space.n_nodes)):
        edges = space.node_edges(node)
        order = jax.random.permutation(key, len(edges))
        kept.append(jnp.zeros(len(edges), bool).at[order[: space.edges_per_node]].set(True))
    return jnp.where(jnp.concatenate(kept), ops, none)


def sample_paths(rng: jax.Array, space: SearchSpace, kinds: Iterable[str]) -> Paths:
    """An independent random cell per cell kind."""
    kinds = sorted(kinds)
    return {k: sample_cell(key, space) for k, key in zip(kinds, jax.random.split(rng, len(kinds)))}


def paths_genotype(paths: dict[str, np.ndarray], space: SearchSpace) -> Genotype:
    """The genotype a path sample stands for (its one-hot weights through the discretizer)."""
    weights = {k: np.eye(space.n_ops)[np.asarray(p)] for k, p in paths.items()}
    return derive_genotype(weights, space)


@register_strategy("random_ws", RandomWsOptions)
def make_random_ws(setup: SearchSetup, options: RandomWsOptions) -> Strategy:
    """Builds random search with weight sharing over the supernet of `setup`."""
    net = Supernet.create(setup)
    space = setup.space

    def kinds(state: SupernetState) -> list[str]:
        return list(alphas_of(state.arch))

    def step(state: SupernetState, train: Batch, val: Batch) -> tuple[SupernetState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        train_rng, val_rng, train_path, val_path = jax.random.split(rng, 4)
        x_train = setup.preprocess(train["image"], train_rng, True)
        paths = sample_paths(train_path, space, kinds(state))
        grad_fn = jax.value_and_grad(net.loss, has_aux=True)
        (train_loss, (train_acc, stats)), grads = grad_fn(
            state.params, state.batch_stats, state.arch, x_train, train["label"], paths=paths
        )
        params, weight_opt = weight_update(setup, state, grads)
        # A forward of another random cell on the validation batch, for the log only.
        x_val = setup.preprocess(val["image"], val_rng, True)
        logits, _ = net.apply(
            params,
            state.batch_stats,
            state.arch,
            x_val,
            train=True,
            paths=sample_paths(val_path, space, kinds(state)),
        )
        val_loss, val_acc = cross_entropy(logits, val["label"])
        metrics = step_metrics(setup, state, grads, (train_loss, train_acc), (val_loss, val_acc))
        new_state = state._replace(
            step=state.step + 1, params=params, batch_stats=stats, weight_opt=weight_opt
        )
        return new_state, metrics

    def evaluate(state: SupernetState, batch: Batch) -> Metrics:
        """Test metrics of one random cell (fixed per state) with the shared weights."""
        paths = sample_paths(jax.random.fold_in(state.rng, _EVAL_CELL), space, kinds(state))
        return net.evaluate(state, batch, paths=paths)

    @jax.jit
    def score(state: SupernetState, candidates: Paths, batch: Batch) -> jax.Array:
        """Correct predictions of every candidate on `batch` (batch statistics in BN,
        since running statistics are shared by all paths and fit none of them)."""
        x = setup.preprocess(batch["image"], state.rng, False)

        def correct(paths: Paths) -> jax.Array:
            logits, _ = net.apply(
                state.params, state.batch_stats, state.arch, x, train=True, paths=paths
            )
            return jnp.sum(jnp.argmax(logits, -1) == batch["label"])

        return jax.lax.map(correct, candidates)

    def select(state: SupernetState, batches: Iterable[Batch]) -> Genotype:
        keys = jax.random.split(jax.random.fold_in(state.rng, state.step), options.candidates)
        candidates = jax.vmap(lambda key: sample_paths(key, space, kinds(state)))(keys)
        totals = sum(
            np.asarray(score(state, candidates, {"image": b["image"], "label": b["label"]}))
            for b in islice(batches, options.select_batches)
        )
        best = int(np.argmax(totals))
        return paths_genotype({k: np.asarray(p[best]) for k, p in candidates.items()}, space)

    def derive(state: SupernetState) -> Genotype:
        """Without validation data: the cell `evaluate` scores."""
        paths = sample_paths(jax.random.fold_in(state.rng, _EVAL_CELL), space, kinds(state))
        return paths_genotype({k: np.asarray(p) for k, p in paths.items()}, space)

    return Strategy(
        init=net.init,
        step=step,
        evaluate=evaluate,
        derive=derive,
        arch_weights=lambda state: {},
        select=select,
    )
