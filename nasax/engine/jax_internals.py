"""Every use nasax makes of JAX's jaxpr internals, in one place.

Block execution (`nasax.engine.planning`) runs a traced step equation by equation, so it reads
jaxprs: their variables, the parameters of call, `cond` and `scan` equations, and the
binding of a primitive outside JAX's own interpreters. None of that is public API with a
stability promise, and JAX changes it in patch releases (jax 0.12.1 made a
`custom_jvp_call` equation impossible to re-bind from its stored parameters). Each
function here names what it relies on and what public API would replace it; the tested
versions are bounded in pyproject.toml and checked by `check_versions`.

Two JAX details are used elsewhere, each where it belongs: how a `PyTreeDef` pickles
(`jax._src.tree_util.default_registry`, named in the stored-plan allow-list of
`nasax.engine.plan_cache`), and the test of `release_if_crowded`, which counts a jitted
function's executables with `_cache_size()`. Everything else nasax calls is public API
(`jax.export`, `jax.jit(...).lower().compile()`, `jax.make_jaxpr`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
from jax.extend import core

# `jax.extend.core` is the supported home of the jaxpr types (JAX's extension API, which
# is versioned but may change between minor releases). Nothing public replaces it.
Var = core.Var
Literal = core.Literal
DropVar = core.DropVar
Jaxpr = core.Jaxpr
ClosedJaxpr = core.ClosedJaxpr
jaxpr_as_fun = core.jaxpr_as_fun


def _tested_bounds() -> dict[str, tuple[str, str]]:
    """{library: (lowest tested, first untested)} for jax and jaxlib, read from the bounds
    nasax was installed with (pyproject.toml), so the range is written down once. Empty
    when nasax runs without being installed."""
    try:
        requirements = importlib.metadata.requires("nasax") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    bounds = {}
    for requirement in requirements:
        name = re.match(r"[\w-]+", requirement)
        low = re.search(r">=\s*([\w.]+)", requirement)
        high = re.search(r"<\s*([\w.]+)", requirement)
        if name and name.group() in ("jax", "jaxlib") and low and high:
            bounds[name.group()] = (low.group(1), high.group(1))
    return bounds


TESTED = _tested_bounds()
"""The versions the suite passes on, {library: (at least, below)}: pyproject.toml's
bounds of jax and jaxlib (`.ci/constraints.txt` pins the exact ones CI runs)."""


def _release(version: str) -> tuple[int, ...]:
    """A version's release numbers (`0.12.0.1` -> (0, 12, 0, 1); suffixes dropped)."""
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:4])


def untested_versions() -> list[str]:
    """`name version` of each installed library outside its tested range (`TESTED`)."""
    found = []
    for name, (low, high) in TESTED.items():
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not _release(low) <= _release(version) < _release(high):
            found.append(f"{name} {version}")
    return found


class UntestedVersionWarning(UserWarning):
    """JAX is outside the versions nasax's execution engine was tested on."""


def tested_range() -> str:
    """The tested versions as a pip requirement, e.g. `jax>=0.10.2,<0.13`."""
    low, high = TESTED.get("jax", ("?", "?"))
    return f"jax>={low},<{high}"


def check_versions() -> None:
    """Warns once, in one line, when JAX is outside the tested range: block execution
    reads jaxprs, whose details change between releases, so results there are unknown."""
    untested = untested_versions()
    if untested:
        warnings.warn(
            f"nasax is tested with {tested_range()} and found {', '.join(untested)}; "
            f"install a tested version (pip install '{tested_range()}')",
            UntestedVersionWarning,
            stacklevel=2,
        )


# ------------------------------------------------------------------ reading equations


def primitive_name(eqn: Any) -> str:
    """The name of an equation's primitive (`jit`, `cond`, `scan`, `add`, ...)."""
    return eqn.primitive.name


def is_call(eqn: Any) -> bool:
    """A `jax.jit` call: named `pjit` up to JAX 0.6, `jit` since (both are handled)."""
    return eqn.primitive.name in ("pjit", "jit")


def call_name(eqn: Any) -> str:
    """The name of a jitted call (its function's name; `params["name"]`)."""
    return str(eqn.params.get("name", ""))


def call_body(eqn: Any) -> Any:
    """The closed jaxpr a call or scan equation runs (`params["jaxpr"]`)."""
    return eqn.params["jaxpr"]


def cond_branches(eqn: Any) -> Sequence[Any]:
    """The closed jaxprs of a `cond` equation's branches (`params["branches"]`)."""
    return eqn.params["branches"]


def subjaxprs(eqn: Any) -> list[Any]:
    """The jaxprs an equation holds (call bodies, branches, loop bodies). Public
    `jax.extend.core.jaxprs_in_params` skips closed jaxprs, so this looks at both kinds."""
    found = []
    for value in eqn.params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, core.Jaxpr):
                found.append(v)
    return found


def scan_layout(eqn: Any) -> tuple[int, int, int, bool]:
    """A scan equation's (constants, carries, length, reverse) among its operands. JAX
    0.10 names the counts `num_consts` and `num_carry`; JAX 0.12 groups the operands in a
    flat tree `ft_in` of (constants, carries, scanned inputs)."""
    params, n_in = eqn.params, len(eqn.invars)
    if "num_consts" in params:
        counts = params["num_consts"], params["num_carry"]
    else:
        consts, carry, xs = (list(g) for g in params["ft_in"].update(list(range(n_in))).unpack())
        if consts + carry + xs != list(range(n_in)):
            raise NotImplementedError(f"scan operands out of order: {params['ft_in']}")
        counts = len(consts), len(carry)
    return (*counts, int(params["length"]), bool(params["reverse"]))


def bind(eqn: Any, args: Sequence[Any]) -> list[Any]:
    """Evaluates one equation on `args`, as `jax.core.eval_jaxpr` does: the stored
    parameters are turned into bind parameters first (`get_bind_params`), which rebuilds
    the functions of `custom_jvp_call`/`custom_vjp_call` equations, under the equation's
    context (its compute type, thread resources). Older JAX returned `(subfuns, params)`
    from `get_bind_params`; newer returns the parameters with the functions inside.
    Always a list of outputs. Public replacement: `jax.core.eval_jaxpr` of a jaxpr
    holding the equation alone, at one more trace per call."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns: Sequence[Any] = ()
    if isinstance(params, tuple):
        subfuns, params = params
    ctx = getattr(eqn, "ctx", None)
    manager = getattr(ctx, "manager", None) or contextlib.nullcontext()
    with manager:
        outs = eqn.primitive.bind(*subfuns, *args, **params)
    return list(outs) if eqn.primitive.multiple_results else [outs]


def segment_jaxpr(eqns: Sequence[Any], invars: list[Any], outvars: list[Any]) -> Any:
    """A closed jaxpr of a run of equations, with the given inputs and outputs. Building
    a jaxpr by hand has no public API; `jax.make_jaxpr` of a function that binds the
    equations would trace them again."""
    effects = frozenset().union(*(e.effects for e in eqns))
    info = core.DebugInfo("glue", "nasax.engine.planning", None, None)
    return core.ClosedJaxpr(core.Jaxpr([], invars, outvars, list(eqns), effects, info), [])


def is_tracer(x: Any) -> bool:
    """Whether `x` is being traced by an outer transformation (`jax.core.Tracer`)."""
    return isinstance(x, jax.core.Tracer)


__all__ = [
    "TESTED",
    "ClosedJaxpr",
    "DropVar",
    "Jaxpr",
    "Literal",
    "UntestedVersionWarning",
    "Var",
    "bind",
    "call_body",
    "call_name",
    "check_versions",
    "cond_branches",
    "is_call",
    "is_tracer",
    "jaxpr_as_fun",
    "primitive_name",
    "scan_layout",
    "segment_jaxpr",
    "subjaxprs",
    "tested_range",
    "untested_versions",
]

check_versions()
