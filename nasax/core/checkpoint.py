"""Orbax checkpoints of a state pytree plus JSON metadata (epoch, position in the data)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from nasax.core.errors import StorageError
from nasax.core.storage import errno_in_message, storage_errno, storage_errors


def _key(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def flatten_state(state: Any) -> dict[str, Any]:
    """{path string: leaf} for a pytree, so the checkpoint does not depend on node types."""
    return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


ADDED_LATER = ("epochs",)
"""State fields newer than some checkpoints, whose fresh value is what those checkpoints'
runs used: a search or retraining state's `epochs` (its schedules' span) was always
`search.epochs` or `train.epochs`."""


def unflatten_state(flat: dict[str, Any], like: Any) -> Any:
    """Puts checkpointed leaves back into the structure of `like` (a fresh state); a
    field of `ADDED_LATER` that the checkpoint lacks keeps its value in `like`."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    keys = [_key(p) for p, _ in paths]
    flat = dict(flat)
    for key, (_, leaf) in zip(keys, paths):
        if key not in flat and key.rsplit("/", 1)[-1] in ADDED_LATER:
            flat[key] = leaf
    missing = [k for k in keys if k not in flat]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} entries, e.g. {missing[0]!r}")
    return jax.tree_util.tree_unflatten(treedef, [flat[k] for k in keys])


def pack_arrays(flat: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[list]]:
    """The arrays of `flat` concatenated into one vector per dtype, and the manifest
    ([key, dtype, shape, offset] per array) that `unpack_arrays` reads them back with.

    A search state holds thousands of small arrays; orbax spends about a millisecond on
    each, so one vector per dtype saves and restores in a small fraction of the time.
    """
    groups: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    manifest = []
    for key, value in flat.items():
        value = np.asarray(value)
        dtype = value.dtype.name
        offset = sizes.get(dtype, 0)
        manifest.append([key, dtype, list(value.shape), offset])
        groups.setdefault(dtype, []).append(value.ravel())
        sizes[dtype] = offset + value.size
    packed = {dtype: np.concatenate(parts) for dtype, parts in groups.items()}
    return packed, manifest


def unpack_arrays(packed: dict[str, np.ndarray], manifest: list[list]) -> dict[str, np.ndarray]:
    """The arrays `pack_arrays` packed, by key."""
    flat = {}
    for key, dtype, shape, offset in manifest:
        size = int(np.prod(shape, dtype=np.int64))
        flat[key] = np.asarray(packed[dtype][offset : offset + size]).reshape(shape)
    return flat


_MANIFEST = "_arrays"
"""The metadata entry that holds the packed arrays' manifest."""


class _OrbaxEcho(logging.Filter):
    """Drops the log records of a failed orbax save, which nasax reports in one line:
    orbax's own (its writer threads log the exception they caught before the save
    raises it), and asyncio's about the futures of tensorstore writes nobody awaits any
    more. A record is recognised by the disk failure it carries, in its exception or its
    text, and by coming from orbax's code; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.exc_info[1] if record.exc_info else None
        disk = storage_errno(failure) or errno_in_message(record.getMessage())
        if disk is None:
            return True
        return not ("orbax" in record.pathname or record.name == "asyncio")


def _without_closed_loop(previous: Any) -> Any:
    """`previous` (an unraisable hook) without tensorstore's callbacks that find orbax's
    event loop closed: when a save fails, orbax closes the loop while writes are still
    in flight, and each of them, finishing, would print a traceback."""

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        closed_loop = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
        if not (closed_loop and unraisable.object is None):
            previous(unraisable)

    return hook


_ECHO = _OrbaxEcho()
for _logger in ("absl", "asyncio"):
    logging.getLogger(_logger).addFilter(_ECHO)


def _quiet_handlers() -> list[logging.Handler]:
    """Adds the echo filter to every handler a record may reach (the root logger's and
    Python's last resort), so a failed save stays quiet whichever logger reports it."""
    handlers = [*logging.getLogger().handlers, logging.lastResort]
    added = [h for h in handlers if h is not None and _ECHO not in h.filters]
    for handler in added:
        handler.addFilter(_ECHO)
    return added


_WRITERS_GRACE_S = 60.0
"""How long a failed save waits for orbax's writer threads still in flight."""


def _join_orbax_writers(timeout: float = _WRITERS_GRACE_S) -> None:
    """Waits for orbax's background writer threads (those a failed save left running):
    one that is still running when the interpreter shuts down fails to schedule its
    next write and prints a traceback about it, after nasax's one line."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is threading.current_thread():
            continue
        if type(thread).__module__.startswith("orbax."):
            # orbax's threads re-raise their failure from join(); it is the one the
            # save already reported.
            with suppress(Exception):
                thread.join(max(0.0, deadline - time.monotonic()))


@contextmanager
def orbax_writes(path: str | os.PathLike, operation: str) -> Iterator[None]:
    """`storage_errors` for orbax saves, which also keeps the echo of orbax's background
    writers off the terminal: during the save, and after it for good if the disk failed.
    A failed save first waits for orbax's writer threads (`_join_orbax_writers`);
    tensorstore's callbacks of writes in flight may still report until the process ends."""
    previous = sys.unraisablehook
    sys.unraisablehook = quiet = _without_closed_loop(previous)
    handlers = _quiet_handlers()
    failed = False
    try:
        with storage_errors(path, operation):
            yield
    except StorageError:
        failed = True
        _join_orbax_writers()
        raise
    finally:
        if not failed:
            if sys.unraisablehook is quiet:
                sys.unraisablehook = previous
            for handler in handlers:
                handler.removeFilter(_ECHO)


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """The steps of the complete checkpoints in `directory`, read from the folder names
    alone (a save in progress or cut off has a temporary name)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


REPLACED = ".replaced"
"""The suffix of a checkpoint set aside while a save of the same step replaces it."""


def recover_replaced(directory: Path) -> None:
    """Finishes a replacement a process died in: the old checkpoint comes back where the
    new one never completed, and is dropped where it did."""
    if not directory.is_dir():
        return
    for aside in directory.glob(f"*{REPLACED}"):
        step = aside.with_name(aside.name[: -len(REPLACED)])
        if step.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.rename(step)


class Checkpoints:
    """Keeps the last `keep` checkpoints under `directory`; writes are atomic (orbax)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        self.directory = Path(directory).absolute()
        # A save killed midway leaves only a temporary folder; it is never listed as a
        # step, and the next run removes it.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        with orbax_writes(self.directory, "create checkpoints in"):
            recover_replaced(self.directory)
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves `state` and `meta` as checkpoint `step` and waits until it is on disk.

        A checkpoint of the same step is replaced: a run stopped at an epoch's last step
        saves that step mid-epoch, and its resume saves it again once the epoch has ended.
        The old one is set aside until the new one is complete, so a kill in between
        leaves one of the two (`recover_replaced`).
        """
        packed, manifest = pack_arrays(flatten_state(jax.device_get(state)))
        with orbax_writes(self.directory, f"save checkpoint {step} to"):
            aside = None
            if step in self.manager.all_steps():
                aside = self.directory / f"{step}{REPLACED}"
                (self.directory / str(step)).rename(aside)
                self.manager.reload()
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(packed),
                    meta=ocp.args.JsonSave({**meta, _MANIFEST: manifest}),
                ),
                force=True,
            )
            self.manager.wait_until_finished()
            if aside is not None:
                shutil.rmtree(aside)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """The state (shaped like `like`) and metadata of checkpoint `step` (default: latest)."""
        flat, meta = self.restore_flat(step)
        return unflatten_state(flat, like), meta

    def restore_flat(self, step: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The state of checkpoint `step` (default: latest) as {path string: array}, and
        its metadata."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta_only = ocp.args.Composite(meta=ocp.args.JsonRestore())
        meta = dict(self.manager.restore(step, args=meta_only)["meta"])
        manifest = meta.pop(_MANIFEST)
        sizes: dict[str, int] = {}
        for _, dtype, shape, offset in manifest:
            sizes[dtype] = max(sizes.get(dtype, 0), offset + int(np.prod(shape, dtype=np.int64)))
        target = {dtype: np.zeros((n,), jnp.dtype(dtype)) for dtype, n in sizes.items()}
        state_only = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        packed = dict(self.manager.restore(step, args=state_only)["state"])
        return unpack_arrays(packed, manifest), meta

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
