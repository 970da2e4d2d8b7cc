"""Where a tuning study lives (`nasax tune --storage`) and how a dead worker's trial is
noticed.

By default the study is SQLite in the study folder, for one worker. For workers on many
machines it is a database server (`postgresql://...`, `mysql://...`) or a journal file on
a shared filesystem (`journal:PATH`). There a running trial's worker marks it alive every
`tune.heartbeat_seconds`; a trial not marked for `tune.grace_seconds` is failed by the
next worker that looks, and queued again (same values, a new number) up to
`tune.retries` times.

Optuna keeps heartbeats for databases only; the journal's are a trial attribute written
here. A database's trial that never sent a beat (its worker died between claiming it
and its first beat, or the server was away then) is judged by its start instead, where
optuna would wait for it forever. Every use of an optuna internal (the heartbeat base
class, the stale-trial query, a trial's storage id) sits in this module.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import shlex
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from nasax.core.errors import ConfigError, StudyStorageError
from nasax.core.storage import storage_errno, storage_errors

JOURNAL = "journal:"
HEARTBEAT_KEY = "nasax:heartbeat"
"""The journal trial attribute holding its worker's last sign of life (Unix time)."""
BEATING_KEY = "nasax:beating"
"""A trial attribute: the number of the trial whose first beat was recorded (a retried
trial inherits its first run's attributes, hence the number)."""

DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
}
"""A database driver's module -> the pip package that installs it."""

_DATABASES = ("postgresql", "mysql", "sqlite")
_FORMS = "postgresql://USER@HOST/DB, mysql://USER@HOST/DB, sqlite:///PATH or journal:PATH"


class Liveness(NamedTuple):
    """How workers of a shared study tell a dead worker's trial from a slow one."""

    heartbeat_seconds: int
    grace_seconds: int
    retries: int


def retry_callback(retries: int) -> Callable[[Any, Any], None] | None:
    """Optuna's callback that queues a failed trial again with the same values (up to
    `retries` runs more), or None for no retry."""
    import optuna

    if retries == 0:
        return None
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    retry = retry or optuna.storages.RetryFailedTrialCallback  # optuna < 4.9
    with _experimental_ok():
        return retry(max_retry=retries)


def shown(url: str) -> str:
    """`url` with its password hidden, for messages."""
    if url.startswith(JOURNAL):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str, liveness: Liveness | None) -> Any:
    """The optuna storage `url` names; with `liveness`, workers' trials send heartbeats.

    Raises:
        ConfigError: `url` is not a storage URL.
        StudyStorageError: its driver is not installed, or the server cannot be reached.
    """
    if url.startswith(JOURNAL):
        return _journal(Path(url.removeprefix(JOURNAL)).absolute(), liveness)
    return _database(url, liveness)


def _database(url: str, liveness: Liveness | None) -> Any:
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"--storage {url!r} is not a storage URL; use {_FORMS}") from None
    kind = parsed.get_backend_name()
    if kind not in _DATABASES:
        close = difflib.get_close_matches(kind, [*_DATABASES, "journal"], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}://?)" if close else ""
        raise ConfigError(f"--storage {shown(url)}: unknown database {kind!r}{hint}; use {_FORMS}")
    engine: dict[str, Any] = {}
    if kind in ("postgresql", "mysql") and "connect_timeout" not in parsed.query:
        engine["connect_args"] = {"connect_timeout": 20}  # not the system's two minutes
    kwargs: dict[str, Any] = {}
    if liveness is not None:
        callback = "heartbeat_stale_trial_callback"
        if callback not in inspect.signature(optuna.storages.RDBStorage).parameters:
            callback = "failed_trial_callback"  # optuna < 4.9
        kwargs = {
            "heartbeat_interval": liveness.heartbeat_seconds,
            "grace_period": liveness.grace_seconds,
            callback: retry_callback(liveness.retries),
        }
    try:
        storage = optuna.storages.RDBStorage if liveness is None else _database_with_heartbeat()
        return _first_worker_safe(lambda: storage(url, engine_kwargs=engine, **kwargs))
    except ImportError as e:
        module = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "?"
        package = shlex.quote(DRIVER_PACKAGES.get(module.split(".")[0], module))
        other = " (or pip install PyMySQL and use mysql+pymysql://)" if module == "MySQLdb" else ""
        raise StudyStorageError(
            f"--storage {shown(url)}: its driver {module} is not installed; "
            f"pip install {package}{other}"
        ) from None
    except sqlalchemy.exc.DBAPIError as e:
        if storage_errno(e) is not None:
            raise  # a full or read-only disk: `storage_errors` names it
        reach = "open" if kind == "sqlite" else "reach"
        message = f"cannot {reach} the study storage {shown(url)}: {_reason(e)}"
        raise StudyStorageError(message) from e


def _database_with_heartbeat() -> type:
    """Optuna's database storage, which also fails a running trial that never sent a beat
    once it has run `grace_seconds` (by the clocks of the workers: see `_journal`)."""
    import optuna
    from optuna.trial import TrialState

    class DatabaseWithHeartbeat(optuna.storages.RDBStorage):
        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            stale = super()._get_stale_trial_ids(study_id)
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                started = t.datetime_start.timestamp() if t.datetime_start else _now()
                silent = t.system_attrs.get(BEATING_KEY) != t.number
                if silent and _now() - started > self.grace_period and t._trial_id not in stale:
                    stale.append(t._trial_id)
            return stale

    return DatabaseWithHeartbeat


def _first_worker_safe(make: Callable[[], Any], attempts: int = 6) -> Any:
    """`make()`, again while it loses a race to create optuna's tables in a new database:
    workers that start together all try, and all but one are refused (optuna#1092)."""
    import sqlalchemy.exc

    for attempt in range(attempts - 1):
        try:
            with _experimental_ok():
                return make()
        except sqlalchemy.exc.DBAPIError as e:
            if not (isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)):
                raise
        time.sleep(0.1 * 2**attempt)
    with _experimental_ok():
        return make()


def _reason(e: Exception) -> str:
    """The first line of a database driver's message (SQLAlchemy's adds a help link)."""
    message = str(getattr(e, "orig", None) or e).strip()
    return message.splitlines()[0] if message else type(e).__name__


@contextlib.contextmanager
def storage_failures(url: str) -> Iterator[None]:
    """Re-raises a failure of the study storage inside the block as one line: a full or
    read-only disk as a `StorageError`, a lost database server as a `StudyStorageError`."""
    import sqlalchemy.exc

    path = url.removeprefix(JOURNAL) if url.startswith(JOURNAL) else shown(url)
    if path.startswith("sqlite:///"):
        path = path.removeprefix("sqlite:///")
    try:
        with storage_errors(path, "update"):
            yield
    except sqlalchemy.exc.DBAPIError as e:  # not a disk's: `storage_errors` took those
        raise StudyStorageError(
            f"lost the study storage {shown(url)}: {_reason(e)}; when it is back, rerun the "
            "same command to continue (a trial left running is failed and run again)"
        ) from e


def _journal(path: Path, liveness: Liveness | None) -> Any:
    from optuna.storages.journal import (
        JournalFileBackend,
        JournalFileSymlinkLock,
        JournalStorage,
    )

    if not path.parent.is_dir():
        raise ConfigError(f"--storage journal:{path}: the folder {path.parent} does not exist")
    # The lock is a symbolic link made beside the journal: atomic on NFS (v2 on). It is
    # held for one append, so one held longer than a trial's grace period (at most
    # optuna's 30 s) is a dead worker's, killed while it wrote: the others remove it.
    grace = 30 if liveness is None else max(3, min(30, liveness.grace_seconds))
    with storage_errors(path, "create"):
        lock = JournalFileSymlinkLock(str(path), grace_period=grace)
        backend = JournalFileBackend(str(path), lock_obj=lock)
        if liveness is None:
            return JournalStorage(backend)
        return _journal_with_heartbeat()(backend, liveness)


def _journal_with_heartbeat() -> type:
    """A journal storage that keeps heartbeats as optuna's database storage does, so that
    optuna's `fail_stale_trials` fails (and retries) the trials of dead workers.

    A beat is the writer's clock, read by another machine's clock: their clocks must agree
    to well within `grace_seconds` (NTP does).
    """
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.storages.journal import JournalStorage
    from optuna.trial import TrialState

    class JournalWithHeartbeat(JournalStorage, BaseHeartbeat):
        def __init__(self, backend: Any, liveness: Liveness) -> None:
            super().__init__(backend)
            self._liveness = liveness
            self._retry = retry_callback(liveness.retries)

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now, stale = _now(), []
            for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                # A retried trial inherits its first run's beats; its start is newer.
                start = t.datetime_start.timestamp() if t.datetime_start else 0.0
                last = max(t.system_attrs.get(HEARTBEAT_KEY, 0.0), start)
                if now - last > self._liveness.grace_seconds:
                    stale.append(t._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int:
            return self._liveness.heartbeat_seconds

        def get_heartbeat_stale_trial_callback(self) -> Callable[[Any, Any], None] | None:
            return self._retry

        get_failed_trial_callback = get_heartbeat_stale_trial_callback  # optuna < 4.9

    return JournalWithHeartbeat


def ask(study: Any) -> Any:
    """`study.ask()`: the next trial, a queued one first (a dead worker's, to run again).

    Optuna warns that heartbeats belong to `Study.optimize`, which beats for the trials it
    runs; nasax asks and tells itself and beats with `heartbeat`.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
        return study.ask()


def fail_stale_trials(study: Any) -> None:
    """Fails the running trials whose worker stopped sending heartbeats, and queues them
    again (the storage's retry callback); a no-op without heartbeats."""
    import optuna

    with _experimental_ok():
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeat(storage: Any, trial: Any) -> Iterator[None]:
    """Marks `trial` alive every heartbeat interval while the block runs (if `storage`
    keeps heartbeats)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    # The first beat before the trial runs, so a worker killed from here on is noticed.
    storage.record_heartbeat(trial._trial_id)
    storage.set_trial_system_attr(trial._trial_id, BEATING_KEY, trial.number)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            # A beat that fails (the server is away a moment) is a late beat: the grace
            # period covers it, and a beat after the trial was failed changes nothing.
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name=f"nasax-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _now() -> float:
    """This machine's clock (Unix time), which judges other workers' silence."""
    return time.time()


@contextlib.contextmanager
def _experimental_ok() -> Iterator[None]:
    """Optuna calls heartbeats and retries experimental; nasax pins what it uses in tests."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


__all__ = [
    "Liveness",
    "ask",
    "fail_stale_trials",
    "heartbeat",
    "open_storage",
    "retry_callback",
    "shown",
    "storage_failures",
]
