"""A search's budget (`search.cost`): the cost table it is priced with, the term the
relaxed strategies add to their architecture loss, the limit sampling strategies and
the discretizer keep to, and ENAS' reward shaping."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from nasax.core.config import Config, CostConfig
from nasax.core.errors import ConfigError
from nasax.loop.data import Dataset
from nasax.search.costs import CostTable, format_cost
from nasax.search.discretize import Limit
from nasax.search.profiling import Deploy, load_profile, network_ms, profile_space
from nasax.search.strategy import alphas_of, betas_of
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import node_softmax
from nasax.supernet.skeletons import skeleton_of
from nasax.supernet.spaces import SearchSpace, get_space

LOG_UNITS = {"params": 1e6, "flops": 1e6, "latency": 1.0}
"""The unit the log form takes the cost in: millions of parameters or FLOPs, ms."""


@dataclass(frozen=True)
class Budget:
    """The budget of a search: a cost table and how the search treats it."""

    table: CostTable
    space: SearchSpace
    options: CostConfig

    @property
    def target(self) -> float:
        return self.options.target

    @property
    def limit(self) -> Limit:
        return Limit(self.table, self.options.target)

    def expected(
        self, weights: Mapping[str, jax.Array], edge_weights: Mapping[str, jax.Array] | None = None
    ) -> jax.Array:
        """The expected cost under op weights (`CostTable.expected`)."""
        return self.table.expected(weights, self.space, edge_weights)

    def loss_factor(self, cost: jax.Array, loss: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(scale on the loss's gradient, derivative of the objective in the cost) of the
        architecture objective with the cost term: `loss + weight * max(0, cost/target -
        1)` (hinge), `loss + weight * cost/target` (linear), or FBNet's `loss * weight *
        log(1 + cost/unit)^exponent` (log; 1 + keeps costs under one unit defined)."""
        o = self.options
        if o.form == "hinge":
            return jnp.ones(()), o.weight / o.target * (cost > o.target).astype(cost.dtype)
        if o.form == "linear":
            return jnp.ones(()), jnp.asarray(o.weight / o.target, cost.dtype)
        unit = LOG_UNITS[o.metric]
        log = jnp.log1p(cost / unit)
        factor = o.weight * log**o.exponent
        slope = o.weight * o.exponent * log ** (o.exponent - 1) / (unit + cost)
        return factor, loss * slope

    def penalty(self, cost: jax.Array, loss: jax.Array) -> jax.Array:
        """The objective's value less `loss` (for the log: `loss * (factor - 1)`)."""
        o = self.options
        if o.form == "hinge":
            return o.weight * jnp.maximum(cost / o.target - 1.0, 0.0)
        if o.form == "linear":
            return o.weight * cost / o.target
        factor, _ = self.loss_factor(cost, loss)
        return loss * (factor - 1.0)

    def fits(self, paths: Mapping[str, Any]) -> jax.Array:
        """Whether a cell given as op indices per edge costs at most the target."""
        return self.table.of_paths(paths) <= self.options.target

    def reward(self, accuracy: jax.Array, cost: jax.Array) -> jax.Array:
        """MnasNet's reward: `accuracy * (cost/target)^w`, w = `reward_exponent` over the
        target and 0 under it with the hinge form (a soft constraint at every cost
        otherwise)."""
        o = self.options
        over = cost > o.target
        w = jnp.where(over | (o.form != "hinge"), o.reward_exponent, 0.0)
        return accuracy * (cost / o.target) ** w


def with_budget(
    budget: Budget | None,
    arch: Any,
    grads: Any,
    loss: jax.Array,
    op_weights: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
) -> tuple[Any, dict[str, jax.Array]]:
    """(gradient of the architecture objective with the cost term, metrics) from the
    loss's gradient `grads`: the cost depends on the alphas only, so its term's gradient
    adds (or, for the log form, combines) without another pass through the network.
    The metrics (`budget_metrics`) are the expected cost and the term's value.

    `op_weights` maps alphas by kind to the op weights the strategy derives from (the
    softmax in DARTS); edge weights come from the betas where the supernet has them.
    """
    if budget is None:
        return grads, {}

    def cost(arch: Any) -> jax.Array:
        return budget.expected(op_weights(alphas_of(arch)), _edge_weights(budget, arch))

    value, vjp = jax.vjp(cost, arch)
    scale, slope = budget.loss_factor(value, loss)
    (dcost,) = vjp(slope.astype(value.dtype))
    grads = jax.tree.map(lambda g, d: scale * g + d, grads, dcost)
    return grads, {"expected_cost": value, "budget_penalty": budget.penalty(value, loss)}


def budget_metrics(
    budget: Budget | None,
    arch: Any,
    op_weights: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
    loss: jax.Array,
) -> dict[str, jax.Array]:
    """The architecture `arch`'s `expected_cost` and `budget_penalty`, the value the
    cost term adds to the architecture objective `loss` (nothing without a budget)."""
    if budget is None:
        return {}
    value = budget.expected(op_weights(alphas_of(arch)), _edge_weights(budget, arch))
    return {"expected_cost": value, "budget_penalty": budget.penalty(value, loss)}


def _edge_weights(budget: Budget, arch: Any) -> dict[str, jax.Array] | None:
    betas = betas_of(arch)
    return {k: node_softmax(b, budget.space) for k, b in betas.items()} or None


def deploy_of(config: Config, dataset: Dataset) -> Deploy:
    """The deployed network of a search: `search.cost.deploy`, where it is silent the
    skeleton's published network, at the data's image size."""
    space = get_space(config.model.space)
    defaults = skeleton_of(space).discrete_network.defaults
    given = config.search.cost.deploy if config.search.cost else None
    h, w, c = dataset.image_shape
    side = given.image_size if given and given.image_size else None
    return Deploy(
        channels=(given and given.channels) or defaults["channels"],
        layers=(given and given.layers) or defaults["layers"],
        image_size=(side, side) if side else (h, w),
        in_channels=c,
        num_classes=dataset.num_classes,
    )


def make_budget(config: Config, dataset: Dataset) -> Budget | None:
    """The search's budget, priced at its deployed network (latency from
    `search.cost.table`, else timed here and kept); None without `search.cost`.

    Raises:
        ConfigError: in one line, when the table is for another space or size, or
            when no cell of the space meets the target.
    """
    options = config.search.cost
    if options is None:
        return None
    space = get_space(config.model.space)
    deploy = deploy_of(config, dataset)
    if options.metric == "latency" and options.table is not None:
        profile = load_profile(options.table)
        if profile.space != space.name or profile.deploy != deploy:
            raise ConfigError(
                f"search.cost.table: {options.table} prices space {profile.space!r} at "
                f"{_size_text(profile.deploy)}, but this search deploys space {space.name!r} "
                f"at {_size_text(deploy)}; profile this config with `nasax profile`"
            )
    else:
        batches = [options.batch_size] if options.metric == "latency" else []
        profile = profile_space(space, deploy, batches)
    table = profile.table(options.metric, options.batch_size)
    cheapest, _ = table.cheapest(space)
    if cheapest > options.target:
        raise ConfigError(
            f"search.cost.target: no cell of space {space.name!r} fits "
            f"{format_cost(options.metric, options.target)} at {_size_text(deploy)}; the "
            f"cheapest costs {format_cost(options.metric, cheapest)}: raise the target or "
            "set a smaller search.cost.deploy"
        )
    return Budget(table, space, options)


def cell_costs(
    genotype: Genotype, budget: Budget, deploy: Deploy, *, measure: bool = False
) -> dict[str, Any]:
    """A cell's figures at the deployed size: parameters and FLOPs per image, latency
    as the budget's table predicts it (a latency budget), and as measured on this
    machine at the budget's batch size (`measure`)."""
    space = budget.space
    static = profile_space(space, deploy, [])
    figures: dict[str, Any] = {
        "metric": budget.options.metric,
        "target": budget.target,
        "deploy": deploy.to_json(),
        "params": int(static.table("params").of_genotype(genotype, space)),
        "flops": static.table("flops").of_genotype(genotype, space),
        "within_target": budget.table.of_genotype(genotype, space) <= budget.target,
    }
    batch = budget.options.batch_size
    figures["latency_batch_size"] = batch
    if budget.options.metric == "latency":
        figures["latency_ms_predicted"] = budget.table.of_genotype(genotype, space)
    if measure:
        figures["latency_ms_measured"] = network_ms(genotype, deploy, batch)
    return figures


def _size_text(deploy: Deploy) -> str:
    h, w = deploy.image_size
    return f"C{deploy.channels} L{deploy.layers} {h}x{w}"
