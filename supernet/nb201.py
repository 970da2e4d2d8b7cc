"""NAS-Bench-201's macro skeleton (its TinyNetwork): the search network and the discrete one.

A 3x3 conv stem to C channels, three stages of `layers` cells at C, 2C and 4C channels
joined by two residual reduction blocks, then BatchNorm, ReLU, global pooling and a
linear classifier (Dong & Yang, ICLR 2020). Cells have one input and output their last
node; the searched cell is shared by all of them, so there is one cell kind, "normal".
`layers` counts the cells per stage (N; NAS-Bench-201 uses N=5, C=16), so a network
has 3N cells. NAS-Bench-201's stem has no multiplier: `stem_multiplier` must be 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from nasax.engine.marking import block
from nasax.engine.taps import tap
from nasax.supernet.cells import PlainCell, fixed_edges
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import (
    GenotypeNetwork,
    RunCell,
    Site,
    StackSize,
    Stem,
    Supernet,
    halved,
    linear,
)
from nasax.supernet.ops import BatchNorm, Conv, ParamKeys, ReLUConvBN, param_keys, relu
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
    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """What the global average pool reads: BatchNorm then ReLU."""
        return relu(self.bn(x, train))

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pooled = jnp.mean(tap("features", self.features(x, train)), axis=(1, 2))
        return tap("linear", self.classifier(pooled), pooled.shape[-1])


def stage_channels(channels: int, layers: int) -> list[int | None]:
    """Per position in the stack, the cell's channels, or None for a reduction block."""
    if layers < 1:
        raise ValueError(
            f"layers is the number of cells per stage (N) and must be >= 1, got {layers}"
        )
    return [channels] * layers + [None] + [2 * channels] * layers + [None] + [4 * channels] * layers


class NB201Stack(nnx.Module):
    """NAS-Bench-201's macro skeleton, for the supernet and the discrete network alike: a
    stem, three stages of cells joined by residual reduction blocks, and the head. Its
    cells have one input and one kind; a cell's plan is its channel count."""

    skeleton: ClassVar[str] = "nb201"
    defaults: ClassVar[dict[str, int]] = {"channels": 16, "layers": 5, "stem_multiplier": 1}
    fixed_stem_multiplier: ClassVar[int | None] = 1

    @staticmethod
    def _check_space(space: SearchSpace) -> None:
        if space.n_inputs != 1 or space.cell_kinds != (CELL_KIND,):
            raise ValueError(
                f"the nb201 skeleton stacks one-input cells of one kind ({CELL_KIND!r}); "
                f"space {space.name!r} has {space.n_inputs} inputs and cells "
                f"{list(space.cell_kinds)}"
            )

    def _stack(
        self, make_cell: Callable[[str, int], nnx.Module], size: StackSize, rngs: ParamKeys
    ) -> int:
        """Builds `stem` and `cells` (cells and reduction blocks) and returns the last
        stage's channels; `make_cell(kind, c)` builds a cell of `c` channels."""
        if size.stem_multiplier != self.fixed_stem_multiplier:
            raise ValueError(
                f"stem_multiplier={size.stem_multiplier}: the NAS-Bench-201 stem outputs C "
                "channels; use stem_multiplier=1"
            )
        plan = stage_channels(size.channels, size.layers)
        self.stem = Stem(size.in_channels, size.channels, rngs)
        blocks, c_prev = [], size.channels
        for c in plan:
            if c is None:
                blocks.append(ResidualReduction(c_prev, 2 * c_prev, rngs))
                c_prev *= 2
            else:
                blocks.append(make_cell(CELL_KIND, c))
        self.cells = nnx.List(blocks)
        return c_prev

    def _head(self, features: int, num_classes: int, rngs: ParamKeys) -> None:
        self.head = Head(features, num_classes, rngs)

    @classmethod
    def edge_sites(
        cls, space: SearchSpace, channels: int, layers: int, image_size: tuple[int, int]
    ) -> list[Site]:
        """Every edge of the network at this size: stride 1 at its stage's channels and
        size; each reduction block halves the size."""
        sites, size = [], tuple(image_size)
        for i, c in enumerate(stage_channels(channels, layers)):
            if c is None:
                size = halved(size)
                continue
            sites += [Site(i, CELL_KIND, e, c, 1, *size) for e in range(space.n_edges)]
        return sites

    def _logits(self, x: jax.Array, train: bool, run_cell: RunCell) -> jax.Array:
        """The logits; `run_cell(i, kind, cell, x)` runs the cell at position i."""
        x = self.stem(x, train)
        for i, stage in enumerate(self.cells):
            reduction = isinstance(stage, ResidualReduction)
            x = stage(x, train) if reduction else run_cell(i, CELL_KIND, stage, x)
        return self.head(x, train)

    def _mixed_cell(
        self, kind: str, c: int, space: SearchSpace, make_edge: Callable, rngs: ParamKeys
    ) -> PlainCell:
        return PlainCell(c, space.edges, make_edge, space.concat, rngs)

    def _fixed_cell(self, kind: str, c: int, genotype: Genotype, rngs: ParamKeys) -> PlainCell:
        return _fixed_cell(genotype, c, rngs)


class NB201SearchNetwork(Supernet, NB201Stack):
    """The NAS-Bench-201 supernet (`Supernet` on `NB201Stack`).

    One cell kind: `alpha_normal` (edges x ops, 6 x 5 for nb201) is shared by all 3N
    cells, and weights, paths and edge weights are dicts with the key "normal". Mixed
    edges have non-affine BatchNorms; the stem, the reduction blocks and the head are
    affine, as in NAS-Bench-201's search network. `layers` counts cells per stage (N).
    """


def _fixed_cell(genotype: Genotype, channels: int, rngs: nnx.Rngs | ParamKeys) -> PlainCell:
    wiring, _ = genotype.wiring(CELL_KIND)
    return PlainCell(
        channels, wiring, fixed_edges(genotype, CELL_KIND), genotype.cell(CELL_KIND)[1], rngs
    )


class NB201Cell(nnx.Module):
    """The cell of a NAS-Bench-201 genotype with affine BatchNorms, for use in any network.

    Call as `cell(x, train=..., drop_path_rate=..., rng=...)` on NHWC `x` with
    `channels` channels; the output has the same shape (a `none` edge adds zeros).
    """

    def __init__(self, genotype: Genotype, *, channels: int, rngs: nnx.Rngs) -> None:
        genotype.validate()
        NB201Stack._check_space(genotype.resolve_space())
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


class NB201Network(GenotypeNetwork, NB201Stack):
    """A NAS-Bench-201 genotype as the network NAS-Bench-201 trains (its TinyNetwork;
    `GenotypeNetwork` on `NB201Stack`, C=16 and N=5 by default). There is no auxiliary
    head (`auxiliary=True` is refused, `return_aux=True` returns None in its place). Drop
    path works as in DARTS (identity edges are spared) but NAS-Bench-201's protocol does
    not use it.
    """


__all__ = ["NB201Cell", "NB201Network", "NB201SearchNetwork", "ResidualReduction"]
