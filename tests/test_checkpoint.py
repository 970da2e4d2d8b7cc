"""Checkpoints: packed arrays come back bit for bit, with their keys, dtypes and shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nasax.core.checkpoint import Checkpoints, pack_arrays, unpack_arrays


def _state() -> dict:
    rng = np.random.default_rng(0)
    return {
        "step": np.int32(7),
        "params": {
            "w": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
            "b": rng.normal(size=(8,)).astype(np.float32),
            "empty": np.zeros((0, 5), np.float32),
            "half": rng.normal(size=(2, 3)).astype(jnp.bfloat16),
        },
        "rng": np.array([1, 2**32 - 1], np.uint32),
        "flag": np.array([True, False]),
    }


def test_pack_arrays_round_trip_and_groups_by_dtype():
    flat = {f"k{i}": v for i, v in enumerate(jnp.asarray(x) for x in jax.tree.leaves(_state()))}
    packed, manifest = pack_arrays(flat)
    assert sorted(packed) == sorted({np.asarray(v).dtype.name for v in flat.values()})
    assert all(p.ndim == 1 for p in packed.values())
    back = unpack_arrays(packed, manifest)
    assert list(back) == list(flat)
    for key, value in flat.items():
        value = np.asarray(value)
        assert back[key].dtype == value.dtype and back[key].shape == value.shape
        np.testing.assert_array_equal(back[key], value)


def test_checkpoints_restore_what_they_saved(tmp_path):
    state = _state()
    checkpoints = Checkpoints(tmp_path / "checkpoints", keep=2)
    try:
        checkpoints.save(3, state, {"epoch": 1, "metrics": [1.5]})
        changed = {**state, "step": np.int32(8)}
        checkpoints.save(4, changed, {"epoch": 2, "metrics": []})
        like = {**state, "step": np.int32(0)}
        restored, meta = checkpoints.restore(like, step=3)
        assert meta == {"epoch": 1, "metrics": [1.5]}
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            assert np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(a, b)
        assert checkpoints.restore(like)[0]["step"] == 8  # the latest by default
        flat, _ = checkpoints.restore_flat(4)
        np.testing.assert_array_equal(flat["params/w"], state["params"]["w"])
    finally:
        checkpoints.close()
