"""Orbax checkpoints of a state pytree plus JSON metadata (epoch, position in the data)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
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
        flat = {k: np.asarray(v) for k, v in flatten_state(jax.device_get(state)).items()}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """The state (shaped like `like`) and metadata of checkpoint `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        flat_like = {k: np.asarray(v) for k, v in flatten_state(jax.device_get(like)).items()}
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(flat_like), meta=ocp.args.JsonRestore()
            ),
        )
        return unflatten_state(dict(restored["state"]), like), dict(restored["meta"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
