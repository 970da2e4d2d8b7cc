"""NAS-Bench-201's macro skeleton (its TinyNetwork): the search network and the discrete one.

A 3x3 conv stem to C channels, three stages of `layers` cells at C, 2C and 4C channels
joined by two residual reduction blocks, then BatchNorm, ReLU, global pooling and a
linear classifier (Dong & Yang, ICLR 2020). Cells have one input and output their last
node; the searched cell is shared by all of them, so there is one cell kind, "normal".
`layers` counts the cells per stage (N; NAS-Bench-201 uses N=5, C=16), so a network
has 3N cells. NAS-Bench-201's stem has no multiplier: `stem_multiplier` must be 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from nasax.blocks import block
from nasax.supernet.cells import FixedEdge, MixedEdge, PlainCell
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import ArchParam, Stem, linear, node_softmax
from nasax.supernet.ops import BatchNorm, Conv, ParamKeys, ReLUConvBN, param_keys
from nasax.supernet.spaces import SearchSpace

CELL_KIND = "normal"


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pool at stride 2; odd sizes round up (the last window averages the
    pixels it covers), like the stride-2 convs beside it."""
    pads = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
    window = (1, 2, 2, 1)
    total = lax.reduce_window(x, 0.0, lax.add, window, window, pads)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    return total / lax.reduce_window(ones, 0.0, lax.add, window, window, pads)


class ResidualReduction(nnx.Module):
    """NAS-Bench-201's reduction block, a ResNet basic block at stride 2 (affine BNs).

    ``out = conv1x1(avg_pool_2x2(x)) + conv_b(conv_a(x))`` with conv_a a stride-2
    ReLU-conv3x3-BN to `c_out` channels and conv_b a ReLU-conv3x3-BN; the shortcut
    conv has no BatchNorm.
    """

    def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs | ParamKeys) -> None:
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, 1, True, rngs)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1, True, rngs)
        self.shortcut = Conv(c_in, c_out, 1, rngs=rngs)

    @block
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.shortcut(avg_pool_2x2(x)) + self.conv_b(self.conv_a(x, train), train)


class Head(nnx.Module):
    """BatchNorm, ReLU, global average pooling and a linear classifier."""

    def __init__(self, channels: int, num_classes: int, rngs: nnx.Rngs | ParamKeys) -> None:
        self.bn = BatchNorm(channels, True)
        self.classifier = linear(channels, num_classes, rngs)

    @block
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.classifier(jnp.mean(jax.nn.relu(self.bn(x, train)), axis=(1, 2)))


def stage_channels(channels: int, layers: int) -> list[int | None]:
    """Per position in the stack, the cell's channels, or None for a reduction block."""
    if layers < 1:
        raise ValueError(
            f"layers is the number of cells per stage (N) and must be >= 1, got {layers}"
        )
    return [channels] * layers + [None] + [2 * channels] * layers + [None] + [4 * channels] * layers


def _check_stem(stem_multiplier: int) -> None:
    if stem_multiplier != 1:
        raise ValueError(
            f"stem_multiplier={stem_multiplier}: the NAS-Bench-201 stem outputs C channels; "
            "use stem_multiplier=1"
        )


def _check_space(space: SearchSpace) -> None:
    if space.n_inputs != 1 or space.cell_kinds != (CELL_KIND,):
        raise ValueError(
            f"the nb201 skeleton stacks one-input cells of one kind ({CELL_KIND!r}); space "
            f"{space.name!r} has {space.n_inputs} inputs and cells {list(space.cell_kinds)}"
        )


class NB201SearchNetwork(nnx.Module):
    """The NAS-Bench-201 supernet: every cell edge mixes all ops of `space`.

    The same interface as `SearchNetwork`, with one cell kind: `alpha_normal` (edges x
    ops, 6 x 5 for nb201) is shared by all 3N cells, and weights, paths and edge weights
    are dicts with the key "normal". Mixed edges have non-affine BatchNorms; the stem,
    the reduction blocks and the head are affine, as in NAS-Bench-201's search network.

    Args:
        space: a space with one input node and one cell kind (nb201).
        channels: C of the first stage.
        layers: cells per stage (N).
        num_classes: classifier outputs.
        in_channels: image channels.
        stem_multiplier: must be 1 (the stem outputs C channels).
        partial_channels: PC-DARTS' K on every mixed edge.
        aux_skip: DARTS-' auxiliary skip connection on every mixed edge (`MixedEdge`).
        edge_normalization: add per-edge scores `beta_normal` (PC-DARTS).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        channels: int,
        layers: int,
        num_classes: int,
        in_channels: int = 3,
        stem_multiplier: int = 1,
        partial_channels: int = 1,
        edge_normalization: bool = False,
        aux_skip: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        _check_space(space)
        _check_stem(stem_multiplier)
        plan = stage_channels(channels, layers)
        rngs = param_keys(rngs)
        self.space = space
        self.stem = Stem(in_channels, channels, rngs)

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

        blocks, c_prev = [], channels
        for c in plan:
            if c is None:
                blocks.append(ResidualReduction(c_prev, 2 * c_prev, rngs))
                c_prev *= 2
            else:
                blocks.append(PlainCell(c, space.edges, make_edge, space.concat, rngs))
        self.cells = nnx.List(blocks)
        self.head = Head(c_prev, num_classes, rngs)
        shape = (space.n_edges, space.n_ops)
        self.alpha_normal = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape))
        if edge_normalization:
            self.beta_normal = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape[:1]))
        self.edge_normalization = edge_normalization

    def alphas(self) -> dict[str, jax.Array]:
        """The architecture parameters by cell kind (only "normal")."""
        return {CELL_KIND: self.alpha_normal[...]}

    def edge_weights(self) -> dict[str, jax.Array]:
        """PC-DARTS' edge weights: the betas softmaxed over the edges entering each node."""
        return {CELL_KIND: node_softmax(self.beta_normal[...], self.space)}

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        weights: dict[str, jax.Array] | None = None,
        paths: dict[str, jax.Array] | None = None,
        edge_weights: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """Logits for NHWC images `x`; the arguments are as in `SearchNetwork.__call__`."""
        if weights is None and paths is None:
            weights = {k: jax.nn.softmax(a, axis=-1) for k, a in self.alphas().items()}
        if edge_weights is None and self.edge_normalization:
            edge_weights = self.edge_weights()
        x = self.stem(x, train)
        for stage in self.cells:
            if isinstance(stage, ResidualReduction):
                x = stage(x, train)
                continue
            x = stage(
                x,
                None if weights is None else weights[CELL_KIND],
                train,
                paths=None if paths is None else paths[CELL_KIND],
                edge_weights=None if edge_weights is None else edge_weights[CELL_KIND],
            )
        return self.head(x, train)


def _fixed_cell(genotype: Genotype, channels: int, rngs: nnx.Rngs | ParamKeys) -> PlainCell:
    nodes, concat = genotype.normal, genotype.normal_concat
    wiring = [(n, src) for n, node in enumerate(nodes) for _, src in node]
    ops = [op for node in nodes for op, _ in node]

    def make_edge(i: int, c: int, stride: int, rngs: nnx.Rngs) -> FixedEdge:
        return FixedEdge(ops[i], c, stride, rngs)

    return PlainCell(channels, wiring, make_edge, concat, rngs)


class NB201Cell(nnx.Module):
    """The cell of a NAS-Bench-201 genotype with affine BatchNorms, for use in any network.

    Call as `cell(x, train=..., drop_path_rate=..., rng=...)` on NHWC `x` with
    `channels` channels; the output has the same shape (a `none` edge adds zeros).
    """

    def __init__(self, genotype: Genotype, *, channels: int, rngs: nnx.Rngs) -> None:
        genotype.validate()
        _check_space(genotype.resolve_space())
        self.cell = _fixed_cell(genotype, channels, param_keys(rngs))

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        drop_path_rate: jax.Array | float = 0.0,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """The cell's output. Drop path acts only with `train=True` and an `rng`."""
        return self.cell(x, None, train, drop_path_rate, rng)


class NB201Network(nnx.Module):
    """A NAS-Bench-201 genotype as the network NAS-Bench-201 trains (its TinyNetwork).

    The same interface as `DiscreteNetwork`: call as `net(x, train=..., drop_path_rate=...,
    rng=..., return_aux=...)`. There is no auxiliary head (`auxiliary=True` is refused,
    `return_aux=True` returns None in its place). Drop path works as in DARTS (identity
    edges are spared) but NAS-Bench-201's protocol does not use it.

    Args:
        genotype: an nb201 genotype; it is validated.
        num_classes: classifier outputs.
        channels: C of the first stage (16 in NAS-Bench-201).
        layers: cells per stage, N (5 in NAS-Bench-201).
        in_channels: image channels.
        stem_multiplier: must be 1.
        auxiliary: must be False.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        num_classes: int,
        channels: int = 16,
        layers: int = 5,
        in_channels: int = 3,
        stem_multiplier: int = 1,
        auxiliary: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        genotype.validate()
        _check_space(genotype.resolve_space())
        _check_stem(stem_multiplier)
        if auxiliary:
            raise ValueError("the NAS-Bench-201 network has no auxiliary head; use auxiliary=False")
        plan = stage_channels(channels, layers)
        rngs = param_keys(rngs)
        self.genotype = genotype
        self.stem = Stem(in_channels, channels, rngs)
        blocks, c_prev = [], channels
        for c in plan:
            if c is None:
                blocks.append(ResidualReduction(c_prev, 2 * c_prev, rngs))
                c_prev *= 2
            else:
                blocks.append(_fixed_cell(genotype, c, rngs))
        self.cells = nnx.List(blocks)
        self.head = Head(c_prev, num_classes, rngs)
        self.auxiliary = None

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool = False,
        drop_path_rate: jax.Array | float = 0.0,
        rng: jax.Array | None = None,
        return_aux: bool = False,
    ) -> jax.Array | tuple[jax.Array, None]:
        """Logits for NHWC images `x` (and None for the absent auxiliary logits)."""
        x = self.stem(x, train)
        for i, stage in enumerate(self.cells):
            if isinstance(stage, ResidualReduction):
                x = stage(x, train)
            else:
                cell_rng = None if rng is None else jax.random.fold_in(rng, i)
                x = stage(x, None, train, drop_path_rate, cell_rng)
        logits = self.head(x, train)
        return (logits, None) if return_aux else logits


__all__ = ["NB201Cell", "NB201Network", "NB201SearchNetwork", "ResidualReduction"]
