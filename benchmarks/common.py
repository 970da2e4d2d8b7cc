"""Helpers the benchmark scripts share (run them from any folder: python benchmarks/X.py)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from nasax.engine.blocks import compile_program, resolve_execution, resolve_remat
from nasax.loop.data import Dataset
from nasax.loop.runloop import peak_rss_mb


def random_dataset(n: int, image: int, channels: int, classes: int, seed: int) -> Dataset:
    """Uniform random uint8 images and labels, as the PyTorch reference benchmark uses."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, image, image, channels), dtype=np.uint8)
    y = rng.integers(0, classes, n).astype(np.int32)
    mean, std = np.full(channels, 127.5, np.float32), np.full(channels, 73.9, np.float32)
    return Dataset("random", x, y, x[:8], y[:8], classes, mean, std)


def batch_pool(data: Dataset, batch: int, n: int = 4) -> list[dict]:
    """`n` device-resident batches cut from the start of the training set."""
    return [
        jax.device_put(
            {
                "image": data.x_train[i * batch : (i + 1) * batch],
                "label": data.y_train[i * batch : (i + 1) * batch],
            }
        )
        for i in range(n)
    ]


def time_step(
    step_fn: Callable,
    state: Any,
    inputs: Callable[[int], tuple],
    *,
    batch: int,
    warmup: int,
    steps: int,
    execution: str = "fused",
    remat: str = "auto",
) -> tuple[Any, dict]:
    """Compiles `step_fn`, runs it, and returns the timing figures.

    `inputs(i)` gives the batches of step `i`. The median step time counts the steps
    after `warmup`; each step is timed until its `train_loss` reaches the host.
    `execution` is "fused" (one program, the state donated) or "blocks" (`compile_s` is
    the trace and the compilation of every block; `first_step_s` adds what compiles at
    the first call, such as single primitives of the glue).
    """
    execution = resolve_execution(execution)
    t0 = time.perf_counter()
    step = compile_program(step_fn, (state, *inputs(0)), execution, donate=True, remat=remat)
    compile_s = time.perf_counter() - t0
    memory = step.memory_analysis() if execution == "fused" else None
    rss_after_compile = peak_rss_mb()
    times = []
    first_step_s = None
    for it in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = step(state, *inputs(it))
        loss = float(metrics["train_loss"])  # blocks until the step is done
        if it == 0:
            first_step_s = time.perf_counter() - t0
        if it >= warmup:
            times.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            raise FloatingPointError("non-finite loss")
    med = statistics.median(times)
    figures = {
        "execution": execution,
        "remat": resolve_remat(remat, execution),
        "steps": steps,
        "warmup": warmup,
        "images_per_sec": round(batch / med, 3),
        "step_ms": round(1e3 * med, 1),
        "step_ms_min": round(1e3 * min(times), 1),
        "compile_s": round(compile_s, 1),
        "first_step_s": round(first_step_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        # The high-water mark once compiled: what compiling (and building the state) took.
        "peak_rss_after_compile_mb": round(rss_after_compile, 1),
    }
    if memory is not None:  # XLA's buffer plan for one step (not every backend has it)
        figures["step_temp_mb"] = round(memory.temp_size_in_bytes / 2**20, 1)
    return state, figures


def environment() -> dict:
    """Where the figures were measured."""
    return {
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
