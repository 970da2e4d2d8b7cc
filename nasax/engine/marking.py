"""Marking blocks: a module method decorated `@block` runs as its own jitted call.

Tracing a step leaves each block, and each form autodiff made of it, as a call to a jaxpr
that is the same object wherever the block recurs, which `nasax.engine.planning` finds and
compiles once. Under an outer `jax.jit` (fused execution) a block is an ordinary nested
call that XLA inlines, so the same model code serves both modes. The trace settings that
blocks read (what to rematerialise, forward-mode forms) live here too.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from nasax.engine import taps

BLOCK_NAME = "nasax_block"
"""The name of every block's jitted call; autodiff keeps it on the transformed calls."""


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "convs": jax.checkpoint_policies.dots_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
"""What a block keeps for its backward pass: everything (none); only its convolutions'
outputs, recomputing normalisations, activations and pools (convs); only its inputs,
recomputing its forward (full). Gradients are the same; memory and time differ."""

_REMAT: contextvars.ContextVar[str] = contextvars.ContextVar("nasax_remat", default="none")


def _traced_with(setting: contextvars.ContextVar, value: Any, fn: Callable) -> Callable:
    """`fn`, traced with `setting` at `value`. A new function each time: JAX caches traces
    by function, so a trace made under one setting is never reused under another."""

    @functools.wraps(fn)
    def traced(*args: Any) -> Any:
        token = setting.set(value)
        try:
            return fn(*args)
        finally:
            setting.reset(token)

    return traced


def rematerialized(fn: Callable, remat: str) -> Callable:
    """`fn`, whose blocks keep only what `remat` (a key of `REMAT_POLICIES`) saves."""
    return _traced_with(_REMAT, remat, fn)


_FORWARD_MODE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "nasax_forward_mode", default=False
)


def forward_mode() -> bool:
    """Whether ops are being traced for forward-mode autodiff (`forward_differentiable`):
    then they take forms without custom VJPs, which `jax.jvp` cannot push through."""
    return _FORWARD_MODE.get()


def forward_differentiable(fn: Callable) -> Callable:
    """`fn`, traced with every op in a form `jax.jvp` can differentiate, also through its
    gradient (forward over reverse). The CPU forms with custom VJPs are left out; the
    values and gradients are the same."""
    return _traced_with(_FORWARD_MODE, True, fn)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def nasax_block(
    method: Callable,
    graphdef: nnx.GraphDef,
    treedef: Any,
    statics: tuple,
    remat: str,
    forward: bool,
    the_tap: taps.Tap | None,
    state: Any,
    arrays: tuple,
    tap_inputs: dict[str, jax.Array],
) -> tuple[Any, nnx.State, taps.Totals]:
    """One block call: the module rebuilt from `state`, `method` applied, and the
    BatchNorm statistics it set returned (the only state a block may change), with the
    totals of a tap (`nasax.engine.taps`; none without one). `remat`, `forward` and the
    tap are the trace settings the method's ops read, so they key the trace."""

    def applied(state: Any, arrays: tuple, tap_inputs: dict) -> tuple[Any, nnx.State, dict]:
        module = nnx.merge(graphdef, state)
        leaves, it = [], iter(arrays)
        for static in statics:
            leaves.append(next(it) if static is _ARRAY else static)
        args, kwargs = jax.tree.unflatten(treedef, leaves)
        stats = nnx.to_flat_state(nnx.state(module, nnx.BatchStat))
        before = {path: v[...] for path, v in stats}
        if the_tap is None:
            out, totals = method(module, *args, **kwargs), {}
        else:
            out, totals = taps.nested_call(
                the_tap, tap_inputs, lambda: method(module, *args, **kwargs)
            )
        after = nnx.to_flat_state(nnx.state(module, nnx.BatchStat))
        # Only the statistics the call set (none in evaluation), so a block that changes
        # nothing changes nothing outside either (and may run inside any control flow).
        changed = [(path, v) for path, v in after if v[...] is not before[path]]
        return out, nnx.from_flat_state(changed), totals

    apply = _traced_with(_FORWARD_MODE, forward, applied)
    policy = REMAT_POLICIES[remat]
    if policy is not None:
        apply = jax.checkpoint(apply, policy=policy)
    return apply(state, arrays, tap_inputs)


class _ArrayLeaf:
    """Marks the array positions among a call's static leaves."""

    def __repr__(self) -> str:
        return "<array>"


_ARRAY = _ArrayLeaf()


def block(method: Callable) -> Callable:
    """Decorator: the module method runs as one jitted block, keyed by the module's
    structure, the call's static arguments and its array shapes.

    Arrays (JAX or NumPy) are traced; every other argument (flags, None, Python numbers)
    is static. The method may update BatchNorm statistics and nothing else.
    """

    @functools.wraps(method)
    def call(self: nnx.Module, *args: Any, **kwargs: Any) -> Any:
        graphdef, state = nnx.split(self)
        leaves, treedef = jax.tree.flatten((args, kwargs))
        statics = tuple(_ARRAY if _is_array(x) else x for x in leaves)
        arrays = tuple(x for x in leaves if _is_array(x))
        remat, forward = _REMAT.get(), _FORWARD_MODE.get()
        found = taps.current()
        the_tap, tap_inputs = found if found is not None else (None, {})
        out, stats, totals = nasax_block(
            method, graphdef, treedef, statics, remat, forward, the_tap, state, arrays, tap_inputs
        )
        if stats:
            nnx.update(self, stats)
        if the_tap is not None:
            taps.add_totals(totals)
        return out

    return call


UNFUSED = "unfused"
"""`separate_program` tag: compile without XLA's fusion pass on CPU."""

CPU_OPTIONS = {UNFUSED: {"xla_disable_hlo_passes": "fusion"}}
"""XLA options of tagged programs on CPU (elsewhere they compile with the defaults)."""


def separate_program(fn: Callable, tag: str) -> Callable:
    """`fn` (a pure function of arrays) as a program of its own in block execution, compiled
    with the options `tag` names (`UNFUSED`); in fused execution an ordinary nested call.

    For glue that XLA compiles badly inside a larger program: the pullback of a global-norm
    gradient clip over hundreds of parameter arrays never finished fusing on CPU (24 GB
    in minutes) and compiles in seconds on its own without fusion.
    """
    if tag not in CPU_OPTIONS:
        raise ValueError(f"separate_program: tag must be one of {list(CPU_OPTIONS)}, got {tag!r}")

    def program(*args: Any) -> Any:
        return fn(*args)

    program.__name__ = program.__qualname__ = f"{BLOCK_NAME}_{tag}"
    return jax.jit(program)


__all__ = [
    "BLOCK_NAME",
    "CPU_OPTIONS",
    "REMAT_POLICIES",
    "UNFUSED",
    "block",
    "forward_differentiable",
    "forward_mode",
    "rematerialized",
    "separate_program",
]
