"""Search spaces as data: which ops an edge may hold and how a cell's nodes connect."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from nasax.registry import Registry


@dataclass(frozen=True)
class SearchSpace:
    """A cell search space.

    A cell has `n_inputs` input nodes and `n_nodes` intermediate nodes; intermediate node
    `i` has an edge from every earlier node (inputs and intermediates), so edges are
    numbered node by node, source by source, as in the DARTS reference.

    Attributes:
        name: registry name, recorded in genotypes so they can be checked against it.
        ops: candidate op names (keys of the op registry); `none` is the zero op.
        n_inputs: input nodes of a cell (2 in DARTS: the two previous cells).
        n_nodes: intermediate nodes.
        edges_per_node: incoming edges a derived cell keeps per node (None: all of them).
        pool_norms: mixed edges follow pooling ops with a non-affine BatchNorm (DARTS).
        derive_none: a derived cell may hold `none` on an edge (NAS-Bench-201).
    """

    name: str
    ops: tuple[str, ...]
    n_inputs: int = 2
    n_nodes: int = 4
    edges_per_node: int | None = 2
    pool_norms: bool = True
    derive_none: bool = False

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(node, source) per edge; node counts intermediate nodes from 0, sources all nodes."""
        return tuple(
            (node, src) for node in range(self.n_nodes) for src in range(self.n_inputs + node)
        )

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_ops(self) -> int:
        return len(self.ops)

    def node_edges(self, node: int) -> range:
        """Indices of the edges entering intermediate node `node`."""
        start = sum(self.n_inputs + k for k in range(node))
        return range(start, start + self.n_inputs + node)


SPACES: Registry[SearchSpace] = Registry("search space")

DARTS_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

DARTS_SPACE = SPACES.register("darts", SearchSpace(name="darts", ops=DARTS_OPS))


def get_space(name: str) -> SearchSpace:
    """Looks a search space up by name."""
    return SPACES.get(name)
