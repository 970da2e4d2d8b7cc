"""Stored programs: a plan made portable, so it can be kept on disk and run in another
process (`nasax.engine.plan_cache`)."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from nasax.engine import jax_internals as jx
from nasax.engine.planning import (
    OPTIONS,
    Lit,
    Plan,
    atom_spec,
    distinct_jobs,
    is_drop,
    job_key,
    largest_first,
    segment_callable,
)


def programs_only(plan: Plan) -> Plan:
    """`plan` with its segments bound op by op made programs too, so every item that
    computes is one executable (what a stored plan holds)."""
    new = object.__new__(Plan)
    new.__dict__.update(plan.__dict__)
    items = []
    for item in plan.items:
        if item.kind == "segment" and item.run is None:
            run = segment_callable(item.eqns, item.invars, item.outvars)
            item = item._replace(run=run, eqns=())
        elif item.kind == "cond":
            item = item._replace(run=[programs_only(b) for b in item.run])
        elif item.kind in ("scan", "inline"):
            item = item._replace(run=programs_only(item.run))
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
        return cls(exported, specs, OPTIONS.get(id(fn)))

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


def stored_programs(plan: Plan) -> list[StoredProgram]:
    """The distinct stored programs of a plan (nested plans included), each once."""
    found: dict[int, StoredProgram] = {}
    for item in plan.items:
        for run in item.run if isinstance(item.run, list) else [item.run]:
            if isinstance(run, Plan):
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


def portable(plan: Plan) -> Plan:
    """`plan` made of stored programs, numbered variables and literal values only, so
    it can be stored and run in another process (`nasax.engine.plan_cache`)."""
    plan = programs_only(plan)
    jobs = largest_first(list(distinct_jobs(plan).values()))
    workers = os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # export one, compile another
        done = pool.map(lambda job: StoredProgram.of(*job).compile(), jobs)
        compiled = {job_key(*job): program for job, program in zip(jobs, done)}
    ids: dict[Any, int] = {}

    def var(v: Any) -> Any:
        if isinstance(v, jx.Literal):  # plain NumPy: JAX's literal arrays do not pickle
            return Lit(np.asarray(v.val) if isinstance(v.val, jax.Array | np.ndarray) else v.val)
        return None if is_drop(v) else ids.setdefault(v, len(ids))

    def convert(p: Plan) -> Plan:
        new = object.__new__(Plan)
        new.constvars = [var(v) for v in p.constvars]
        new.consts = [np.asarray(c) if isinstance(c, np.ndarray) else c for c in p.consts]
        new.invars, new.outvars = [var(v) for v in p.invars], [var(v) for v in p.outvars]
        new.items = []
        for item in p.items:
            if item.kind in ("call", "segment"):
                atoms = item.ins if item.kind == "call" else item.invars
                run = compiled[job_key(item.run, [atom_spec(a) for a in atoms])]
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


__all__ = ["StoredProgram", "compile_all", "portable", "programs_only", "stored_programs"]
