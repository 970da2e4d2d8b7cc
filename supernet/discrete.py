"""The discrete cell and the stacked network built from a genotype, for retraining and reuse.

Both are plain `flax.nnx` modules: call them inside any optax loop. They use the same
`Cell` as the search network, with one `FixedEdge` per chosen op.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.blocks import block
from nasax.supernet.cells import Cell, CellPlan, drop_path, fixed_edges, reduction_indices
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import DartsStack, linear
from nasax.supernet.ops import BatchNorm, Conv, param_keys


class DiscreteCell(nnx.Module):
    """One cell of a genotype (`kind` "normal" or "reduce") with affine BatchNorms.

    Call as `cell(s0, s1, train=..., drop_path_rate=..., rng=...)` with `s0` the output
    of the cell two back and `s1` of the previous one (NHWC). It outputs
    `len(concat) * channels` channels, at half the resolution when it is a reduction cell.

    Args:
        genotype: the genotype; it is validated against its space.
        kind: which of its cells to build.
        c_prev_prev, c_prev: channels of `s0` and `s1`.
        channels: C, the channels of every node inside the cell.
        reduction_prev: the previous cell halved the resolution, so `s0` is twice as
            large as `s1` and is reduced on the way in.
    """

    def __init__(
        self,
        genotype: Genotype,
        kind: str,
        *,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        reduction_prev: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        genotype.validate()
        rngs = param_keys(rngs)
        wiring, _ = genotype.wiring(kind)
        _, concat = genotype.cell(kind)
        plan = CellPlan(c_prev_prev, c_prev, channels, kind == "reduce", reduction_prev)
        self.cell = Cell(plan, wiring, fixed_edges(genotype, kind), concat, True, rngs)
        self.out_channels = len(concat) * channels

    def __call__(
        self,
        s0: jax.Array,
        s1: jax.Array,
        *,
        train: bool = False,
        drop_path_rate: jax.Array | float = 0.0,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """The cell's output. Drop path acts only with `train=True` and an `rng`."""
        return self.cell(s0, s1, None, train, drop_path_rate, rng)


class AuxiliaryHead(nnx.Module):
    """The DARTS auxiliary classifier for the 2/3-depth features (8x8 on CIFAR).

    ReLU, 5x5 average pool with stride 3, 1x1 conv to 128, BN, ReLU, 2x2 conv to 768,
    BN, ReLU, linear. Smaller maps skip the pool (and are zero-padded to 2x2); larger
    ones average what the 2x2 conv leaves, so any input size works with the same weights.
    """

    def __init__(self, c_in: int, num_classes: int, rngs: nnx.Rngs) -> None:
        rngs = param_keys(rngs)
        self.conv1 = Conv(c_in, 128, 1, rngs=rngs)
        self.bn1 = BatchNorm(128, True)
        self.conv2 = Conv(128, 768, 2, rngs=rngs)
        self.bn2 = BatchNorm(768, True)
        self.classifier = linear(768, num_classes, rngs)

    @block
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = jax.nn.relu(x)
        if min(x.shape[1:3]) >= 5:
            window = (1, 5, 5, 1)
            x = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 3, 3, 1), "VALID") / 25.0
        short = [max(0, 2 - n) for n in x.shape[1:3]]
        if any(short):
            x = jnp.pad(x, ((0, 0), (0, short[0]), (0, short[1]), (0, 0)))
        x = jax.nn.relu(self.bn1(self.conv1(x), train))
        x = jax.nn.relu(self.bn2(self.conv2(x), train))
        return self.classifier(jnp.mean(x, axis=(1, 2)))


class DiscreteNetwork(DartsStack):
    """The network a genotype is retrained as: stem, `layers` cells, pooling, classifier.

    Reduction cells sit at 1/3 and 2/3 of the depth and double the channels. With
    `auxiliary=True` an auxiliary classifier reads the features after the second
    reduction cell; it runs only in training and only when asked (`return_aux=True`).

    Call as `net(x, train=..., drop_path_rate=..., rng=..., return_aux=...)` on NHWC
    images normalised as for training. Returns logits, or `(logits, aux_logits)` with
    `return_aux=True` (`aux_logits` is None outside training or without the head).
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        num_classes: int,
        channels: int = 36,
        layers: int = 20,
        in_channels: int = 3,
        stem_multiplier: int = 3,
        auxiliary: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        genotype.validate()
        kinds = genotype.resolve_space().cell_kinds
        if kinds != ("normal", "reduce"):
            raise ValueError(
                f"DiscreteNetwork stacks normal and reduction cells; space {genotype.space!r} "
                f"has {list(kinds)}: build it with its skeleton's network "
                "(nasax.supernet.skeleton_of(space).discrete_network)"
            )
        rngs = param_keys(rngs)
        self.genotype = genotype

        def make_cell(plan: CellPlan, kind: str) -> DiscreteCell:
            return DiscreteCell(
                genotype,
                kind,
                c_prev_prev=plan.c_prev_prev,
                c_prev=plan.c_prev,
                channels=plan.channels,
                reduction_prev=plan.reduction_prev,
                rngs=rngs,
            )

        self._stack(
            make_cell,
            channels=channels,
            layers=layers,
            in_channels=in_channels,
            stem_multiplier=stem_multiplier,
            outputs={kind: len(genotype.cell(kind)[1]) for kind in kinds},
            rngs=rngs,
        )
        self.aux_index = reduction_indices(layers)[1]
        self.auxiliary = (
            AuxiliaryHead(self.cells[self.aux_index].out_channels, num_classes, rngs)
            if auxiliary
            else None
        )
        self.classifier = linear(self.cells[-1].out_channels, num_classes, rngs)

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

        def run_cell(i: int, cell: DiscreteCell, s0: jax.Array, s1: jax.Array) -> jax.Array:
            nonlocal aux
            cell_rng = None if rng is None else jax.random.fold_in(rng, i)
            out = cell(s0, s1, train=train, drop_path_rate=drop_path_rate, rng=cell_rng)
            if i == self.aux_index and self.auxiliary is not None and train and return_aux:
                aux = self.auxiliary(out, train)
            return out

        logits = self.classifier(self._features(x, train, run_cell))
        return (logits, aux) if return_aux else logits


def count_params(module: nnx.Module) -> int:
    """Number of trainable scalars (`nnx.Param`) in a module."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def param_counts(net: DiscreteNetwork) -> dict[str, int]:
    """Parameters of the network without and with its auxiliary head (DARTS reports without)."""
    total = count_params(net)
    aux = count_params(net.auxiliary) if net.auxiliary is not None else 0
    return {"params": total - aux, "params_auxiliary": aux, "params_total": total}


__all__ = [
    "AuxiliaryHead",
    "DiscreteCell",
    "DiscreteNetwork",
    "count_params",
    "drop_path",
    "param_counts",
]
