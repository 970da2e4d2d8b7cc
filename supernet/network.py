"""The search network: a stem, a stack of cells with mixed edges, a classifier."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.blocks import block
from nasax.supernet.cells import Cell, MixedEdge, plan_cells
from nasax.supernet.ops import BatchNorm, Conv, param_keys, torch_default_init
from nasax.supernet.spaces import SearchSpace

CELL_KINDS = ("normal", "reduce")


class ArchParam(nnx.Variable):
    """Architecture parameters: their own variable type, so `nnx.Param` never picks them up."""


def linear(c_in: int, c_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    """A linear layer with PyTorch's default initialisation."""
    bound = 1.0 / c_in**0.5
    return nnx.Linear(
        c_in,
        c_out,
        kernel_init=torch_default_init,
        bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound
        ),
        rngs=rngs,
    )


class Stem(nnx.Module):
    """3x3 conv to `stem_multiplier * C` channels and an affine BatchNorm."""

    def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs) -> None:
        self.conv = Conv(c_in, c_out, 3, padding=1, rngs=rngs)
        self.bn = BatchNorm(c_out, True)

    @block
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(self.conv(x), train)


class SearchNetwork(nnx.Module):
    """The DARTS supernet: every cell edge mixes all ops of `space`.

    Architecture parameters `alpha_normal` and `alpha_reduce` (edges x ops) are
    `ArchParam` variables shared by all cells of a kind. Call with `weights` to use op
    weights a strategy computed (sampled, normalised, ...); by default they are the
    softmax of the alphas.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        channels: int,
        layers: int,
        num_classes: int,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        partial_channels: int = 1,
        edge_normalization: bool = False,
        aux_skip: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        if space.skeleton != "darts":
            raise ValueError(
                f"SearchNetwork stacks DARTS cells; space {space.name!r} uses the "
                f"{space.skeleton!r} skeleton: build it with "
                "nasax.supernet.skeleton_of(space).search_network"
            )
        rngs = param_keys(rngs)
        self.space = space
        self.stem = Stem(in_channels, stem_multiplier * channels, rngs)
        nodes = space.n_nodes
        concat = tuple(range(space.n_inputs, space.n_inputs + nodes))

        def make_edge(i: int, c: int, stride: int, rngs: nnx.Rngs) -> MixedEdge:
            return MixedEdge(
                space.ops,
                c,
                stride,
                rngs,
                partial_channels=partial_channels,
                pool_norms=space.pool_norms,
                aux_skip=aux_skip,
            )

        plans = plan_cells(stem_multiplier * channels, channels, layers, nodes)
        self.cells = nnx.List(
            [Cell(plan, space.edges, make_edge, concat, False, rngs) for plan in plans]
        )
        self.classifier = linear(nodes * plans[-1].channels, num_classes, rngs)
        shape = (space.n_edges, space.n_ops)
        self.alpha_normal = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape))
        self.alpha_reduce = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape))
        if edge_normalization:
            self.beta_normal = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape[:1]))
            self.beta_reduce = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape[:1]))
        self.edge_normalization = edge_normalization

    def alphas(self) -> dict[str, jax.Array]:
        """The architecture parameters by cell kind."""
        return {"normal": self.alpha_normal[...], "reduce": self.alpha_reduce[...]}

    def edge_weights(self) -> dict[str, jax.Array]:
        """PC-DARTS' edge weights: the betas softmaxed over the edges entering each node."""
        return {
            kind: node_softmax(getattr(self, f"beta_{kind}")[...], self.space)
            for kind in CELL_KINDS
        }

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        weights: dict[str, jax.Array] | None = None,
        paths: dict[str, jax.Array] | None = None,
        edge_weights: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """Logits for NHWC images `x`.

        Args:
            x: NHWC images.
            train: training mode.
            weights: cell kind -> (edges, ops) op weights; default: softmax of the alphas.
                With `paths` it may be None (each edge runs its path op as is).
            paths: cell kind -> (edges,) op index per edge: single-path forward.
            edge_weights: cell kind -> (edges,) edge factors; default: the normalised
                betas when the network was built with `edge_normalization`.
        """
        if weights is None and paths is None:
            weights = {kind: jax.nn.softmax(a, axis=-1) for kind, a in self.alphas().items()}
        if edge_weights is None and self.edge_normalization:
            edge_weights = self.edge_weights()
        s0 = s1 = self.stem(x, train)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = (
                s1,
                cell(
                    s0,
                    s1,
                    None if weights is None else weights[kind],
                    train,
                    paths=None if paths is None else paths[kind],
                    edge_weights=None if edge_weights is None else edge_weights[kind],
                ),
            )
        return self.classifier(jnp.mean(s1, axis=(1, 2)))


def node_softmax(beta: jax.Array, space: SearchSpace) -> jax.Array:
    """Softmax of per-edge scores over the edges that enter the same node."""
    return jnp.concatenate(
        [
            jax.nn.softmax(beta[edges.start : edges.stop])
            for edges in map(space.node_edges, range(space.n_nodes))
        ]
    )
