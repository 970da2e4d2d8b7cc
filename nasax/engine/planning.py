"""Planning a traced step: its equations as items to run, block calls and glue segments.

`Plan` runs a traced step equation by equation: a block call dispatches one executable
per distinct jaxpr, compiled once; the glue between blocks (sums, optimizer updates,
metrics) runs as small jitted segments. Arrays stay on their devices throughout: the only
host work is Python dispatch, and one scalar read per `lax.cond` that holds blocks (the
branch is chosen on the host). A `scan` that holds blocks is iterated on the host; other
loops that hold blocks (`while_loop`) compile whole, as glue.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from nasax.engine import jax_internals as jx
from nasax.engine.marking import BLOCK_NAME, CPU_OPTIONS

_CONTROL = ("cond", "scan")
"""Control-flow primitives whose bodies may hold blocks: run by the interpreter."""


def _is_block(eqn: Any) -> bool:
    return jx.is_call(eqn) and BLOCK_NAME in jx.call_name(eqn)


_subjaxprs = jx.subjaxprs


@functools.cache
def _holds_blocks(jaxpr: Any) -> bool:
    return any(_is_block(e) or any(map(_holds_blocks, _subjaxprs(e))) for e in jaxpr.eqns)


@functools.cache
def _size(jaxpr: Any) -> int:
    """Equations in `jaxpr`, nested ones included: how long its program takes to compile,
    roughly (XLA's CPU compile time grows with the program's instructions)."""
    return sum(1 + sum(map(_size, _subjaxprs(e))) for e in jaxpr.eqns)


_SIZES: dict[int, int] = {}
"""`_size` of each jitted block and glue callable, by the callable's identity."""


def largest_first(jobs: Sequence[tuple[Callable, Any]]) -> list[tuple[Callable, Any]]:
    """`jobs` ordered to compile the largest programs first: on a few cores the long
    compiles then overlap the many short ones, rather than start last and run alone."""
    return sorted(jobs, key=lambda job: -_SIZES.get(id(job[0]), 0))


_CALLABLES: dict[int, tuple[Any, Callable]] = {}
"""Jitted callables of block jaxprs by identity (the jaxpr is kept so its id stays unique)."""


def _block_callable(closed: Any, name: str = "") -> Callable:
    hit = _CALLABLES.get(id(closed))
    if hit is None:
        options = None
        if jax.default_backend() == "cpu":
            tags = [tag for tag in CPU_OPTIONS if f"{BLOCK_NAME}_{tag}" in name]
            options = CPU_OPTIONS[tags[0]] if tags else None
        jitted = jax.jit(jx.jaxpr_as_fun(closed), compiler_options=options)
        hit = _CALLABLES[id(closed)] = (closed, jitted)
        _SIZES[id(jitted)] = _size(closed.jaxpr)
        if options:
            OPTIONS[id(jitted)] = options
    return hit[1]


OPTIONS: dict[int, dict[str, str]] = {}
"""XLA options of the block callables compiled with any, by the callable's identity."""


EAGER_SEGMENT_MAX = 8
"""Glue runs of up to this many equations are bound one by one rather than compiled: JAX
caches each primitive by shape, so the same small op at many positions compiles once."""

_SEGMENTS: dict[str, Callable] = {}
"""Jitted glue segments by their printed jaxpr, so identical segments compile once."""


def segment_callable(eqns: Sequence[Any], invars: list[Any], outvars: list[Any]) -> Callable:
    """A run of glue equations as one jitted function of its free variables."""
    closed = jx.segment_jaxpr(eqns, invars, outvars)
    key = str(closed)  # variables are renamed in order, so equal structure prints equal
    fn = _SEGMENTS.get(key)
    if fn is None:
        fn = _SEGMENTS[key] = jax.jit(jx.jaxpr_as_fun(closed))
        _SIZES[id(fn)] = _size(closed.jaxpr)
    return fn


class Item(NamedTuple):
    """One thing a plan runs: a block call, a glue segment, or control flow holding blocks."""

    kind: str  # "call", "segment", "cond", "scan" or "inline"
    run: Any  # the callable, the sub-plan(s), or None: a short segment bound op by op
    invars: list[Any]  # the variables it reads
    outvars: list[Any]  # what it defines (None or a DropVar: an output nobody reads)
    eqns: tuple[Any, ...]  # a segment bound op by op: its equations; else ()
    free: tuple[Any, ...] = ()  # variables no later item reads
    ins: tuple[Any, ...] = ()  # the call's arguments in order, literals included (not segments)
    params: tuple[Any, ...] = ()  # a scan's (num_consts, num_carry, length, reverse)


class Lit(NamedTuple):
    """A literal argument in a portable plan (jaxpr literals do not outlive their trace)."""

    val: Any


def _is_special(eqn: Any) -> bool:
    """A block call, or control flow / a plain call that holds blocks somewhere inside."""
    if _is_block(eqn):
        return True
    return (jx.primitive_name(eqn) in _CONTROL or jx.is_call(eqn)) and any(
        map(_holds_blocks, _subjaxprs(eqn))
    )


def _schedule(eqns: Sequence[Any], special: Sequence[bool]) -> list[list[int]]:
    """Equation indices in a valid order, as groups: a special equation alone, or a run of
    glue. Glue runs only when a block needs it, just before that block; glue that no
    block needs (optimizer updates, metrics) runs last, as one run."""
    producer: dict[Any, int] = {}
    deps: list[list[int]] = []
    last_effect = None
    for i, eqn in enumerate(eqns):
        d = {producer[v] for v in eqn.invars if isinstance(v, jx.Var) and v in producer}
        if eqn.effects:  # effects keep their order
            if last_effect is not None:
                d.add(last_effect)
            last_effect = i
        deps.append(sorted(d))
        for v in eqn.outvars:
            producer[v] = i
    emitted = [False] * len(eqns)

    def glue_closure(i: int) -> list[int]:
        """The glue equations `i` needs that have not run yet, in their original order."""
        found, stack = set(), [d for d in deps[i] if not special[d] and not emitted[d]]
        while stack:
            j = stack.pop()
            if j not in found:
                found.add(j)
                stack.extend(d for d in deps[j] if not special[d] and not emitted[d])
        return sorted(found)

    groups: list[list[int]] = []
    for i in range(len(eqns)):  # the original order is a valid order of the specials
        if not special[i]:
            continue
        run = glue_closure(i)
        if run:
            groups.append(run)
            for j in run:
                emitted[j] = True
        groups.append([i])
        emitted[i] = True
    tail = [i for i in range(len(eqns)) if not emitted[i]]
    if tail:
        groups.append(tail)
    return groups


class Plan:
    """A jaxpr as a list of items to run: block calls, glue segments, control flow."""

    def __init__(self, jaxpr: Any, consts: Sequence[Any]) -> None:
        self.constvars, self.consts = list(jaxpr.constvars), list(consts)
        self.invars, self.outvars = list(jaxpr.invars), list(jaxpr.outvars)
        eqns = jaxpr.eqns
        special = [_is_special(e) for e in eqns]
        items = []
        for group in _schedule(eqns, special):
            if special[group[0]]:
                items.append(_special_item(eqns[group[0]]))
            else:
                glue = tuple(eqns[i] for i in group)
                defined = {v for e in glue for v in e.outvars}
                invars = _unique(
                    v for e in glue for v in e.invars if isinstance(v, jx.Var) and v not in defined
                )
                items.append(Item("segment", None, invars, [], glue))
        self.items = self._finish(items)

    def _finish(self, items: list[Item]) -> list[Item]:
        """Adds what each item frees, and gives segments their outputs and callables."""
        outputs = {v for v in self.outvars if isinstance(v, jx.Var)}
        live: set[Any] = set(outputs)
        done: list[Item] = []
        for item in reversed(items):
            if item.kind == "segment":
                outvars = _unique(
                    v for e in item.eqns for v in e.outvars if not is_drop(v) and v in live
                )
                if len(item.eqns) <= EAGER_SEGMENT_MAX:
                    item = item._replace(outvars=outvars)
                else:
                    run = segment_callable(item.eqns, item.invars, outvars)
                    item = item._replace(run=run, outvars=outvars, eqns=())
            free = tuple(v for v in _unique(item.invars) if v not in live)
            live.update(item.invars)
            done.append(item._replace(free=free))
        return done[::-1]

    def run(self, args: Sequence[Any], record: list | None = None) -> list[Any]:
        """Runs the plan on `args`; `record` collects (program, argument types) and the
        primitives bound alone, for `BlockProgram.as_text`."""
        env: dict[Any, Any] = dict(zip(self.constvars, self.consts))
        env.update(zip(self.invars, args))

        def read(atom: Any) -> Any:
            return atom.val if isinstance(atom, jx.Literal | Lit) else env[atom]

        for item in self.items:
            kind, fn = item.kind, item.run
            if kind == "segment" and fn is None:
                if record is not None:
                    record += [("eager", jx.primitive_name(eqn)) for eqn in item.eqns]
                for eqn in item.eqns:
                    outs = jx.bind(eqn, [read(v) for v in eqn.invars])
                    env.update((v, x) for v, x in zip(eqn.outvars, outs) if not is_drop(v))
                # intermediates of the run that nothing later reads
                for eqn in item.eqns:
                    for v in eqn.outvars:
                        if v not in item.outvars:
                            env.pop(v, None)
            else:
                ins = (
                    [env[v] for v in item.invars]
                    if kind == "segment"
                    else [read(v) for v in item.ins]
                )
                if kind in ("call", "segment"):
                    if record is not None:
                        specs = (spec(jax.typeof(x), getattr(x, "sharding", None)) for x in ins)
                        record.append((fn, tuple(specs)))
                    outs = fn(*ins)
                elif kind == "cond":
                    # The branch is picked on the host: one scalar, read once per call.
                    index = int(jax.device_get(ins[0]))
                    outs = fn[min(max(index, 0), len(fn) - 1)].run(ins[1:], record)
                elif kind == "scan":
                    outs = _run_scan(fn, item.params, ins, record)
                else:
                    outs = fn.run(ins, record)
                env.update((v, x) for v, x in zip(item.outvars, outs) if not is_drop(v))
            for v in item.free:
                env.pop(v, None)
        return [read(v) for v in self.outvars]


def _special_item(eqn: Any) -> Item:
    invars = [v for v in eqn.invars if isinstance(v, jx.Var)]
    outvars, ins = list(eqn.outvars), tuple(eqn.invars)
    name = jx.primitive_name(eqn)
    if _is_block(eqn):
        fn = _block_callable(jx.call_body(eqn), jx.call_name(eqn))
        return Item("call", fn, invars, outvars, (), ins=ins)
    if name == "cond":
        plans = [Plan(b.jaxpr, b.consts) for b in jx.cond_branches(eqn)]
        return Item("cond", plans, invars, outvars, (), ins=ins)
    body = jx.call_body(eqn)  # scan body, or a plain jitted call with blocks inside
    if name == "scan":
        scan = jx.scan_layout(eqn)
        return Item(
            "scan", Plan(body.jaxpr, body.consts), invars, outvars, (), ins=ins, params=scan
        )
    return Item("inline", Plan(body.jaxpr, body.consts), invars, outvars, (), ins=ins)


def compile_jobs(plan: Plan) -> list[tuple[Callable, list[jax.ShapeDtypeStruct]]]:
    """The plan's jitted callables (nested plans included) with their argument types."""
    jobs = []
    for item in plan.items:
        if item.kind == "call":
            jobs.append((item.run, [atom_spec(v) for v in item.ins]))
        elif item.kind == "segment" and item.run is not None:
            jobs.append((item.run, [spec(v.aval) for v in item.invars]))
        elif item.kind == "cond":
            for branch in item.run:
                jobs += compile_jobs(branch)
        elif item.kind in ("scan", "inline"):
            jobs += compile_jobs(item.run)
    return jobs


def spec(aval: Any, sharding: Any = None) -> jax.ShapeDtypeStruct:
    """An argument type for lowering: shape, dtype, weak type and (if known) sharding."""
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type, sharding=sharding)


def job_key(fn: Callable, specs: Sequence[jax.ShapeDtypeStruct]) -> tuple:
    return (id(fn), tuple((s.shape, s.dtype, s.weak_type) for s in specs))


def distinct_jobs(plan: Plan) -> dict[tuple, tuple[Callable, list[jax.ShapeDtypeStruct]]]:
    """`compile_jobs` without repeats, by `job_key`."""
    jobs: dict[tuple, tuple[Callable, list[jax.ShapeDtypeStruct]]] = {}
    for fn, specs in compile_jobs(plan):
        jobs.setdefault(job_key(fn, specs), (fn, specs))
    return jobs


def precompile(plan: Plan, workers: int | None = None) -> None:
    """Compiles every distinct program of `plan` before it first runs, several at a time
    (XLA compiles one program on one core). Later calls find them in JAX's caches."""
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        jobs = largest_first(list(distinct_jobs(plan).values()))
        for _ in pool.map(lambda job: job[0].lower(*job[1]).compile(), jobs):
            pass  # each compiled program is dropped once done; JAX's caches keep it


def atom_spec(atom: Any) -> jax.ShapeDtypeStruct:
    return spec(atom.aval)


def _run_scan(
    body: Plan, params: tuple[Any, ...], ins: list[Any], record: list | None = None
) -> list[Any]:
    """A scan whose body holds blocks, iterated on the host (its length is static)."""
    n_consts, n_carry, length, reverse = params
    consts, carry, xs = (
        ins[:n_consts],
        ins[n_consts : n_consts + n_carry],
        ins[n_consts + n_carry :],
    )
    ys: list[list[Any]] = []
    order = range(length - 1, -1, -1) if reverse else range(length)
    for i in order:
        outs = body.run([*consts, *carry, *(x[i] for x in xs)], record if i == order[0] else None)
        carry, y = outs[:n_carry], outs[n_carry:]
        ys.append(y)
    if reverse:
        ys.reverse()
    n_ys = len(body.outvars) - n_carry
    stacked = [_stack([y[j] for y in ys]) for j in range(n_ys)]
    return [*carry, *stacked]


@jax.jit
def _stack(values: list[jax.Array]) -> jax.Array:
    return jax.numpy.stack(values)


def is_drop(v: Any) -> bool:
    return v is None or isinstance(v, jx.DropVar)


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))


__all__ = [
    "EAGER_SEGMENT_MAX",
    "Item",
    "Lit",
    "Plan",
    "atom_spec",
    "compile_jobs",
    "distinct_jobs",
    "is_drop",
    "job_key",
    "largest_first",
    "precompile",
    "segment_callable",
    "spec",
]
