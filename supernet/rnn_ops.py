"""The ops of recurrent cells, registered by name: the activation a node applies to its
candidate state.

A recurrent node reads one earlier state `s`, projects it to a gate `c` and a candidate
`h`, and outputs ``s + sigmoid(c) * (op(h) - s)`` (the DARTS recurrent cell); the op is
all that differs between the choices of an edge, so an op here is an elementwise
function rather than a module with parameters (`nasax.supernet.ops` holds the image ops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from nasax.core.registry import Registry

Activation = Callable[[jax.Array], jax.Array]


@dataclass(frozen=True)
class RecurrentOp:
    """A registered recurrent op.

    Attributes:
        fn: the activation, elementwise on a node's candidate state.
        zero: an edge holding this op contributes nothing to its node (`none`): no
            highway is computed, as in the DARTS reference's mixed sum.
    """

    fn: Activation
    zero: bool = False


BUILTIN_RNN_OPS = ("none", "tanh", "relu", "sigmoid", "identity")
"""The recurrent ops this module registers."""

RNN_OPS: Registry[RecurrentOp] = Registry("recurrent op", dict.fromkeys(BUILTIN_RNN_OPS, __name__))


def register_rnn_op(name: str, *, zero: bool = False) -> Callable[[Activation], Activation]:
    """Decorator: registers an elementwise activation as the recurrent op `name`."""

    def wrap(fn: Activation) -> Activation:
        RNN_OPS.register(name, RecurrentOp(fn, zero))
        return fn

    return wrap


register_rnn_op("none", zero=True)(jnp.zeros_like)
register_rnn_op("tanh")(jnp.tanh)
register_rnn_op("relu")(jax.nn.relu)
register_rnn_op("sigmoid")(jax.nn.sigmoid)


@register_rnn_op("identity")
def identity(x: jax.Array) -> jax.Array:
    """The candidate state as it is."""
    return x


__all__ = ["BUILTIN_RNN_OPS", "RNN_OPS", "RecurrentOp", "register_rnn_op"]
