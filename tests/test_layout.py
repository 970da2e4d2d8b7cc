"""The package's shape: a cheap `import nasax`, one list of built-ins, one-way imports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"nasax": "nasax", "supernet": "nasax.supernet", "search": "nasax.search"}
FOLDERS |= {"train": "nasax.train"}
"""Source folder -> the package it holds (pyproject's package-dir)."""

REGISTRIES = {
    "strategies": ("nasax.search.strategy", "STRATEGIES"),
    "ops": ("nasax.supernet.ops", "OPS"),
    "spaces": ("nasax.supernet.spaces", "SPACES"),
    "skeletons": ("nasax.supernet.skeletons", "SKELETONS"),
}
"""The registries of what ships -> (module, registry); each lists its built-ins beside it."""


def _python(script: str) -> dict:
    """Runs `script` in a fresh interpreter; it prints one JSON value as its last line."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["nasax", "nasax.core.config"])
def test_import_loads_neither_jax_nor_a_strategy(module):
    found = _python(
        f"""
        import json, sys
        import {module}
        print(json.dumps(sorted(m for m in sys.modules
              if m.split(".")[0] in ("jax", "flax", "optax") or m.startswith("nasax.search"))))
        """
    )
    assert found == []


def test_each_builtin_is_registered_by_the_module_the_list_names():
    """Importing only the module a built-in is listed under registers it, and importing
    the whole package registers nothing the lists leave out."""
    missing = _python(
        f"""
        import importlib, json
        registries = {REGISTRIES!r}
        missing = []
        for table, (module, name) in registries.items():
            registry = getattr(importlib.import_module(module), name)
            for item, source in registry.builtins.items():
                importlib.import_module(source)
                if item not in registry._items:  # not loaded lazily: registered by `source`
                    missing.append([table, item])
        print(json.dumps(missing))
        """
    )
    assert missing == []
    registered = _python(
        f"""
        import importlib, json, pkgutil
        for package in ("nasax", "nasax.core", "nasax.engine", "nasax.loop", "nasax.app",
                        "nasax.supernet", "nasax.search", "nasax.train"):
            path = importlib.import_module(package).__path__
            for info in pkgutil.iter_modules(path, package + "."):
                importlib.import_module(info.name)
        registries = {REGISTRIES!r}
        found = {{}}
        for table, (module, name) in registries.items():
            registry = getattr(importlib.import_module(module), name)
            found[table] = [sorted(registry._items), sorted(registry.builtins)]
        print(json.dumps(found))
        """
    )
    assert all(items == listed for items, listed in registered.values()), registered


def test_a_config_names_any_strategy_whatever_was_imported():
    strategy = _python(
        """
        import json
        from nasax.search.options import load_config, strategy_options
        print(json.dumps(strategy_options(load_config("gdas_digits").search).tau_max))
        """
    )
    assert strategy == 10.0


def _imports(path: Path) -> set[str]:
    """The nasax modules a file imports (at any depth: lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nasax"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("nasax"))
    return found


def _module_imports() -> dict[str, set[str]]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join([package, *parts]).removesuffix(".__init__")
            modules[name] = _imports(path)
    return modules


LAYERS = (
    "nasax.core",
    "nasax.engine",
    "nasax.loop",
    "nasax.supernet",
    "nasax.search",
    "nasax.train",
    "nasax.app",
)
"""The sub-packages, lowest first; every module of nasax but its facade lives in one."""

ALLOWED = {
    "nasax.core": {"nasax.core"},
    "nasax.engine": {"nasax.core", "nasax.engine"},
    "nasax.loop": {"nasax.core", "nasax.engine", "nasax.loop"},
    "nasax.supernet": {"nasax.core", "nasax.engine", "nasax.loop", "nasax.supernet"},
    "nasax.search": {"nasax.core", "nasax.engine", "nasax.loop", "nasax.supernet", "nasax.search"},
    "nasax.train": {"nasax.core", "nasax.engine", "nasax.loop", "nasax.supernet", "nasax.train"},
    "nasax.app": set(LAYERS),
    "nasax": set(LAYERS),
}
"""Which layers each layer may import (docs/development.md, Layout): the core knows no
layer above it; the engine runs steps; the loop runs epochs; the models sit on the loop;
the search and retraining tasks never import each other (a genotype passes between them);
the app, and the package's lazy facade `nasax`, sit on top."""


def _layer(module: str) -> str:
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


def test_every_module_sits_in_a_layer_folder():
    loose = [p.name for p in (ROOT / "nasax").glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    folders = {p.name for p in (ROOT / "nasax").iterdir() if (p / "__init__.py").is_file()}
    assert folders == {"core", "engine", "loop", "app"}
    assert {_layer(m) for m in _module_imports()} == {"nasax", *LAYERS}


def test_imports_point_from_the_app_down_to_the_core():
    wrong = []
    for module, imported in _module_imports().items():
        for target in imported:
            if _layer(target) not in ALLOWED[_layer(module)]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_docs_layout_table_says_what_each_layer_may_import():
    """The Layout table of docs/development.md lists every layer with the layers it may
    import, and `ALLOWED` (what the test above enforces) says the same."""
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `nasax")]
    table = {}
    for package, _folder, _holds, may in rows:
        layers = [f"nasax.{name.strip()}" for name in may.split(",")]
        table[package.strip(" `")] = set(LAYERS) if layers == ["nasax.all"] else set(layers)
    assert table == {layer: ALLOWED[layer] for layer in LAYERS}
