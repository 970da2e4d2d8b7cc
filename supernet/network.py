"""The two networks every macro skeleton builds, and DARTS' skeleton.

A skeleton class (`DartsStack` here, `NB201Stack` in `nb201.py`) stacks cells into a
network; a role class says what the cells are. `Supernet` gives every edge all ops of a
space and holds the architecture parameters; `GenotypeNetwork` builds the cells of a
genotype. A network class is one of each: `SearchNetwork(Supernet, DartsStack)`.

A skeleton provides `skeleton` (its name), `defaults` (channels, layers and stem
multiplier of its published network), `fixed_stem_multiplier`, `_check_space`, `_stack`,
`_head`, `_logits`, `_mixed_cell` and `_fixed_cell`; see `DartsStack`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.engine.marking import block
from nasax.engine.taps import tap
from nasax.supernet.cells import (
    Cell,
    CellPlan,
    DiscreteCell,
    MixedEdge,
    plan_cells,
    reduction_indices,
)
from nasax.supernet.genotypes import Genotype
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


EdgeClass = Callable[..., MixedEdge]
"""What builds a supernet's edges: `MixedEdge`, a strategy's subclass of it, or a
`functools.partial` of one with its own options; called as MixedEdge is."""


def mixed_edges(
    space: SearchSpace, edge: EdgeClass = MixedEdge
) -> Callable[[int, int, int, nnx.Rngs], MixedEdge]:
    """`make_edge` for a supernet's cells: every edge an `edge` over all ops of `space`."""

    def make_edge(i: int, c: int, stride: int, rngs: nnx.Rngs) -> MixedEdge:
        return edge(space.ops, c, stride, rngs, pool_norms=space.pool_norms)

    return make_edge


class Forward(NamedTuple):
    """What a supernet pass is called with, by cell kind; None leaves each to its default
    (`Supernet.__call__`)."""

    weights: dict[str, jax.Array] | None = None
    """(edges, ops) op weights; default: the softmax of the alphas, unless `paths`."""
    paths: dict[str, jax.Array] | None = None
    """(edges,) op index per edge: a single-path pass."""
    edge_weights: dict[str, jax.Array] | None = None
    """(edges,) edge factors; default: the normalised betas where the network has them."""


PLAIN_FORWARD = Forward()
"""The default pass: every op weighted by the softmax of its alphas."""


class CellForward(NamedTuple):
    """What each cell of one kind is called with (`Forward`, for one kind)."""

    weights: jax.Array | None
    paths: jax.Array | None
    edge_weights: jax.Array | None


class Site(NamedTuple):
    """Where one edge of a deployed network sits: its cell's kind and position, the
    edge's index in the space, and the shape its op sees (channels, stride, input size).
    A cost model prices each op at every site (`nasax.search.costs`)."""

    cell: int
    kind: str
    edge: int
    channels: int
    stride: int
    height: int
    width: int

    @property
    def signature(self) -> tuple[int, int, int, int]:
        """(channels, stride, height, width): sites with one signature cost the same."""
        return self.channels, self.stride, self.height, self.width


def halved(size: tuple[int, int]) -> tuple[int, int]:
    """A spatial size after a stride-2 op, which rounds up."""
    return (size[0] + 1) // 2, (size[1] + 1) // 2


class StackSize(NamedTuple):
    """What a skeleton's `_stack` builds: C, depth, image channels, stem multiplier, and
    per cell kind the number of nodes a cell concatenates."""

    channels: int
    layers: int
    in_channels: int
    stem_multiplier: int
    outputs: dict[str, int]


RunCell = Callable[..., jax.Array]
"""`run_cell(i, kind, cell, *inputs)`: runs the cell at position `i` of a stack."""


class Supernet(nnx.Module):
    """The search network of a skeleton: every cell edge mixes all ops of `space`.

    Architecture parameters `alpha_<kind>` (edges x ops) are `ArchParam` variables shared
    by all cells of a kind; `beta_<kind>` (edges) exist with `edge_normalization`
    (PC-DARTS). Call with `weights` to use op weights a strategy computed (sampled,
    normalised, ...); by default they are the softmax of the alphas.

    Args:
        space: a space of the class's skeleton.
        channels: C of the first cell (or stage).
        layers: the skeleton's depth (DARTS: cells; NAS-Bench-201: cells per stage).
        num_classes: classifier outputs.
        in_channels: image channels.
        stem_multiplier: the stem outputs `stem_multiplier * C` channels (default: the
            skeleton's, 3 for DARTS, 1 for NAS-Bench-201).
        edge: what builds each edge (`MixedEdge`, or a strategy's subclass of it such as
            PC-DARTS' partial channels or DARTS-' auxiliary skip).
        edge_normalization: add per-edge scores `beta_<kind>` (PC-DARTS).
    """

    space: SearchSpace
    edge_normalization: bool

    def __init__(
        self,
        space: SearchSpace,
        *,
        channels: int,
        layers: int,
        num_classes: int,
        in_channels: int = 3,
        stem_multiplier: int | None = None,
        edge: EdgeClass = MixedEdge,
        edge_normalization: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        self._check_space(space)
        rngs = param_keys(rngs)
        make_edge = mixed_edges(space, edge)
        if stem_multiplier is None:
            stem_multiplier = self.defaults["stem_multiplier"]
        outputs = dict.fromkeys(space.cell_kinds, len(space.concat))
        features = self._stack(
            lambda kind, plan: self._mixed_cell(kind, plan, space, make_edge, rngs),
            StackSize(channels, layers, in_channels, stem_multiplier, outputs),
            rngs,
        )
        self._head(features, num_classes, rngs)
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

        def run_cell(i: int, kind: str, cell: nnx.Module, *inputs: jax.Array) -> jax.Array:
            a = args[kind]
            return cell(*inputs, a.weights, train, paths=a.paths, edge_weights=a.edge_weights)

        return self._logits(x, train, run_cell)

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
    ) -> dict[str, CellForward]:
        """Per cell kind, what its cells are called with: `weights` (default: the softmax
        of the alphas, unless `paths` picks single ops), `paths` and `edge_weights`
        (default: the normalised betas where the network has them)."""
        if weights is None and paths is None:
            weights = {kind: jax.nn.softmax(a, axis=-1) for kind, a in self.alphas().items()}
        if edge_weights is None and self.edge_normalization:
            edge_weights = self.edge_weights()
        return {
            kind: CellForward(
                None if weights is None else weights[kind],
                None if paths is None else paths[kind],
                None if edge_weights is None else edge_weights[kind],
            )
            for kind in self.space.cell_kinds
        }


class GenotypeNetwork(nnx.Module):
    """The network a genotype is retrained as, on its space's skeleton: each edge runs
    the op the genotype chose, BatchNorms are affine.

    Call as `net(x, train=..., drop_path_rate=..., rng=..., return_aux=...)` on NHWC
    images normalised as for training. Returns logits, or `(logits, aux_logits)` with
    `return_aux=True` (`aux_logits` is None outside training or without the head).

    Args:
        genotype: the genotype; it is validated against its space.
        num_classes: classifier outputs.
        channels, layers, stem_multiplier: as in `Supernet` (default: the skeleton's
            published network, `defaults`).
        in_channels: image channels.
        auxiliary: build an auxiliary classifier (where the skeleton has one).
    """

    auxiliary_head: ClassVar[bool] = False
    """Whether the skeleton's network can have an auxiliary head (`_auxiliary_head`)."""

    def __init__(
        self,
        genotype: Genotype,
        *,
        num_classes: int,
        channels: int | None = None,
        layers: int | None = None,
        in_channels: int = 3,
        stem_multiplier: int | None = None,
        auxiliary: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        genotype.validate()
        self._check_space(genotype.resolve_space())
        if auxiliary and not self.auxiliary_head:
            raise ValueError(
                f"the {self.skeleton} network has no auxiliary head; use auxiliary=False"
            )
        rngs = param_keys(rngs)
        self.genotype = genotype
        given = {"channels": channels, "layers": layers, "stem_multiplier": stem_multiplier}
        size = StackSize(
            in_channels=in_channels,
            outputs={kind: len(genotype.cell(kind)[1]) for kind in genotype.cells},
            **{k: self.defaults[k] if v is None else v for k, v in given.items()},
        )
        features = self._stack(
            lambda kind, plan: self._fixed_cell(kind, plan, genotype, rngs), size, rngs
        )
        if auxiliary:
            self._auxiliary_head(size.layers, num_classes, rngs)
        else:
            self.aux_index, self.auxiliary = None, None
        self._head(features, num_classes, rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        drop_path_rate: jax.Array | float = 0.0,
        rng: jax.Array | None = None,
        return_aux: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array | None]:
        """Logits for NHWC images `x` (and the auxiliary logits with `return_aux`).

        Args:
            x: a batch of images, normalised as the network was trained on.
            train: training mode: batch statistics, drop path, the auxiliary head.
            drop_path_rate: probability of dropping each non-identity edge's output
                per example; needs `rng` and `train`.
            rng: key for drop path (each cell and edge folds in its position).
            return_aux: also return the auxiliary logits.
        """
        aux = None

        def run_cell(i: int, kind: str, cell: nnx.Module, *inputs: jax.Array) -> jax.Array:
            nonlocal aux
            cell_rng = None if rng is None else jax.random.fold_in(rng, i)
            out = cell(*inputs, train=train, drop_path_rate=drop_path_rate, rng=cell_rng)
            if i == self.aux_index and self.auxiliary is not None and train and return_aux:
                aux = self.auxiliary(out, train)
            return out

        logits = self._logits(x, train, run_cell)
        return (logits, aux) if return_aux else logits

    def _auxiliary_head(self, layers: int, num_classes: int, rngs: ParamKeys) -> None:
        """Builds `auxiliary` and sets `aux_index`, the cell whose output it reads."""
        raise NotImplementedError


class DartsStack(nnx.Module):
    """DARTS' macro skeleton, for the supernet and the discrete network alike: a stem,
    `layers` cells with reduction cells at 1/3 and 2/3 of the depth (each doubling C),
    each cell reading the two before it, and global pooling of the last one."""

    skeleton: ClassVar[str] = "darts"
    defaults: ClassVar[dict[str, int]] = {"channels": 36, "layers": 20, "stem_multiplier": 3}
    fixed_stem_multiplier: ClassVar[int | None] = None
    """The only stem multiplier the skeleton builds (None: any)."""

    @staticmethod
    def _check_space(space: SearchSpace) -> None:
        if space.skeleton != "darts" or space.cell_kinds != ("normal", "reduce"):
            raise ValueError(
                "the darts skeleton stacks normal and reduction cells; space "
                f"{space.name!r} uses the {space.skeleton!r} skeleton with cells "
                f"{list(space.cell_kinds)}: build it with "
                "nasax.supernet.skeleton_of(space).search_network (or .discrete_network)"
            )

    def _stack(
        self, make_cell: Callable[[str, CellPlan], nnx.Module], size: StackSize, rngs: ParamKeys
    ) -> int:
        """Builds `stem` and `cells` and returns the channels of the last cell's output;
        `make_cell(kind, plan)` builds one cell."""
        stem_channels = size.stem_multiplier * size.channels
        self.stem = Stem(size.in_channels, stem_channels, rngs)
        outputs = size.outputs
        plans = plan_cells(
            stem_channels, size.channels, size.layers, outputs["normal"], outputs["reduce"]
        )
        kinds = ["reduce" if plan.reduction else "normal" for plan in plans]
        self.cells = nnx.List([make_cell(kind, plan) for kind, plan in zip(kinds, plans)])
        return outputs[kinds[-1]] * plans[-1].channels

    def _head(self, features: int, num_classes: int, rngs: ParamKeys) -> None:
        self.classifier = linear(features, num_classes, rngs)

    @classmethod
    def edge_sites(
        cls, space: SearchSpace, channels: int, layers: int, image_size: tuple[int, int]
    ) -> list[Site]:
        """Every edge of the network at this size: in a reduction cell the edges leaving
        its two inputs run at stride 2 on the input's size, the others on the halved one."""
        stem = channels  # the stem's width does not change where edges sit
        plans = plan_cells(stem, channels, layers, len(space.concat))
        sites, size = [], tuple(image_size)
        for i, plan in enumerate(plans):
            kind = "reduce" if plan.reduction else "normal"
            inner = halved(size) if plan.reduction else size
            for e, (_, src) in enumerate(space.edges):
                stride = 2 if plan.reduction and src < space.n_inputs else 1
                h, w = size if stride == 2 else inner
                sites.append(Site(i, kind, e, plan.channels, stride, h, w))
            size = inner
        return sites

    def _logits(self, x: jax.Array, train: bool, run_cell: RunCell) -> jax.Array:
        """The logits; `run_cell(i, kind, cell, s0, s1)` runs cell i."""
        s0 = s1 = self.stem(x, train)
        reductions = reduction_indices(len(self.cells))
        for i, cell in enumerate(self.cells):
            kind = "reduce" if i in reductions else "normal"
            s0, s1 = s1, run_cell(i, kind, cell, s0, s1)
        pooled = jnp.mean(tap("features", s1), axis=(1, 2))
        return tap("linear", self.classifier(pooled), pooled.shape[-1])

    def _mixed_cell(
        self, kind: str, plan: CellPlan, space: SearchSpace, make_edge: Callable, rngs: ParamKeys
    ) -> Cell:
        return Cell(plan, space.edges, make_edge, space.concat, False, rngs)

    def _fixed_cell(
        self, kind: str, plan: CellPlan, genotype: Genotype, rngs: ParamKeys
    ) -> DiscreteCell:
        return DiscreteCell(
            genotype,
            kind,
            c_prev_prev=plan.c_prev_prev,
            c_prev=plan.c_prev,
            channels=plan.channels,
            reduction_prev=plan.reduction_prev,
            rngs=rngs,
        )


class SearchNetwork(Supernet, DartsStack):
    """The DARTS supernet (`Supernet` on `DartsStack`): cells `alpha_normal` and
    `alpha_reduce`, `stem_multiplier` 3 by default."""


def node_softmax(beta: jax.Array, space: SearchSpace) -> jax.Array:
    """Softmax of per-edge scores over the edges that enter the same node."""
    return jnp.concatenate(
        [
            jax.nn.softmax(beta[edges.start : edges.stop])
            for edges in map(space.node_edges, range(space.n_nodes))
        ]
    )
