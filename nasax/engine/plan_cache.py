"""Block plans kept on disk, so a rerun or a resume skips tracing, planning and lowering.

A block step's warm start was mostly work that gives the same result every time: tracing
the step (about half of it), planning the block calls and lowering every program to look
it up in JAX's cache. A stored plan holds the step's schedule, its constants and each
program as StableHLO (`nasax.engine.stored.StoredProgram`); loading it compiles each program
through JAX's on-disk cache, which on a warm cache is a read.

The trace is what made block execution safe to reuse, so the key must cover everything
the trace depends on:

- the caller's key (the config sections, data shapes and statistics the step is built from);
- the argument structure, shapes, dtypes and devices;
- the source of every nasax module the process had imported when it traced the plan (a
  module first imported by the trace included): the plan holds their hashes, and a
  load whose files differ is a miss, so editing a module a step never imports (a
  command, the tuner, another kind of task) keeps the stored plans;
- the source of the modules of the registered strategies, ops, spaces or skeletons the
  program uses (those the caller's key names, and those they name in turn: a space's
  ops);
- the JAX, jaxlib, Flax, Optax and NumPy versions, the platform, `XLA_FLAGS` and the JAX
  settings that change a trace.

Registered code without a source file (an interactive session) turns the store off for
the programs that use it. `run.plan_cache: false` (or NASAX_PLAN_CACHE=0) turns it off,
for registered code that reads state its source file does not hold.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import pickle
import re
import sys
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nasax.core.io import atomic_write_bytes
from nasax.core.registry import registered
from nasax.engine.stored import compile_all, stored_programs

FORMAT = 2
"""The stored layout's version; a change makes old files misses."""

_VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy")

_TRACE_SETTINGS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_dtype_promotion",
    "jax_threefry_partitionable",
    "jax_default_prng_impl",
)

log = logging.getLogger(__name__)


def own_sources() -> dict[str, str]:
    """Module name -> hash of its source file, for every nasax module this process has
    imported: what a plan traced now can depend on of nasax itself."""
    sources = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) if _is_own_module(name) else None
        if path and os.path.exists(path):
            sources[name] = _file_hash(path, os.stat(path).st_mtime_ns)
    return sources


def _sources_unchanged(sources: dict[str, str]) -> bool:
    """Whether each module of `sources` (`own_sources` when a plan was stored) has the same
    source file now; a module that is gone counts as changed."""
    for name, digest in sources.items():
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path is None:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                return False
            path = spec.origin if spec else None
        if not path or not os.path.exists(path):
            return False
        if _file_hash(path, os.stat(path).st_mtime_ns) != digest:
            return False
    return True


@functools.cache
def _file_hash(path: str, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _NoSource(Exception):
    """Registered code whose module has no source file: its behaviour cannot be keyed."""


def _module_source(module_name: str, files: dict[str, str]) -> None:
    """Adds the source file of `module_name` to `files`, unless it is nasax's own (the
    plan's `own_sources` cover those)."""
    if _is_own_module(module_name) or module_name in sys.builtin_module_names:
        return
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not path or not os.path.exists(path):
        raise _NoSource(module_name)
    files[path] = _file_hash(path, os.stat(path).st_mtime_ns)


def _describe(obj: Any, files: dict[str, str]) -> Any:
    """A process-independent description of a registered object; the source files of the
    code it names go to `files`."""
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType | type):
        _module_source(obj.__module__, files)
        return f"{obj.__module__}:{obj.__qualname__}"
    if isinstance(obj, types.MethodType):
        return ["method", _describe(obj.__func__, files), _describe(obj.__self__, files)]
    if isinstance(obj, functools.partial):
        return [
            "partial",
            _describe(obj.func, files),
            _describe(obj.args, files),
            _describe(obj.keywords, files),
        ]
    if isinstance(obj, str | int | float | bool | type(None)):
        return repr(obj)
    if isinstance(obj, tuple | list):
        return [type(obj).__qualname__, *(_describe(x, files) for x in obj)]
    if isinstance(obj, dict):
        return {str(k): _describe(v, files) for k, v in sorted(obj.items(), key=str)}
    kind = _describe(type(obj), files)
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return [kind, _describe(fields, files)]
    if hasattr(obj, "__dict__"):
        return [kind, _describe(vars(obj), files)]
    # A repr with an address differs per process: no hit, never a wrong one.
    return [kind, repr(obj)]


def _is_own_module(name: str) -> bool:
    """A module of nasax's packages (checked through the plan's `own_sources`)."""
    return name == "nasax" or name.startswith("nasax.")


def _is_own(obj: Any) -> bool:
    """A function or class of nasax's packages."""
    return isinstance(obj, types.FunctionType | type) and _is_own_module(obj.__module__)


def _used_registrations(program_key: str, files: dict[str, str]) -> list[Any]:
    """Descriptions of the registered things a program can use: those whose name the
    program key mentions, then those their descriptions mention (a space's ops), and so
    on. What nasax ships is covered by its source hash; what else a process registered
    does not change this program's key."""
    candidates = {
        name: (kind, item)
        for kind, name, item, builtin in registered()
        if not builtin and not _is_own(item)
    }
    words, chosen, pending = set(), {}, [program_key]
    while pending:
        words.update(re.findall(r"[\w.:=-]+", pending.pop()))
        for name in [n for n in candidates if n in words and n not in chosen]:
            kind, item = candidates[name]
            chosen[name] = [kind, name, _describe(item, files)]
            pending.append(repr(chosen[name]))
    return sorted(chosen.values(), key=str)


def code_key(program_key: str = "") -> str | None:
    """What the traced code of the program `program_key` names depends on, hashed; None
    when registered code it uses has no source file to hash."""
    files: dict[str, str] = {}
    try:
        entries = _used_registrations(program_key, files)
    except _NoSource as missing:
        log.info("plan cache off: %s has no source file", missing)
        return None
    except RecursionError:  # a registered object that refers to itself: not described
        log.info("plan cache off: a registered object cannot be described")
        return None
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = [(d.platform, d.device_kind) for d in jax.devices()]
    settings = {name: str(getattr(jax.config, name, None)) for name in _TRACE_SETTINGS}
    parts = [
        FORMAT,
        entries,
        sorted(files.items()),
        versions,
        sys.version,
        devices,
        os.environ.get("XLA_FLAGS", ""),
        settings,
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _args_key(example_args: Any) -> str:
    leaves, tree = jax.tree.flatten(example_args)
    avals = []
    for x in leaves:
        aval = jax.typeof(x) if isinstance(x, jax.Array) else None
        devices = sorted(str(d) for d in x.devices()) if isinstance(x, jax.Array) else None
        avals.append(
            (
                np.shape(x),
                str(getattr(x, "dtype", type(x))),
                getattr(aval, "weak_type", None),
                devices,
            )
        )
    return repr((str(tree), avals))


def store_dir() -> Path | None:
    """Where plans are kept: beside JAX's on-disk compilation cache, when one is set and
    NASAX_PLAN_CACHE is not 0."""
    cache = jax.config.jax_compilation_cache_dir
    if not cache or os.environ.get("NASAX_PLAN_CACHE", "1") == "0":
        return None
    return Path(cache) / "nasax-plans"


def plan_path(program_key: str, example_args: Any) -> Path | None:
    """The file of the plan of the program `program_key` names at these arguments, or None
    when plans are not stored (no on-disk cache, or code that cannot be keyed)."""
    folder = store_dir()
    if folder is None:
        return None
    code = code_key(program_key)
    if code is None:
        return None
    digest = hashlib.sha256(repr((code, program_key, _args_key(example_args))).encode())
    return folder / f"{digest.hexdigest()[:40]}.plan"


class _Pickler(pickle.Pickler):
    """Pickles a plan with its arrays on the host."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, jax.Array):
            return ("array", np.asarray(obj))
        return None


_PLAN_MODULES = ("nasax", "flax", "optax", "jax", "jaxlib")
"""Packages whose classes a stored plan may hold: the plan's own types (`_Plan`,
`_Item`, `StoredProgram`) and the node types of the step's output tree (states,
optimizer states, NNX variables)."""

_PLAN_CALLABLES = {
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("jax._src.tree_util", "default_registry"),
}
"""The functions and objects other than classes that a plan's pickle names: NumPy's
array and scalar rebuilders, and JAX's registry of tree node types."""


class _Unpickler(pickle.Unpickler):
    """Loads a plan, refusing every global that is not a class of `_PLAN_MODULES` or one
    of `_PLAN_CALLABLES`: a plan file comes from a cache folder that others may write, so
    it must not be able to name code to run (`os.system`, `builtins.eval`, ...)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAN_CALLABLES:
            return super().find_class(module, name)
        if module.split(".")[0] in _PLAN_MODULES and "." not in name:
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"a stored plan may not name {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        kind, value = pid
        if kind == "array":
            return jax.device_put(value)
        raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")


def save(path: Path, plan: Any, out_tree: Any) -> None:
    """Writes the plan, with the hashes of the nasax modules imported so far (the trace's
    among them), atomically; a cache that cannot be written is only logged."""
    buffer = io.BytesIO()
    stored = (FORMAT, own_sources(), plan, out_tree)
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(stored)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except Exception as error:  # a full or read-only cache folder must not stop a run
        log.warning("plan cache: could not write %s: %s", path, error)


def load(path: Path) -> tuple[Any, Any] | None:
    """The stored (plan, out_tree) with its programs compiled (read from JAX's cache), or
    None when there is none, it cannot be read, or a nasax module it was traced with has
    changed since."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        stored = _Unpickler(io.BytesIO(data)).load()
        if stored[0] != FORMAT:
            return None
        _, sources, plan, out_tree = stored
        if not _sources_unchanged(sources):
            log.info("plan cache: %s was traced with other nasax sources", path)
            return None
        compile_all(stored_programs(plan))
        return plan, out_tree
    except Exception as error:  # a damaged or foreign file is a miss, rewritten after the trace
        log.warning("plan cache: ignoring %s: %s", path, error)
        return None


__all__ = ["code_key", "load", "own_sources", "plan_path", "save", "store_dir"]
