"""The plan store: a block step traced once is loaded by later runs, in this process and
in a new one, and computes what the traced step computes; its key follows the code."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.app.cli import main
from nasax.core import registry
from nasax.engine import plan_cache
from nasax.engine.blocks import BlockProgram
from tests.test_blocks import _Net, _toy_step
from tests.test_strategy_runs import TINY_NB201


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plan store of this test's own."""
    folder = tmp_path / "plans"
    monkeypatch.setattr(plan_cache, "store_dir", lambda: folder)
    return folder


def _toy_args(branch: int) -> tuple:
    graphdef, state = nnx.split(_Net(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (5, 8))
    return graphdef, (state, x, jnp.float32(0.7), jnp.int32(branch))


def test_a_stored_plan_runs_like_the_traced_step_through_control_flow(store: Path) -> None:
    for branch in (1, 0):
        graphdef, args = _toy_args(branch)
        expected = jax.jit(_toy_step, static_argnums=0)(graphdef, *args)
        programs = [
            BlockProgram(lambda *a, g=graphdef: _toy_step(g, *a), *args, cache_key="toy")
            for _ in range(2)
        ]
        # The first call signature traces and stores; every later one loads.
        assert [p.loaded for p in programs] == ([False, True] if branch else [True, True])
        for program in programs:
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                expected,
                program(*args),
            )
    assert len(list(store.glob("*.plan"))) == 1  # the branch is data, not part of the key


def test_a_damaged_plan_is_traced_again_and_rewritten(store: Path) -> None:
    graphdef, args = _toy_args(1)

    def fn(*a):
        return _toy_step(graphdef, *a)

    BlockProgram(fn, *args, cache_key="toy")
    (path,) = store.glob("*.plan")
    path.write_bytes(b"not a plan")
    again = BlockProgram(fn, *args, cache_key="toy")
    assert not again.loaded
    assert BlockProgram(fn, *args, cache_key="toy").loaded


def _probe_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str):
    """A module named as nasax's own (`nasax.<name>`), from a file in `tmp_path`."""
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"nasax.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, f"nasax.{name}", module)
    return path


def _edit(path: Path, text: str) -> None:
    path.write_text(text)
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000))


def test_a_plan_follows_the_nasax_modules_imported_when_it_was_traced(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graphdef, args = _toy_args(1)

    def fn(*a):
        return _toy_step(graphdef, *a)

    traced_with = _probe_module(tmp_path, monkeypatch, "plan_probe_a", "A = 1\n")
    assert not BlockProgram(fn, *args, cache_key="toy").loaded
    # A nasax module imported after the plan was stored is not part of it.
    later = _probe_module(tmp_path, monkeypatch, "plan_probe_b", "B = 1\n")
    _edit(later, "B = 2\n")
    assert BlockProgram(fn, *args, cache_key="toy").loaded
    # One it was traced with has changed: a miss, traced again and stored again.
    _edit(traced_with, "A = 2\n")
    assert not BlockProgram(fn, *args, cache_key="toy").loaded
    assert BlockProgram(fn, *args, cache_key="toy").loaded
    assert len(list(store.glob("*.plan"))) == 1


class _Payload:
    """What a hostile writer of a shared cache folder would store: unpickling it runs a
    shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_plan_that_names_code_is_refused_as_a_miss(store: Path, tmp_path: Path) -> None:
    import pickle

    graphdef, args = _toy_args(1)

    def fn(*a):
        return _toy_step(graphdef, *a)

    expected = BlockProgram(fn, *args, cache_key="toy")(*args)
    marker = tmp_path / "payload-ran"
    for path in store.glob("*.plan"):
        path.write_bytes(pickle.dumps((plan_cache.FORMAT, _Payload(marker), None)))
    again = BlockProgram(fn, *args, cache_key="toy")
    assert not again.loaded and not marker.exists()
    # The run goes on with the traced step, which computes the same (bit for bit: both
    # run the stored programs) and stores a clean plan again.
    jax.tree.map(np.testing.assert_array_equal, expected, again(*args))
    assert BlockProgram(fn, *args, cache_key="toy").loaded


def test_no_key_no_store(store: Path) -> None:
    graphdef, args = _toy_args(1)
    BlockProgram(lambda *a: _toy_step(graphdef, *a), *args)
    assert not store.exists()


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> registry.Registry:
    """A registry that exists for this test only."""
    monkeypatch.setattr(registry, "_REGISTRIES", list(registry._REGISTRIES))
    return registry.Registry("test thing")


def test_the_key_follows_the_source_of_registered_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch_registry: registry.Registry
) -> None:
    module = tmp_path / "plan_cache_user_ops.py"
    module.write_text("def op(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    user_ops = importlib.import_module("plan_cache_user_ops")
    monkeypatch.setitem(sys.modules, "plan_cache_user_ops", user_ops)
    uses = '{"model": {"ops": ["double"]}}'  # a program key that names the op
    before = plan_cache.code_key(uses)
    scratch_registry.register("double", user_ops.op)
    registered = plan_cache.code_key(uses)
    assert registered is not None and registered != before
    assert plan_cache.code_key(uses) == registered  # the same code, the same key
    assert plan_cache.code_key("other") == plan_cache.code_key()  # unused: no part of it

    module.write_text("def op(x):\n    return x * 3\n")
    os.utime(module, ns=(0, os.stat(module).st_mtime_ns + 1_000_000))
    assert plan_cache.code_key(uses) not in (None, registered)

    # Code without a source file cannot be keyed: nothing is stored for what uses it.
    ephemeral = types.ModuleType("plan_cache_ephemeral")
    exec("def op(x):\n    return x * 4\n", ephemeral.__dict__)
    monkeypatch.setitem(sys.modules, "plan_cache_ephemeral", ephemeral)
    scratch_registry.register("quadruple", ephemeral.op)
    assert plan_cache.code_key("quadruple") is None
    assert plan_cache.plan_path("quadruple", ()) is None
    assert plan_cache.code_key(uses) is not None


def _metrics(run: Path) -> list[dict]:
    """The run's metric lines without their timings."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "images_per_sec"} for line in lines]


def test_a_rerun_in_a_new_process_loads_the_plan_and_computes_the_same(
    tmp_path: Path, tiny_npz: str
) -> None:
    args = ["search", "darts_nb201_digits"]
    for item in TINY_NB201:
        args += ["--set", item]
    first = [*args, "--set", f"data.name=npz:{tiny_npz}"]
    assert main([*first, "--out", str(tmp_path / "first")]) == 0
    # The same data at another path: the plan is keyed on what the data are, not where.
    moved = tmp_path / "elsewhere" / "same_digits.npz"
    moved.parent.mkdir()
    shutil.copy(tiny_npz, moved)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir}
    rerun = [sys.executable, "-m", "nasax.app.cli", *args, "--set", f"data.name=npz:{moved}"]
    rerun += ["--out", str(tmp_path / "again")]
    subprocess.run(rerun, env=env, check=True, capture_output=True, timeout=300)
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["step_plan"] == "loaded"
    assert _metrics(tmp_path / "again") == _metrics(tmp_path / "first")

    # Without the store the step is traced; it binds short glue op by op instead of
    # compiling it, so it agrees to float rounding.
    off = tmp_path / "off"
    assert main([*first, "--set", "run.plan_cache=false", "--out", str(off)]) == 0
    assert json.loads((off / "summary.json").read_text())["step_plan"] == "traced"
    for a, b in zip(_metrics(off), _metrics(tmp_path / "first"), strict=True):
        assert a.keys() == b.keys()
        numbers = [k for k, v in a.items() if isinstance(v, float)]
        assert numbers
        np.testing.assert_allclose(
            [a[k] for k in numbers], [b[k] for k in numbers], rtol=1e-4, atol=1e-5
        )


def test_a_program_cache_builds_each_key_once_and_keeps_the_newest() -> None:
    from nasax.loop.programs import ProgramCache

    built = []

    def build(key: str):
        return lambda: built.append(key) or f"programs of {key}"

    cache = ProgramCache(keep=2)
    with pytest.raises(LookupError):
        cache.latest()
    assert cache.get("a", build("a")) == "programs of a"
    assert cache.get("b", build("b")) == "programs of b"
    assert cache.get("a", build("a")) == "programs of a"  # kept: not built again
    assert cache.latest() == "programs of a"
    cache.get("c", build("c"))  # beyond keep: "b", the least recently used, goes
    assert len(cache) == 2
    cache.get("b", build("b"))
    assert built == ["a", "b", "c", "b"]
