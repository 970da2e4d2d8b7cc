"""Taps: what a network's layers report while it is traced for a proxy that reads more
than the logits (NASWOT's activation codes, Fisher's activation gradients, Zen's
BatchNorm deviations and features).

Layers call `tap(site, x)` at fixed sites: the input of every ReLU (`relu`), the output
of every convolution and linear layer (`conv`, `linear`), the batch variance of every
BatchNorm in training (`bn_var`) and the input of the global average pool (`features`).
Without a tap set (every ordinary trace) `tap` returns `x` and costs nothing.

A `Tap` turns each report into fixed-shape totals at once, so the totals leave blocks
(nested jitted calls) and `lax.switch` branches as ordinary outputs: `nested_call` runs a
block or a branch with fresh totals and adds what it returns to the caller's. A tap
may also return a replacement for `x` (an identity with its own backward pass, as
Fisher's does), reading arrays the trace was given (`inputs`). A new proxy's tap is one
class with `zeros` and `report`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jax

Totals = dict[str, jax.Array]

SITES = ("relu", "conv", "linear", "bn_var", "features")
"""Where layers report (see the module docstring)."""


class Tap(Protocol):
    """What a proxy reads from a trace. Hashable (a frozen dataclass): it keys the
    traces of blocks, like the other trace settings."""

    def zeros(self) -> Totals:
        """The totals at the start of a trace or a nested call (fixed shapes)."""
        ...

    def report(
        self, site: str, x: jax.Array, inputs: Mapping[str, jax.Array], fan_in: int
    ) -> tuple[jax.Array, Totals]:
        """What a report at `site` adds to the totals, and the value to continue with
        (`x`, or a replacement of the same value). `fan_in` is the number of weights per
        output channel of a conv or linear layer (1 at the other sites)."""
        ...


@dataclass
class _Tapping:
    tap: Tap
    inputs: dict[str, jax.Array]
    totals: Totals
    nested: bool


_TAPPING: contextvars.ContextVar[_Tapping | None] = contextvars.ContextVar(
    "nasax_tapping", default=None
)


def tap(site: str, x: jax.Array, fan_in: int = 1) -> jax.Array:
    """Reports `x` at `site` to the trace's tap, if one is set; returns what to use.
    Conv and linear layers give their weights per output channel as `fan_in`."""
    state = _TAPPING.get()
    if state is None:
        return x
    if site not in SITES:
        raise ValueError(f"tap site {site!r} is not one of {', '.join(SITES)}")
    x, parts = state.tap.report(site, x, state.inputs, fan_in)
    for name, value in parts.items():
        if name in state.totals:
            state.totals[name] = state.totals[name] + value
        elif state.nested:
            raise ValueError(
                f"tap {type(state.tap).__name__}: total {name!r} is reported inside a block "
                "or a switch branch, so its zeros() must declare it"
            )
        else:
            state.totals[name] = value
    return x


def tapped(
    the_tap: Tap, fn: Callable[..., Any], inputs: Mapping[str, jax.Array] | None = None
) -> Callable[..., tuple[Any, Totals]]:
    """`fn`, traced with `the_tap` set: returns `(fn's output, the totals)`. Totals first
    reported outside any block (the `features` of a network whose head is not one) are
    taken as reported; the rest must be declared by the tap's `zeros`."""

    def run(*args: Any, **kwargs: Any) -> tuple[Any, Totals]:
        state = _Tapping(the_tap, dict(inputs or {}), the_tap.zeros(), nested=False)
        token = _TAPPING.set(state)
        try:
            out = fn(*args, **kwargs)
        finally:
            _TAPPING.reset(token)
        return out, state.totals

    return run


def current() -> tuple[Tap, dict[str, jax.Array]] | None:
    """The trace's tap and its inputs, for a call that makes a nested trace; None when
    nothing is tapped."""
    state = _TAPPING.get()
    return None if state is None else (state.tap, state.inputs)


def nested_call(
    the_tap: Tap, inputs: dict[str, jax.Array], fn: Callable[..., Any], *args: Any
) -> tuple[Any, Totals]:
    """Inside a nested trace: `fn(*args)` with fresh totals; returns them with the output."""
    state = _Tapping(the_tap, inputs, the_tap.zeros(), nested=True)
    token = _TAPPING.set(state)
    try:
        out = fn(*args)
    finally:
        _TAPPING.reset(token)
    return out, state.totals


def add_totals(totals: Totals) -> None:
    """Adds what a nested call returned to the current trace's totals."""
    state = _TAPPING.get()
    if state is None:
        raise RuntimeError("add_totals outside a tapped trace")
    for name, value in totals.items():
        state.totals[name] = state.totals[name] + value


def switch(index: jax.Array, branches: list[Callable[..., Any]], *operands: Any) -> Any:
    """`flax.nnx.switch`, carrying a tap's inputs into the branches and their totals out."""
    from flax import nnx

    found = current()
    if found is None:
        return nnx.switch(index, branches, *operands)
    the_tap, inputs = found

    def carried(branch: Callable[..., Any]) -> Callable[..., Any]:
        return lambda inputs, *args: nested_call(the_tap, inputs, branch, *args)

    out, totals = nnx.switch(index, [carried(b) for b in branches], inputs, *operands)
    add_totals(totals)
    return out


__all__ = [
    "SITES",
    "Tap",
    "Totals",
    "add_totals",
    "current",
    "nested_call",
    "switch",
    "tap",
    "tapped",
]
