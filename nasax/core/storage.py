"""Which failures mean the disk cannot take a run's files, and the guard that turns them
into one `StorageError` naming the path and the operation.

Libraries report a full disk in their own words: an `OSError` from Python, tensorstore's
`os_error_code` (orbax checkpoints), SQLite's messages (the tuning study).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from nasax.core.errors import STORAGE_ERRNOS, StorageError

_TENSORSTORE_CODE = re.compile(r"os_error_code='?(\d+)")
_PYTHON_CODE = re.compile(r"\[Errno (\d+)\]")
_SQLITE_MESSAGES = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EACCES,
    "disk i/o error": errno.EIO,
}


def errno_in_message(message: str) -> int | None:
    """The disk failure a library's message reports (tensorstore, an `OSError` quoted in
    a log line, SQLite), else None."""
    for pattern in (_TENSORSTORE_CODE, _PYTHON_CODE):
        match = pattern.search(message)
        if match and int(match.group(1)) in STORAGE_ERRNOS:
            return int(match.group(1))
    lowered = message.lower()
    return next((code for text, code in _SQLITE_MESSAGES.items() if text in lowered), None)


def storage_errno(exc: BaseException | None) -> int | None:
    """The errno of a disk failure behind `exc` or the exceptions it came from, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc.errno
        code = errno_in_message(str(exc))
        if code is not None:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def storage_errors(path: str | os.PathLike, operation: str) -> Iterator[None]:
    """Re-raises a disk failure inside the block as a `StorageError` about `path`.

    `operation` completes "cannot ... PATH", e.g. "write" or "save checkpoint 8 to".
    Other errors pass through unchanged.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        code = storage_errno(e)
        if code is None:
            raise
        raise StorageError(path, operation, code) from e


__all__ = ["errno_in_message", "storage_errno", "storage_errors"]
