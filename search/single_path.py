"""Single-path sampling on the shared supernet: random cells, their genotypes, and scoring.

A *path* assigns one op index to every edge of a cell kind (`none` on edges the cell
drops), so a forward with `paths=` runs only those ops. Random search, ENAS and
evolution all train and score architectures this way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from nasax.core.checkpoint import Checkpoints, flatten_state, unflatten_state
from nasax.core.errors import RunDirError
from nasax.loop.data import Batch
from nasax.search.discretize import derive_genotype
from nasax.search.strategy import (
    FunctionalSupernet,
    SearchSetup,
    SupernetState,
    step_metrics,
    weight_update,
)
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import Forward
from nasax.supernet.spaces import SearchSpace

if TYPE_CHECKING:
    from nasax.search.budget import Budget

Paths = dict[str, jax.Array]
"""Cell kind -> (edges,) op index per edge."""


def derivable_ops(space: SearchSpace) -> np.ndarray:
    """Indices of the ops a derived cell may hold on a kept edge."""
    return np.array([k for k, op in enumerate(space.ops) if op != "none" or space.derive_none])


def none_index(space: SearchSpace) -> int:
    """The op index that marks a dropped edge: the `none` op's. A recurrent space without
    one (`enas_rnn`) marks it one past its last op, which its cell runs as no edge; an
    image space that drops edges needs `none`."""
    if "none" in space.ops:
        return space.ops.index("none")
    if space.skeleton == "rnn":
        return space.n_ops
    raise ValueError(f"space {space.name!r} keeps some edges only, so it needs a 'none' op")


def sample_cell(rng: jax.Array, space: SearchSpace) -> jax.Array:
    """A uniformly random cell of `space` as (edges,) op indices; dropped edges get `none`.

    Each node keeps `edges_per_node` distinct incoming edges (all when None), and each
    kept edge one op drawn uniformly from the derivable ops, as a random genotype would.
    """
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
    return jnp.where(jnp.concatenate(kept), ops, none_index(space))


def path_sampler(space: SearchSpace, budget: Budget | None = None) -> Callable[[jax.Array], Paths]:
    """keys (n, 2) -> n random cells of every kind stacked (`sample_paths`), compiled:
    build it once per strategy, so a sampling at each selection does not recompile."""
    return jax.jit(jax.vmap(lambda key: sample_paths(key, space, space.cell_kinds, budget)))


SAMPLE_TRIES = 256
"""Draws a budgeted sample makes before it settles for the space's cheapest cell."""


def sample_paths(
    rng: jax.Array, space: SearchSpace, kinds: Iterable[str], budget: Budget | None = None
) -> Paths:
    """An independent random cell per cell kind; with a budget, a random cell within it
    (drawn again until one fits, the space's cheapest after `SAMPLE_TRIES` draws), so a
    budgeted sample is never over the target."""
    kinds = sorted(kinds)

    def draw(key: jax.Array) -> Paths:
        return {
            k: sample_cell(sub, space) for k, sub in zip(kinds, jax.random.split(key, len(kinds)))
        }

    first = draw(rng)
    if budget is None:
        return first

    def again(carry: tuple[jax.Array, Paths, jax.Array]) -> tuple[jax.Array, Paths, jax.Array]:
        key, _, tries = carry
        key, sub = jax.random.split(key)
        return key, draw(sub), tries + 1

    def over(carry: tuple[jax.Array, Paths, jax.Array]) -> jax.Array:
        _, paths, tries = carry
        return (~budget.fits(paths)) & (tries < SAMPLE_TRIES)

    _, paths, _ = jax.lax.while_loop(over, again, (rng, first, jnp.zeros((), jnp.int32)))
    _, cheapest = budget.table.cheapest(space)
    fits = budget.fits(paths)
    return {k: jnp.where(fits, paths[k], jnp.asarray(cheapest[k], paths[k].dtype)) for k in kinds}


def paths_genotype(paths: dict[str, np.ndarray], space: SearchSpace) -> Genotype:
    """The genotype a path sample stands for (its one-hot weights through the discretizer)."""
    one_hot = np.eye(space.n_ops + 1)[:, : space.n_ops]  # a dropped-edge mark past the ops: 0
    weights = {k: one_hot[np.asarray(p)] for k, p in paths.items()}
    return derive_genotype(weights, space)


def genotype_paths(genotype: Genotype, space: SearchSpace) -> dict[str, np.ndarray]:
    """The path of each cell kind of `genotype` (the inverse of `paths_genotype`)."""
    genotype.validate(space, searched=True)
    paths = {}
    for kind in space.cell_kinds:
        path = np.full(space.n_edges, 0 if space.edges_per_node is None else none_index(space))
        for node, pairs in enumerate(genotype.cell(kind)[0]):
            edges = space.node_edges(node)
            for op, src in pairs:
                path[edges[src]] = space.ops.index(op)
        paths[kind] = path
    return paths


def path_scorer(
    net: FunctionalSupernet, setup: SearchSetup
) -> Callable[[SupernetState, Paths, Batch], jax.Array]:
    """score(state, stacked paths, batch) -> correct predictions of each path on the batch.

    Compiled with `setup.jit`; the candidates run one after another in a `lax.map`. BN
    uses the batch's statistics: the running statistics are shared by all paths and fit
    none of them.
    """

    @setup.jit
    def score(state: SupernetState, candidates: Paths, batch: Batch) -> jax.Array:
        x = setup.preprocess(batch, state.rng, False)

        def correct(paths: Paths) -> jax.Array:
            logits, _ = net.apply(
                state.params,
                state.batch_stats,
                state.arch,
                x,
                train=True,
                forward=Forward(paths=paths),
            )
            return net.hits(logits, x, batch["label"])

        return jax.lax.map(correct, candidates)

    return score


def scored_part(batch: Batch) -> Batch:
    """A batch without the padding mask of evaluation batches, which scorers do not read
    (so padded and full batches share one program)."""
    return {k: v for k, v in batch.items() if k != "mask"}


def train_path_step(
    net: FunctionalSupernet,
    state: SupernetState,
    train: Batch,
    val: Batch,
    paths: Paths,
    val_paths: Paths,
) -> tuple[SupernetState, dict[str, jax.Array]]:
    """One weight step of the cell `paths` on the training batch, and (for the log only)
    the loss of the cell `val_paths` on the validation batch with the new weights."""
    setup = net.setup
    train_rng, val_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    x_train = setup.preprocess(train, train_rng, True)
    grad_fn = jax.value_and_grad(net.loss, has_aux=True)
    (train_loss, (train_acc, stats)), grads = grad_fn(
        state.params, state.batch_stats, state.arch, x_train, train["label"], Forward(paths=paths)
    )
    params, weight_opt = weight_update(setup, state, grads)
    x_val = setup.preprocess(val, val_rng, True)
    logits, _ = net.apply(
        params, state.batch_stats, state.arch, x_val, train=True, forward=Forward(paths=val_paths)
    )
    val_loss, val_acc = net.batch_metrics(logits, x_val, val["label"])
    metrics = step_metrics(setup, state, grads, (train_loss, train_acc), (val_loss, val_acc))
    new_state = state._replace(
        step=state.step + 1, params=params, batch_stats=stats, weight_opt=weight_opt
    )
    return new_state, metrics


def load_supernet_weights(directory: Path, state: SupernetState) -> SupernetState:
    """`state` with the weights and BN statistics of the latest checkpoint in `directory`
    (a search run's checkpoints/, of any single-path or supernet strategy)."""
    checkpoints = Checkpoints(directory)
    try:
        step = checkpoints.latest_step()
        if step is None:
            raise RunDirError(f"{directory} holds no complete checkpoint to take weights from")
        saved, _ = checkpoints.restore_flat(step)
    finally:
        checkpoints.close()
    saved = {k.removeprefix("net/"): v for k, v in dict(saved).items()}
    wanted = {"params": state.params, "batch_stats": state.batch_stats}
    loaded = {}
    for field, tree in wanted.items():
        flat = {f"{field}/{k}": v for k, v in flatten_state(tree).items()}
        missing = [k for k in flat if k not in saved]
        wrong = [k for k in flat if k in saved and np.shape(saved[k]) != np.shape(flat[k])]
        if missing or wrong:
            bad = (missing or wrong)[0]
            raise RunDirError(
                f"the checkpoint in {directory} does not fit this supernet ({bad!r} is "
                f"{'missing' if missing else 'shaped differently'}); use a run of the same "
                "model.space, model.channels, model.layers and data"
            )
        loaded[field] = unflatten_state(
            {k.removeprefix(f"{field}/"): jnp.asarray(saved[k]) for k in flat}, tree
        )
    return state._replace(**loaded)


def uniform_path_step(
    net: FunctionalSupernet, state: SupernetState, train: Batch, val: Batch
) -> tuple[SupernetState, dict[str, jax.Array]]:
    """`train_path_step` on a uniformly random cell, with another one for the validation
    log (random search with weight sharing, and evolution's supernet training)."""
    space = net.setup.space
    train_key, val_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    paths = sample_paths(train_key, space, space.cell_kinds)
    return train_path_step(
        net, state, train, val, paths, sample_paths(val_key, space, space.cell_kinds)
    )


def best_candidate(
    score: Callable[[SupernetState, Paths, Batch], jax.Array],
    state: SupernetState,
    candidates: Paths,
    batches: Iterable[Batch],
    n_batches: int,
    space: SearchSpace,
    budget: Budget | None = None,
) -> Genotype:
    """The genotype of the stacked candidate that predicts most of `n_batches` batches;
    with a budget, of those within it (the space's cheapest cell if none is)."""
    if budget is not None:
        fits = np.asarray(jax.vmap(budget.fits)(candidates))
        if not fits.any():
            return paths_genotype(budget.table.cheapest(space)[1], space)
    totals = sum(
        np.asarray(score(state, candidates, scored_part(b)), np.float64)
        for b in islice(batches, n_batches)
    )
    if budget is not None:
        totals = np.where(fits, totals, -np.inf)
    best = int(np.argmax(totals))
    return paths_genotype({k: np.asarray(p[best]) for k, p in candidates.items()}, space)
