"""DARTS' macro skeleton (`DartsStack`) and its supernet; what every supernet adds to its
skeleton (`Supernet`: architecture parameters); pieces all networks share."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.blocks import block
from nasax.supernet.cells import Cell, CellPlan, MixedEdge, plan_cells
from nasax.supernet.ops import BatchNorm, Conv, ParamKeys, param_keys, torch_default_init
from nasax.supernet.spaces import SearchSpace


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


def mixed_edges(
    space: SearchSpace, *, partial_channels: int = 1, aux_skip: bool = False
) -> Callable[[int, int, int, nnx.Rngs], MixedEdge]:
    """`make_edge` for a supernet's cells: every edge mixes all ops of `space` (with
    PC-DARTS' partial channels, or DARTS-' auxiliary skip, as asked)."""

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

    return make_edge


class SupernetMixin(nnx.Module):
    """What every supernet adds to its skeleton: architecture parameters per cell kind.

    `alpha_<kind>` (edges x ops) is shared by all cells of that kind; `beta_<kind>`
    (edges) exists with `edge_normalization` (PC-DARTS). Both are `ArchParam` variables.
    """

    space: SearchSpace
    edge_normalization: bool

    def _arch_params(self, space: SearchSpace, edge_normalization: bool, rngs: ParamKeys) -> None:
        shape = (space.n_edges, space.n_ops)
        for kind in space.cell_kinds:
            setattr(
                self, f"alpha_{kind}", ArchParam(1e-3 * jax.random.normal(rngs.params(), shape))
            )
        if edge_normalization:
            for kind in space.cell_kinds:
                beta = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape[:1]))
                setattr(self, f"beta_{kind}", beta)
        self.space, self.edge_normalization = space, edge_normalization

    def alphas(self) -> dict[str, jax.Array]:
        """The architecture parameters by cell kind."""
        return {kind: getattr(self, f"alpha_{kind}")[...] for kind in self.space.cell_kinds}

    def edge_weights(self) -> dict[str, jax.Array]:
        """PC-DARTS' edge weights: the betas softmaxed over the edges entering each node."""
        return {
            kind: node_softmax(getattr(self, f"beta_{kind}")[...], self.space)
            for kind in self.space.cell_kinds
        }

    def cell_arguments(
        self,
        weights: dict[str, jax.Array] | None,
        paths: dict[str, jax.Array] | None,
        edge_weights: dict[str, jax.Array] | None,
    ) -> dict[str, dict[str, jax.Array | None]]:
        """Per cell kind, what its cells are called with: `weights` (default: the softmax
        of the alphas, unless `paths` picks single ops), `paths` and `edge_weights`
        (default: the normalised betas where the network has them)."""
        if weights is None and paths is None:
            weights = {kind: jax.nn.softmax(a, axis=-1) for kind, a in self.alphas().items()}
        if edge_weights is None and self.edge_normalization:
            edge_weights = self.edge_weights()
        return {
            kind: {
                "weights": None if weights is None else weights[kind],
                "paths": None if paths is None else paths[kind],
                "edge_weights": None if edge_weights is None else edge_weights[kind],
            }
            for kind in self.space.cell_kinds
        }


class DartsStack(nnx.Module):
    """DARTS' macro skeleton, for the supernet and the discrete network alike: a stem,
    `layers` cells with reduction cells at 1/3 and 2/3 of the depth (each doubling C),
    each cell reading the two before it, and global pooling of the last one."""

    def _stack(
        self,
        make_cell: Callable[[CellPlan, str], nnx.Module],
        *,
        channels: int,
        layers: int,
        in_channels: int,
        stem_multiplier: int,
        outputs: dict[str, int],
        rngs: ParamKeys,
    ) -> list[CellPlan]:
        """Builds `stem` and `cells` and returns the cells' plans; `make_cell(plan, kind)`
        builds one cell, `outputs` says how many nodes each cell kind concatenates."""
        stem_channels = stem_multiplier * channels
        self.stem = Stem(in_channels, stem_channels, rngs)
        plans = plan_cells(stem_channels, channels, layers, outputs["normal"], outputs["reduce"])
        self.cells = nnx.List(
            [make_cell(plan, "reduce" if plan.reduction else "normal") for plan in plans]
        )
        return plans

    def _features(
        self,
        x: jax.Array,
        train: bool,
        run_cell: Callable[[int, nnx.Module, jax.Array, jax.Array], jax.Array],
    ) -> jax.Array:
        """The pooled features of the last cell; `run_cell(i, cell, s0, s1)` runs cell i."""
        s0 = s1 = self.stem(x, train)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, run_cell(i, cell, s0, s1)
        return jnp.mean(s1, axis=(1, 2))


class SearchNetwork(DartsStack, SupernetMixin):
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
        make_edge = mixed_edges(space, partial_channels=partial_channels, aux_skip=aux_skip)
        concat = space.concat
        plans = self._stack(
            lambda plan, kind: Cell(plan, space.edges, make_edge, concat, False, rngs),
            channels=channels,
            layers=layers,
            in_channels=in_channels,
            stem_multiplier=stem_multiplier,
            outputs=dict.fromkeys(space.cell_kinds, len(concat)),
            rngs=rngs,
        )
        self.classifier = linear(len(concat) * plans[-1].channels, num_classes, rngs)
        self._arch_params(space, edge_normalization, rngs)

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
        args = self.cell_arguments(weights, paths, edge_weights)

        def run_cell(i: int, cell: Cell, s0: jax.Array, s1: jax.Array) -> jax.Array:
            a = args["reduce" if cell.reduction else "normal"]
            return cell(
                s0, s1, a["weights"], train, paths=a["paths"], edge_weights=a["edge_weights"]
            )

        return self.classifier(self._features(x, train, run_cell))


def node_softmax(beta: jax.Array, space: SearchSpace) -> jax.Array:
    """Softmax of per-edge scores over the edges that enter the same node."""
    return jnp.concatenate(
        [
            jax.nn.softmax(beta[edges.start : edges.stop])
            for edges in map(space.node_edges, range(space.n_nodes))
        ]
    )
