"""The DARTS network built from a genotype, for retraining and reuse, and its auxiliary head.

Both it and `DiscreteCell` are plain `flax.nnx` modules: call them inside any optax loop.
They use the same `Cell` as the search network, with one `FixedEdge` per chosen op.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.engine.marking import block
from nasax.supernet.cells import DiscreteCell, drop_path, reduction_indices
from nasax.supernet.network import DartsStack, GenotypeNetwork, linear
from nasax.supernet.ops import BatchNorm, Conv, ParamKeys, param_keys


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


class DiscreteNetwork(GenotypeNetwork, DartsStack):
    """The DARTS network a genotype is retrained as (`GenotypeNetwork` on `DartsStack`):
    stem, `layers` cells (36 channels and 20 cells by default), pooling, classifier.

    With `auxiliary=True` an auxiliary classifier reads the features after the second
    reduction cell; it runs only in training and only when asked (`return_aux=True`).
    """

    auxiliary_head: ClassVar[bool] = True

    def _auxiliary_head(self, layers: int, num_classes: int, rngs: ParamKeys) -> None:
        self.aux_index = reduction_indices(layers)[1]
        c_in = self.cells[self.aux_index].out_channels
        self.auxiliary = AuxiliaryHead(c_in, num_classes, rngs)


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
