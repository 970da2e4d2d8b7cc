"""What a cell costs at the size it will be deployed: tables of prices per edge and op.

A network's cost is a fixed part (stem, preprocessing, reductions, head) plus, for every
edge of every cell, the price of the op on it at that edge's shape (`supernet` sites).
Summed over the cells of one kind, a metric is one (edges, ops) table per cell kind,
so a genotype's cost is a lookup and the expected cost under op weights is a weighted
sum, differentiable in the architecture parameters (ProxylessNAS, FBNet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from nasax.supernet.genotypes import Genotype
from nasax.supernet.spaces import SearchSpace

Metric = Literal["params", "flops", "latency"]

UNITS: dict[str, str] = {"params": "parameters", "flops": "FLOPs", "latency": "ms"}
"""The unit of each metric's figures (latency in milliseconds)."""


@dataclass(frozen=True)
class CostTable:
    """One metric's prices for a space at one deployed size.

    Attributes:
        metric: "params", "flops" or "latency".
        fixed: the cost of everything but the cells' edges.
        ops: cell kind -> (edges, ops) price of each op on each edge, summed over the
            cells of that kind (`none` costs 0).
        space: the space's name.
        constant: the cost of a network that computes a constant (its cells' output
            depends on no input, so XLA folds it).
    """

    metric: str
    fixed: float
    ops: Mapping[str, np.ndarray]
    space: str
    constant: float = 0.0

    def of_paths(self, paths: Mapping[str, Any]) -> jax.Array:
        """The cost of a cell given as op indices per edge (`none` on dropped edges);
        works on host arrays and traced ones alike."""
        total = jnp.asarray(self.fixed, jnp.float32)
        for kind, table in self.ops.items():
            path = jnp.asarray(paths[kind])
            total = total + jnp.sum(jnp.take_along_axis(jnp.asarray(table), path[:, None], 1))
        return total

    def of_genotype(self, genotype: Genotype, space: SearchSpace) -> float:
        """The cost of the network a genotype of `space` deploys as. Parameters count
        every edge; the other metrics only the edges that compute (`live_edges`), as
        XLA drops or folds the rest, and a network whose cells' output does not depend
        on their input costs `constant` (NAS-Bench-201 cells cut off by `none`)."""
        genotype.validate(space, searched=True)
        total = float(self.fixed)
        for kind, table in self.ops.items():
            nodes = genotype.cell(kind)[0]
            live = None if self.metric == "params" else live_edges(nodes, space)
            if live is not None and not live:
                return float(self.constant)
            for node, pairs in enumerate(nodes):
                edges = space.node_edges(node)
                total += sum(
                    float(table[edges[src], space.ops.index(op)])
                    for op, src in pairs
                    if live is None or (node, src) in live
                )
        return total

    def expected(
        self,
        weights: Mapping[str, jax.Array],
        space: SearchSpace,
        edge_weights: Mapping[str, jax.Array] | None = None,
    ) -> jax.Array:
        """The expected cost under per-kind (edges, ops) op weights; differentiable.

        Where every edge is kept (NAS-Bench-201) an edge costs its ops' weighted prices.
        Where a node keeps k of its edges and never `none` (DARTS), an edge costs its
        non-`none` ops' prices under the weights renormalised without `none`, and counts
        k times its share of the node's strength (1 - weight of `none`, times the edge
        weight where the strategy has one). One-hot weights of a cell (`none` on the
        dropped edges) give exactly the cell's cost.
        """
        total = jnp.asarray(self.fixed, jnp.float32)
        for kind, table in self.ops.items():
            w = weights[kind]
            table = jnp.asarray(table, w.dtype)
            if space.edges_per_node is None or "none" not in space.ops:
                total = total + jnp.sum(w * table)
                continue
            none = space.ops.index("none")
            keep = 1.0 - w[:, none]
            price = (jnp.sum(w * table, axis=1) - w[:, none] * table[:, none]) / jnp.maximum(
                keep, 1e-12
            )
            strength = keep if edge_weights is None else keep * edge_weights[kind]
            for node in range(space.n_nodes):
                ids = space.node_edges(node)
                s = strength[ids.start : ids.stop]
                share = space.edges_per_node * s / jnp.maximum(jnp.sum(s), 1e-12)
                total = total + jnp.sum(share * price[ids.start : ids.stop])
        return total

    def cheapest(self, space: SearchSpace) -> tuple[float, dict[str, np.ndarray]]:
        """(cost, paths) of the space's cheapest cell by `of_paths`, the measure the
        discretizer's limit and the samplers keep to: per node its cheapest kept edges,
        each with its cheapest op a derived cell may hold."""
        ops = [k for k, op in enumerate(space.ops) if op != "none" or space.derive_none]
        none = space.ops.index("none") if "none" in space.ops else 0
        total, paths = float(self.fixed), {}
        for kind, table in self.ops.items():
            path = np.full(space.n_edges, none)
            for node in range(space.n_nodes):
                ids = list(space.node_edges(node))
                best = {e: ops[int(np.argmin(table[e, ops]))] for e in ids}
                keep = sorted(ids, key=lambda e: table[e, best[e]])
                for e in keep[: space.edges_per_node or len(ids)]:
                    path[e] = best[e]
                    total += float(table[e, best[e]])
            paths[kind] = path
        return total, paths

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "space": self.space,
            "fixed": self.fixed,
            "ops": {k: np.asarray(v).tolist() for k, v in self.ops.items()},
            "constant": self.constant,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CostTable:
        ops = {k: np.asarray(v, np.float64) for k, v in data["ops"].items()}
        return cls(
            data["metric"], float(data["fixed"]), ops, data["space"], float(data["constant"])
        )


def live_edges(nodes: tuple, space: SearchSpace) -> set[tuple[int, int]]:
    """The (node, input) edges of a cell that compute: not `none`, fed by a state that
    depends on the cell's inputs, and feeding one the output depends on (where `none`
    is never derived, every edge). Empty when the output depends on no input."""
    edges = {(n, src) for n, pairs in enumerate(nodes) for op, src in pairs if op != "none"}
    reached = set(range(space.n_inputs))
    for n in range(space.n_nodes):
        if any((n, src) in edges and src in reached for src in range(space.n_inputs + n)):
            reached.add(space.n_inputs + n)
    used = set(space.concat) & reached
    for n in reversed(range(space.n_nodes)):
        if space.n_inputs + n in used:
            used |= {src for node, src in edges if node == n and src in reached}
    live = {(n, src) for n, src in edges if space.n_inputs + n in used and src in reached}
    return live if used else set()


def format_cost(metric: str, value: float) -> str:
    """A cost for people: 3.35 M parameters, 574.3 MFLOPs, 12.40 ms."""
    if metric == "params":
        return f"{value / 1e6:.3f} M parameters"
    if metric == "flops":
        return f"{value / 1e6:.1f} MFLOPs"
    return f"{value:.2f} ms"
