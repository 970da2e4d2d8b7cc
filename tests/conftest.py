"""Shared fixtures: a persistent compilation cache and a tiny dataset made from digits."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "nasax-tests-jax")
)
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

TINY = [
    "model.channels=4",
    "model.layers=3",
    "search.epochs=2",
    "search.batch_size=16",
    "run.log_every=2",
    "run.progress=false",
]
"""Overrides that make darts_digits a seconds-long search (after compilation)."""


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """128 train and 64 test digits as an npz dataset: 4 search steps per epoch at batch 16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 16).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny_digits.npz"
    np.savez(
        path,
        x_train=images[:128],
        y_train=digits.target[:128],
        x_test=images[128:192],
        y_test=digits.target[128:192],
    )
    return str(path)
