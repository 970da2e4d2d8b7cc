"""Block execution: compile each distinct block of a step once and reuse it wherever it recurs.

A supernet repeats a handful of distinct blocks (a mixed edge at given channels, size
and stride) dozens of times, and XLA compiles every copy of a fused step. A step whose
blocks are marked (`nasax.engine.marking.block`) is traced once with `jax.make_jaxpr`,
planned (`nasax.engine.planning`) and run block by block (`BlockProgram`); its plan may
be stored on disk (`nasax.engine.plan_cache`). The fused single program stays an option.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from nasax.engine import jax_internals as jx
from nasax.engine import plan_cache
from nasax.engine.marking import REMAT_POLICIES, rematerialized
from nasax.engine.planning import Plan, precompile
from nasax.engine.stored import StoredProgram, portable


class BlockProgram:
    """`fn` traced once at the example arguments' shapes and run block by block.

    Calling it with arguments of the same structure and shapes runs every distinct
    block through one compiled executable. Outputs match `jax.jit(fn)` up to float
    rounding (XLA fuses differently across block boundaries).
    """

    def __init__(self, fn: Callable, *example_args: Any, cache_key: str | None = None) -> None:
        """`cache_key` names what `fn` computes beyond its code and its arguments' types
        (`nasax.engine.plan_cache`): given one, the plan is loaded from the on-disk store when it
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
            self.plan = Plan(closed.jaxpr, closed.consts)
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
    fn = rematerialized(fn, remat)
    if resolve_execution(execution) == "fused":
        jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
        return jitted.lower(*example_args).compile()
    key = None if cache_key is None else f"{cache_key}|remat={remat}"
    return BlockProgram(fn, *example_args, cache_key=key)


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


__all__ = [
    "EXECUTIONS",
    "BlockProgram",
    "block_jit",
    "compile_program",
    "jit_for",
    "resolve_execution",
    "resolve_remat",
]
