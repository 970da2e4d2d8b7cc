"""JAX's on-disk cache of compiled programs, as nasax's commands and ImageClassifier use it."""

from __future__ import annotations

import os
from pathlib import Path


def enable_compilation_cache() -> None:
    """Keeps compiled XLA programs on disk, so a rerun or a resume does not compile again.

    JAX_COMPILATION_CACHE_DIR chooses the folder (default ~/.cache/nasax/jax).
    """
    import jax

    default = Path.home() / ".cache" / "nasax" / "jax"
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(default))
    )
    # Keep every program, however small: a block step and its eager initialisation run
    # dozens of programs that compile in 20-30 ms each and load from disk in about 2 ms
    # (measured: a warm `nasax search darts_digits` reaches its first step in 19.7-20.4 s
    # instead of 21.3-21.8 s with a 0.1 s floor).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def use_compilation_cache() -> None:
    """`enable_compilation_cache`, unless the program already chose a cache folder itself."""
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        enable_compilation_cache()


def release_if_crowded(share: float = 0.5) -> bool:
    """Drops JAX's in-process compiled programs when this process holds more than `share`
    of the memory maps Linux allows one process (`vm.max_map_count`, 65,530 by default).

    Every loaded XLA CPU executable holds maps of its own, and a block step loads dozens;
    a process that runs many searches (`nasax tune`'s trials, repeated `ImageClassifier`
    fits) would otherwise pass the limit, where loading the next executable crashes the
    interpreter (measured: the test suite in one process, at about 65,000 maps). What is
    dropped reloads from the on-disk cache; traced programs kept for reuse (a search's
    block plan) hold no executable and stay (measured: a tiny search's 10,205 maps fall to
    1,241 either way). Returns whether it dropped anything; elsewhere than Linux it does
    nothing.
    """
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            maps = sum(1 for _ in f)
    except (OSError, ValueError):
        return False
    if maps < share * limit:
        return False
    import jax

    jax.clear_caches()
    return True


__all__ = ["enable_compilation_cache", "release_if_crowded", "use_compilation_cache"]
