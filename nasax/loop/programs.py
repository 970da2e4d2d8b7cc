"""Compiled programs kept in memory across the runs that share them.

A tuning study's trials, or an `ImageClassifier` fitted again, run the same programs
many times in one process; the caller makes one `ProgramCache` and hands it to each
run, so nothing compiled outlives its owner in a module global.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ProgramCache:
    """Programs by key (`nasax.loop.run.program_key`), newest last; beyond `keep` the
    oldest are dropped, so a long study holds a bounded number of executables."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._programs: dict[str, Any] = {}

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        """The programs kept under `key`, built by `build()` the first time."""
        if key in self._programs:
            self._programs[key] = self._programs.pop(key)  # now the newest
        else:
            self._programs[key] = build()
            while len(self._programs) > self.keep:
                self._programs.pop(next(iter(self._programs)))
        return self._programs[key]

    def latest(self) -> Any:
        """The programs the last `get` returned; LookupError if none was built yet."""
        if not self._programs:
            raise LookupError("no program was compiled with this cache")
        return next(reversed(self._programs.values()))

    def __len__(self) -> int:
        return len(self._programs)


__all__ = ["ProgramCache"]
