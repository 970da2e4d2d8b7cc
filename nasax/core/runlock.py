"""One writer per run directory: an `fcntl.flock` on RUN_DIR/.nasax.lock, held while a
command uses the directory.

The OS drops the lock when its process ends, however it ends, so a `kill -9` never
leaves a stale lock behind. Commands that write a run (search, train, tune) take it
exclusively and write their PID, host and command into the file for the next process
to name; commands that only read a run (evaluate, export) take it shared, so they
refuse a run that is still running, and may run side by side.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from nasax.core.errors import STORAGE_ERRNOS, RunDirBusy
from nasax.core.storage import storage_errors

LOCK_NAME = ".nasax.lock"


class RunLock:
    """A held lock on a run directory, freed by `release()` or at the end of a `with`."""

    def __init__(self, directory: Path, fd: int | None) -> None:
        self.directory, self._fd = directory, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor frees the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(directory: str | os.PathLike, command: str) -> RunLock:
    """Takes the lock for a command that writes the run directory (created if missing).

    Raises:
        RunDirBusy: another process holds the lock (it is named); nothing was changed.
    """
    directory = Path(directory)
    path = directory / LOCK_NAME
    with storage_errors(path, "create the lock file"):
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    _take(fd, fcntl.LOCK_EX, directory)
    holder = f"{os.getpid()} {socket.gethostname()} nasax {command}\n".encode()
    try:
        with storage_errors(path, "write the lock file"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
    except BaseException:
        os.close(fd)
        raise
    return RunLock(directory, fd)


def share_run_dir(directory: str | os.PathLike) -> RunLock:
    """Takes the lock shared, for a command that only reads the run directory.

    A directory without a lock file that cannot get one (read-only, full) has no writer
    either: it is read without a lock.

    Raises:
        RunDirBusy: a writer holds the lock (it is named).
    """
    directory = Path(directory)
    path = directory / LOCK_NAME
    try:
        fd = (
            os.open(path, os.O_RDONLY) if path.exists() else os.open(path, os.O_RDONLY | os.O_CREAT)
        )
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            return RunLock(directory, None)
        raise
    _take(fd, fcntl.LOCK_SH, directory)
    return RunLock(directory, fd)


def _take(fd: int, mode: int, directory: Path) -> None:
    """flock without waiting; on refusal closes `fd` and raises RunDirBusy naming the holder."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace")
        os.close(fd)
        raise RunDirBusy(
            f"run directory {directory} is in use by {describe_holder(holder)}; wait until it "
            "ends (or stop it), or use another run directory"
        ) from None


def describe_holder(text: str) -> str:
    """Who holds a lock, from the lock file's `PID HOST COMMAND` line.

    Readers write nothing, so a writer refused by a reader may find the line of an
    earlier writer that has ended; on this host that is checked.
    """
    parts = text.split(maxsplit=2)
    if len(parts) < 3 or not parts[0].isdigit():
        return "another nasax process"
    pid, host, command = int(parts[0]), parts[1], parts[2].strip()
    if host != socket.gethostname():
        return f"{command} (PID {pid} on {host})"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "a nasax process reading it (evaluate or export)"
    except PermissionError:
        pass  # alive, another user's
    return f"{command} (PID {pid})"


__all__ = ["LOCK_NAME", "RunLock", "describe_holder", "lock_run_dir", "share_run_dir"]
