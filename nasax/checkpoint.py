"""Orbax checkpoints of a state pytree plus JSON metadata (epoch, position in the data)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _key(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def flatten_state(state: Any) -> dict[str, Any]:
    """{path string: leaf} for a pytree, so the checkpoint does not depend on node types."""
    return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def unflatten_state(flat: dict[str, Any], like: Any) -> Any:
    """Puts checkpointed leaves back into the structure of `like` (a fresh state)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    missing = [_key(p) for p, _ in paths if _key(p) not in flat]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} entries, e.g. {missing[0]!r}")
    return jax.tree_util.tree_unflatten(treedef, [flat[_key(p)] for p, _ in paths])


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
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves `state` and `meta` as checkpoint `step` and waits until it is on disk."""
        packed, manifest = pack_arrays(flatten_state(jax.device_get(state)))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(packed),
                meta=ocp.args.JsonSave({**meta, _MANIFEST: manifest}),
            ),
            force=True,
        )
        self.manager.wait_until_finished()

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
