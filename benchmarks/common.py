"""Helpers the benchmark scripts share (run them from any folder: python benchmarks/X.py)."""

from __future__ import annotations

import numpy as np

from nasax.data import Dataset


def random_dataset(n: int, image: int, channels: int, classes: int, seed: int) -> Dataset:
    """Uniform random uint8 images and labels, as the PyTorch reference benchmark uses."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, image, image, channels), dtype=np.uint8)
    y = rng.integers(0, classes, n).astype(np.int32)
    mean, std = np.full(channels, 127.5, np.float32), np.full(channels, 73.9, np.float32)
    return Dataset("random", x, y, x[:8], y[:8], classes, mean, std)
