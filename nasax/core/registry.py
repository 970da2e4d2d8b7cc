"""Name -> object registries: ops, spaces and strategies are added by registering a name."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


_REGISTRIES: list[Registry] = []
"""Every registry made, for `registered`."""


def registered() -> Iterator[tuple[str, str, object, bool]]:
    """(kind, name, object, built in) of everything registered so far, in every registry;
    built in: a name the registry's own table of built-ins lists."""
    for registry in _REGISTRIES:
        for name, item in list(registry._items.items()):
            yield registry.kind, name, item, name in registry._builtins


class Registry(Generic[T]):
    """A mapping from names to objects that refuses duplicates and explains misses.

    `builtins` maps the names that ship with nasax to the module whose import registers
    them (each layer writes the table beside its registry, e.g.
    `nasax.search.strategy.BUILTIN_STRATEGIES`): a name is loaded the first time it is
    asked for, and all of them when the registry lists its names.
    """

    def __init__(self, kind: str, builtins: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._builtins = dict(builtins or {})
        _REGISTRIES.append(self)

    @property
    def builtins(self) -> dict[str, str]:
        """The built-in names and the module that registers each."""
        return dict(self._builtins)

    def _load(self, name: str | None = None) -> None:
        """Imports the module that registers the built-in `name`, or every built-in's."""
        modules = self._builtins.values() if name is None else [self._builtins.get(name)]
        for module in dict.fromkeys(modules):
            if module is not None:
                importlib.import_module(module)

    def register(self, name: str, item: T) -> T:
        """Adds `item` under `name`; a name can be registered once."""
        if name in self._items:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """Registers the decorated object under `name`."""
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        """Returns the object for `name`, or raises KeyError naming the close matches."""
        if name not in self._items:
            self._load(name)
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """One line saying `name` is unknown and what is allowed."""
        self._load()
        close = difflib.get_close_matches(name, self._items, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; known: {', '.join(self._items)}"

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name not in self._items:
            self._load(name)
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._items))

    def names(self) -> list[str]:
        self._load()
        return list(self._items)
