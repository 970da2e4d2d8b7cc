"""The project's error types: each carries one line that says what to fix, and the exit
status the `nasax` command ends with."""

from __future__ import annotations

import errno
import os

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO})
"""Errors of the disk rather than of nasax: full, over quota, forbidden, read-only, failing."""

_REMEDIES = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space or raise the quota",
    errno.EACCES: "make it writable",
    errno.EROFS: "remount it read-write",
    errno.EIO: "check the disk",
}


class NasaxError(Exception):
    """Base of every error nasax raises on purpose; the CLI prints it as one line."""

    exit_code = 2
    """The `nasax` command's exit status for this error (2: bad input, as argparse)."""


class ConfigError(NasaxError, ValueError):
    """A config key or value is wrong."""


class DataError(NasaxError, ValueError):
    """A dataset is missing or malformed."""


class GenotypeError(NasaxError, ValueError):
    """A genotype is malformed or does not fit the search space."""


class RunDirError(NasaxError):
    """A run directory cannot be used as asked (exists, missing, incomplete)."""


class RunDirBusy(RunDirError):
    """Another process holds the run directory's lock."""

    exit_code = 75  # EX_TEMPFAIL of sysexits.h: try again later


class StudyStorageError(NasaxError):
    """A tuning study's database or journal cannot be used: its driver is not installed,
    or its server cannot be reached."""

    exit_code = 69  # EX_UNAVAILABLE of sysexits.h


class NonFiniteError(NasaxError, FloatingPointError):
    """A loss or gradient became NaN or infinite."""


class StorageError(NasaxError, OSError):
    """The disk refused a write (full, over quota, forbidden, read-only, failing).

    Files written before stay valid; `path` and `operation` say what failed, `errno` why.
    """

    exit_code = 74  # EX_IOERR of sysexits.h

    def __init__(self, path: str | os.PathLike, operation: str, code: int) -> None:
        name = errno.errorcode.get(code, str(code))
        remedy = _REMEDIES.get(code, "fix the disk")
        super().__init__(f"cannot {operation} {path}: {os.strerror(code)} [{name}]; {remedy}")
        self.errno, self.path, self.operation = code, str(path), operation
