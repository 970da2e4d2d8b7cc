"""Block execution: compile each distinct block of a step once and reuse it wherever it recurs.

A supernet repeats a handful of distinct blocks (a mixed edge at given channels, size
and stride) dozens of times, and XLA compiles every copy of a fused step. Here a module
method marked `@block` runs as its own `jax.jit` call, so tracing a step with
`jax.make_jaxpr` leaves each block, and each block that autodiff transformed (its
linearised and transposed forms, at any order), as a call to a jaxpr that is *the same
object* wherever the block recurs. `BlockProgram` runs that traced step equation by
equation: a block call dispatches one executable per distinct jaxpr, compiled once; the
glue between blocks (sums, optimizer updates, metrics) runs as small jitted segments.
Arrays stay on their devices throughout: the only host work is Python dispatch, and one
scalar read per `lax.cond` that holds blocks (the branch is chosen on the host). A `scan`
that holds blocks is iterated on the host; other loops that hold blocks (`while_loop`)
compile whole, as glue.

Under an outer `jax.jit` (the fused mode) a block is an ordinary nested call that XLA
inlines, so the same model code serves both modes.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from nasax import jax_internals as jx
from nasax import plan_cache

BLOCK_NAME = "nasax_block"
"""The name of every block's jitted call; autodiff keeps it on the transformed calls."""

_CONTROL = ("cond", "scan")
"""Control-flow primitives whose bodies may hold blocks: run by the interpreter."""


# ------------------------------------------------------------------ marking blocks


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


def resolve_remat(remat: str, execution: str) -> str:
    """`auto` keeps the convolutions' outputs in block execution, where every block's
    residuals are separate buffers (measured: the same step time at the digits size, 46%
    of the memory at the DARTS paper's size), and everything in fused execution, where
    XLA plans the memory of the whole step."""
    if remat == "auto":
        return "convs" if resolve_execution(execution) == "blocks" else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {('auto', *REMAT_POLICIES)}, got {remat!r}")
    return remat


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


def _rematerialized(fn: Callable, remat: str) -> Callable:
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


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def nasax_block(
    method: Callable,
    graphdef: nnx.GraphDef,
    treedef: Any,
    statics: tuple,
    remat: str,
    forward: bool,
    state: Any,
    arrays: tuple,
) -> tuple[Any, nnx.State]:
    """One block call: the module rebuilt from `state`, `method` applied, and the
    BatchNorm statistics it set returned (the only state a block may change). `remat`
    and `forward` are the trace settings the method's ops read, so they key the trace."""

    def applied(state: Any, arrays: tuple) -> tuple[Any, nnx.State]:
        module = nnx.merge(graphdef, state)
        leaves, it = [], iter(arrays)
        for static in statics:
            leaves.append(next(it) if static is _ARRAY else static)
        args, kwargs = jax.tree.unflatten(treedef, leaves)
        stats = nnx.to_flat_state(nnx.state(module, nnx.BatchStat))
        before = {path: v[...] for path, v in stats}
        out = method(module, *args, **kwargs)
        after = nnx.to_flat_state(nnx.state(module, nnx.BatchStat))
        # Only the statistics the call set (none in evaluation), so a block that changes
        # nothing changes nothing outside either (and may run inside any control flow).
        changed = [(path, v) for path, v in after if v[...] is not before[path]]
        return out, nnx.from_flat_state(changed)

    apply = _traced_with(_FORWARD_MODE, forward, applied)
    policy = REMAT_POLICIES[remat]
    if policy is not None:
        apply = jax.checkpoint(apply, policy=policy)
    return apply(state, arrays)


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
        out, stats = nasax_block(method, graphdef, treedef, statics, remat, forward, state, arrays)
        if stats:
            nnx.update(self, stats)
        return out

    return call


# ------------------------------------------------------------------ running a traced step


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


def _largest_first(jobs: Sequence[tuple[Callable, Any]]) -> list[tuple[Callable, Any]]:
    """`jobs` ordered to compile the largest programs first: on a few cores the long
    compiles then overlap the many short ones, rather than start last and run alone."""
    return sorted(jobs, key=lambda job: -_SIZES.get(id(job[0]), 0))


_CALLABLES: dict[int, tuple[Any, Callable]] = {}
"""Jitted callables of block jaxprs by identity (the jaxpr is kept so its id stays unique)."""

UNFUSED = "unfused"
"""`separate_program` tag: compile without XLA's fusion pass on CPU."""

_CPU_OPTIONS = {UNFUSED: {"xla_disable_hlo_passes": "fusion"}}
"""XLA options of tagged programs on CPU (elsewhere they compile with the defaults)."""


def _block_callable(closed: Any, name: str = "") -> Callable:
    hit = _CALLABLES.get(id(closed))
    if hit is None:
        options = None
        if jax.default_backend() == "cpu":
            tags = [tag for tag in _CPU_OPTIONS if f"{BLOCK_NAME}_{tag}" in name]
            options = _CPU_OPTIONS[tags[0]] if tags else None
        jitted = jax.jit(jx.jaxpr_as_fun(closed), compiler_options=options)
        hit = _CALLABLES[id(closed)] = (closed, jitted)
        _SIZES[id(jitted)] = _size(closed.jaxpr)
        if options:
            _OPTIONS[id(jitted)] = options
    return hit[1]


_OPTIONS: dict[int, dict[str, str]] = {}
"""XLA options of the block callables compiled with any, by the callable's identity."""


def separate_program(fn: Callable, tag: str) -> Callable:
    """`fn` (a pure function of arrays) as a program of its own in block execution, compiled
    with the options `tag` names (`UNFUSED`); in fused execution an ordinary nested call.

    For glue that XLA compiles badly inside a larger program: the pullback of a global-norm
    gradient clip over hundreds of parameter arrays never finished fusing on CPU (24 GB
    in minutes) and compiles in seconds on its own without fusion.
    """
    if tag not in _CPU_OPTIONS:
        raise ValueError(f"separate_program: tag must be one of {list(_CPU_OPTIONS)}, got {tag!r}")

    def program(*args: Any) -> Any:
        return fn(*args)

    program.__name__ = program.__qualname__ = f"{BLOCK_NAME}_{tag}"
    return jax.jit(program)


EAGER_SEGMENT_MAX = 8
"""Glue runs of up to this many equations are bound one by one rather than compiled: JAX
caches each primitive by shape, so the same small op at many positions compiles once."""

_SEGMENTS: dict[str, Callable] = {}
"""Jitted glue segments by their printed jaxpr, so identical segments compile once."""


def _segment_callable(eqns: Sequence[Any], invars: list[Any], outvars: list[Any]) -> Callable:
    """A run of glue equations as one jitted function of its free variables."""
    closed = jx.segment_jaxpr(eqns, invars, outvars)
    key = str(closed)  # variables are renamed in order, so equal structure prints equal
    fn = _SEGMENTS.get(key)
    if fn is None:
        fn = _SEGMENTS[key] = jax.jit(jx.jaxpr_as_fun(closed))
        _SIZES[id(fn)] = _size(closed.jaxpr)
    return fn


class _Item(NamedTuple):
    """One thing a plan runs: a block call, a glue segment, or control flow holding blocks."""

    kind: str  # "call", "segment", "cond", "scan" or "inline"
    run: Any  # the callable, the sub-plan(s), or None: a short segment bound op by op
    invars: list[Any]  # the variables it reads
    outvars: list[Any]  # what it defines (None or a DropVar: an output nobody reads)
    eqns: tuple[Any, ...]  # a segment bound op by op: its equations; else ()
    free: tuple[Any, ...] = ()  # variables no later item reads
    ins: tuple[Any, ...] = ()  # the call's arguments in order, literals included (not segments)
    params: tuple[Any, ...] = ()  # a scan's (num_consts, num_carry, length, reverse)


class _Lit(NamedTuple):
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


class _Plan:
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
                items.append(_Item("segment", None, invars, [], glue))
        self.items = self._finish(items)

    def _finish(self, items: list[_Item]) -> list[_Item]:
        """Adds what each item frees, and gives segments their outputs and callables."""
        outputs = {v for v in self.outvars if isinstance(v, jx.Var)}
        live: set[Any] = set(outputs)
        done: list[_Item] = []
        for item in reversed(items):
            if item.kind == "segment":
                outvars = _unique(
                    v for e in item.eqns for v in e.outvars if not _is_drop(v) and v in live
                )
                if len(item.eqns) <= EAGER_SEGMENT_MAX:
                    item = item._replace(outvars=outvars)
                else:
                    run = _segment_callable(item.eqns, item.invars, outvars)
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
            return atom.val if isinstance(atom, jx.Literal | _Lit) else env[atom]

        for item in self.items:
            kind, fn = item.kind, item.run
            if kind == "segment" and fn is None:
                if record is not None:
                    record += [("eager", jx.primitive_name(eqn)) for eqn in item.eqns]
                for eqn in item.eqns:
                    outs = jx.bind(eqn, [read(v) for v in eqn.invars])
                    env.update((v, x) for v, x in zip(eqn.outvars, outs) if not _is_drop(v))
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
                        specs = (_spec(jax.typeof(x), getattr(x, "sharding", None)) for x in ins)
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
                env.update((v, x) for v, x in zip(item.outvars, outs) if not _is_drop(v))
            for v in item.free:
                env.pop(v, None)
        return [read(v) for v in self.outvars]


def _special_item(eqn: Any) -> _Item:
    invars = [v for v in eqn.invars if isinstance(v, jx.Var)]
    outvars, ins = list(eqn.outvars), tuple(eqn.invars)
    name = jx.primitive_name(eqn)
    if _is_block(eqn):
        fn = _block_callable(jx.call_body(eqn), jx.call_name(eqn))
        return _Item("call", fn, invars, outvars, (), ins=ins)
    if name == "cond":
        plans = [_Plan(b.jaxpr, b.consts) for b in jx.cond_branches(eqn)]
        return _Item("cond", plans, invars, outvars, (), ins=ins)
    body = jx.call_body(eqn)  # scan body, or a plain jitted call with blocks inside
    if name == "scan":
        scan = jx.scan_layout(eqn)
        return _Item(
            "scan", _Plan(body.jaxpr, body.consts), invars, outvars, (), ins=ins, params=scan
        )
    return _Item("inline", _Plan(body.jaxpr, body.consts), invars, outvars, (), ins=ins)


def _compile_jobs(plan: _Plan) -> list[tuple[Callable, list[jax.ShapeDtypeStruct]]]:
    """The plan's jitted callables (nested plans included) with their argument types."""
    jobs = []
    for item in plan.items:
        if item.kind == "call":
            jobs.append((item.run, [_atom_spec(v) for v in item.ins]))
        elif item.kind == "segment" and item.run is not None:
            jobs.append((item.run, [_spec(v.aval) for v in item.invars]))
        elif item.kind == "cond":
            for branch in item.run:
                jobs += _compile_jobs(branch)
        elif item.kind in ("scan", "inline"):
            jobs += _compile_jobs(item.run)
    return jobs


def _spec(aval: Any, sharding: Any = None) -> jax.ShapeDtypeStruct:
    """An argument type for lowering: shape, dtype, weak type and (if known) sharding."""
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type, sharding=sharding)


def _job_key(fn: Callable, specs: Sequence[jax.ShapeDtypeStruct]) -> tuple:
    return (id(fn), tuple((s.shape, s.dtype, s.weak_type) for s in specs))


def _distinct_jobs(plan: _Plan) -> dict[tuple, tuple[Callable, list[jax.ShapeDtypeStruct]]]:
    """`_compile_jobs` without repeats, by `_job_key`."""
    jobs: dict[tuple, tuple[Callable, list[jax.ShapeDtypeStruct]]] = {}
    for fn, specs in _compile_jobs(plan):
        jobs.setdefault(_job_key(fn, specs), (fn, specs))
    return jobs


def precompile(plan: _Plan, workers: int | None = None) -> None:
    """Compiles every distinct program of `plan` before it first runs, several at a time
    (XLA compiles one program on one core). Later calls find them in JAX's caches."""
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        jobs = _largest_first(list(_distinct_jobs(plan).values()))
        for _ in pool.map(lambda job: job[0].lower(*job[1]).compile(), jobs):
            pass  # each compiled program is dropped once done; JAX's caches keep it


def _atom_spec(atom: Any) -> jax.ShapeDtypeStruct:
    return _spec(atom.aval)


def _programs_only(plan: _Plan) -> _Plan:
    """`plan` with its segments bound op by op made programs too, so every item that
    computes is one executable (what a stored plan holds)."""
    new = object.__new__(_Plan)
    new.__dict__.update(plan.__dict__)
    items = []
    for item in plan.items:
        if item.kind == "segment" and item.run is None:
            run = _segment_callable(item.eqns, item.invars, item.outvars)
            item = item._replace(run=run, eqns=())
        elif item.kind == "cond":
            item = item._replace(run=[_programs_only(b) for b in item.run])
        elif item.kind in ("scan", "inline"):
            item = item._replace(run=_programs_only(item.run))
        items.append(item)
    new.items = items
    return new


class StoredProgram:
    """A compiled program that is stored as its StableHLO (`jax.export`) and compiled
    again when loaded, through JAX's on-disk cache: on a warm cache that is a read.

    (XLA 0.10's CPU executables do not serialize reliably on their own: some that
    deduplicate identical kernels load without them in another process.)
    """

    def __init__(self, exported: Any, specs: Sequence[jax.ShapeDtypeStruct], options: Any) -> None:
        self.exported, self.specs, self.options = exported, tuple(specs), options
        self.compiled: Any = None

    @classmethod
    def of(cls, fn: Callable, specs: Sequence[jax.ShapeDtypeStruct]) -> StoredProgram:
        """Exports the jitted `fn` at `specs` (not compiled yet: `compile_all`)."""
        exported = jax.export.export(fn)(*specs)
        return cls(exported, specs, _OPTIONS.get(id(fn)))

    def compile(self) -> StoredProgram:
        if self.compiled is None:
            jitted = jax.jit(self.exported.call, compiler_options=self.options)
            self.compiled = jitted.lower(*self.specs).compile()
        return self

    def __call__(self, *args: Any) -> Any:
        return self.compiled(*args)

    def __getstate__(self) -> dict[str, Any]:
        specs = [(s.shape, str(s.dtype), s.weak_type) for s in self.specs]
        return {"hlo": bytes(self.exported.serialize()), "specs": specs, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        specs = [jax.ShapeDtypeStruct(s, np.dtype(d), weak_type=w) for s, d, w in state["specs"]]
        self.__init__(jax.export.deserialize(bytearray(state["hlo"])), specs, state["options"])


def stored_programs(plan: _Plan) -> list[StoredProgram]:
    """The distinct stored programs of a plan (nested plans included), each once."""
    found: dict[int, StoredProgram] = {}
    for item in plan.items:
        for run in item.run if isinstance(item.run, list) else [item.run]:
            if isinstance(run, _Plan):
                found.update((id(p), p) for p in stored_programs(run))
            elif isinstance(run, StoredProgram):
                found[id(run)] = run
    return list(found.values())


def compile_all(programs: Sequence[StoredProgram], workers: int | None = None) -> None:
    """Compiles stored programs several at a time (each compile, or cache read, on one core)."""
    workers = workers or os.cpu_count() or 1
    largest_first = sorted(programs, key=lambda p: -len(p.exported.mlir_module_serialized))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(StoredProgram.compile, largest_first))


def portable(plan: _Plan) -> _Plan:
    """`plan` made of stored programs, numbered variables and literal values only, so
    it can be stored and run in another process (`nasax.plan_cache`)."""
    plan = _programs_only(plan)
    jobs = _largest_first(list(_distinct_jobs(plan).values()))
    workers = os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # export one, compile another
        done = pool.map(lambda job: StoredProgram.of(*job).compile(), jobs)
        compiled = {_job_key(*job): program for job, program in zip(jobs, done)}
    ids: dict[Any, int] = {}

    def var(v: Any) -> Any:
        if isinstance(v, jx.Literal):  # plain NumPy: JAX's literal arrays do not pickle
            return _Lit(np.asarray(v.val) if isinstance(v.val, jax.Array | np.ndarray) else v.val)
        return None if _is_drop(v) else ids.setdefault(v, len(ids))

    def convert(p: _Plan) -> _Plan:
        new = object.__new__(_Plan)
        new.constvars = [var(v) for v in p.constvars]
        new.consts = [np.asarray(c) if isinstance(c, np.ndarray) else c for c in p.consts]
        new.invars, new.outvars = [var(v) for v in p.invars], [var(v) for v in p.outvars]
        new.items = []
        for item in p.items:
            if item.kind in ("call", "segment"):
                atoms = item.ins if item.kind == "call" else item.invars
                run = compiled[_job_key(item.run, [_atom_spec(a) for a in atoms])]
            elif item.kind == "cond":
                run = [convert(b) for b in item.run]
            else:
                run = convert(item.run)
            new.items.append(
                item._replace(
                    run=run,
                    invars=[var(v) for v in item.invars],
                    outvars=[var(v) for v in item.outvars],
                    free=tuple(var(v) for v in item.free),
                    ins=tuple(var(v) for v in item.ins),
                )
            )
        return new

    return convert(plan)


def _run_scan(
    body: _Plan, params: tuple[Any, ...], ins: list[Any], record: list | None = None
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


def _is_drop(v: Any) -> bool:
    return v is None or isinstance(v, jx.DropVar)


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))


class BlockProgram:
    """`fn` traced once at the example arguments' shapes and run block by block.

    Calling it with arguments of the same structure and shapes runs every distinct
    block through one compiled executable. Outputs match `jax.jit(fn)` up to float
    rounding (XLA fuses differently across block boundaries).
    """

    def __init__(self, fn: Callable, *example_args: Any, cache_key: str | None = None) -> None:
        """`cache_key` names what `fn` computes beyond its code and its arguments' types
        (`nasax.plan_cache`): given one, the plan is loaded from the on-disk store when it
        is there, and stored after tracing when it is not."""
        self.in_tree = jax.tree.structure(example_args)
        arrays = [x for x in jax.tree.leaves(example_args) if isinstance(x, jax.Array)]
        # One device: the programs' argument types are known from the jaxpr. (Sharded
        # arguments compile at their first call, with the shardings they arrive with.)
        one_device = all(len(x.devices()) == 1 for x in arrays)
        path = None
        if cache_key is not None and one_device:
            path = plan_cache.plan_path(cache_key, example_args)
        stored = None if path is None else plan_cache.load(path)
        self.loaded = stored is not None
        if stored is not None:
            self.plan, self.out_tree = stored
        else:
            closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
            self.out_tree = jax.tree.structure(out_shape)
            self.plan = _Plan(closed.jaxpr, closed.consts)
            if path is not None:
                # Run what is stored, so a first run and its reruns compute alike.
                self.plan = portable(self.plan)
                plan_cache.save(path, self.plan, self.out_tree)
            elif one_device:
                precompile(self.plan)
        self.ran: list[tuple[Any, ...]] | None = None

    def as_text(self) -> str:
        """The HLO of every distinct program the first call ran (as compiled for the
        shardings it got), and the names of the primitives bound one by one."""
        if self.ran is None:
            raise RuntimeError("BlockProgram.as_text: call the program once first")
        texts, seen = [], set()
        for entry in self.ran:
            if entry[0] == "eager":
                texts.append(f"// bound alone: {entry[1]}")
                continue
            fn, specs = entry
            key = (id(fn), specs)
            if key not in seen:
                seen.add(key)
                if isinstance(fn, StoredProgram):
                    compiled = fn.compiled
                else:
                    compiled = fn.lower(*specs).compile()
                texts.append(compiled.as_text())
        return "\n".join(texts)

    def __call__(self, *args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        if tree != self.in_tree:
            raise ValueError(
                f"BlockProgram: arguments {tree} differ from the traced {self.in_tree}"
            )
        record = None
        if self.ran is None:  # keep what the first call compiled, for as_text
            record = self.ran = []
        return jax.tree.unflatten(self.out_tree, self.plan.run(leaves, record))


def block_jit(
    fn: Callable, donate_argnums: int | Sequence[int] = (), *, cache_key: str | None = None
) -> Callable:
    """Like `jax.jit(fn)`, but each call signature is traced once into a `BlockProgram`
    (whose plan is stored on disk under `cache_key`, if given).

    `donate_argnums` is accepted for the same call shape as `jax.jit` and ignored: the
    programs of a block step are many, and the caller's arrays stay valid.
    """
    programs: dict[Any, BlockProgram] = {}

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        if any(map(jx.is_tracer, leaves)):
            return fn(*args)  # inside another transformation: part of its trace
        key = (tree, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
        program = programs.get(key)
        if program is None:
            program = programs[key] = BlockProgram(fn, *args, cache_key=cache_key)
        return program(*args)

    return call


EXECUTIONS = ("auto", "blocks", "fused")


def resolve_execution(execution: str) -> str:
    """`auto` picks per platform: blocks on CPU, where compiling a fused supernet step
    dominates a run, and the fused single program elsewhere (see benchmarks/README.md)."""
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
    if execution == "auto":
        return "blocks" if jax.default_backend() == "cpu" else "fused"
    return execution


def jit_for(execution: str, cache_key: str | None = None) -> Callable[..., Callable]:
    """`jax.jit` for the fused mode, `block_jit` for the block mode (after `auto` is
    resolved); a `cache_key` stores block plans (`BlockProgram`), keyed further by the
    jitted function's name."""
    if resolve_execution(execution) != "blocks":
        return jax.jit
    if cache_key is None:
        return block_jit

    def jit(fn: Callable, **kwargs: Any) -> Callable:
        name = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', repr(fn))}"
        return block_jit(fn, **kwargs, cache_key=f"{cache_key}|{name}")

    return jit


def compile_program(
    fn: Callable,
    example_args: Sequence[Any],
    execution: str,
    *,
    donate: bool = False,
    remat: str = "auto",
    cache_key: str | None = None,
) -> Callable:
    """`fn` ready to run at the shapes of `example_args`, compiled before it returns.

    Fused: one XLA program, ahead of time (`donate` donates the first argument). Blocks:
    the step traced once and every block and glue program compiled (on one device; on
    several, each compiles at its first call with the shardings it gets); single glue
    primitives compile at the first call. `remat` says what each block keeps for its
    backward pass (`REMAT_POLICIES`, or `auto`: `resolve_remat`), in either execution.
    `cache_key` (block execution) stores the plan on disk (`BlockProgram`).
    """
    remat = resolve_remat(remat, execution)
    fn = _rematerialized(fn, remat)
    if resolve_execution(execution) == "fused":
        jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
        return jitted.lower(*example_args).compile()
    key = None if cache_key is None else f"{cache_key}|remat={remat}"
    return BlockProgram(fn, *example_args, cache_key=key)


__all__ = [
    "BLOCK_NAME",
    "EXECUTIONS",
    "REMAT_POLICIES",
    "UNFUSED",
    "BlockProgram",
    "block",
    "block_jit",
    "compile_program",
    "jit_for",
    "resolve_execution",
    "resolve_remat",
    "separate_program",
]
