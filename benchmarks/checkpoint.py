"""Times saving and restoring a complete search checkpoint and prints one JSON line.

The state is the one `nasax search` checkpoints (weights, BN statistics, alphas, both
optimizer states, rng, step), at the paper config by default:

    python benchmarks/checkpoint.py [--channels 16 --layers 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
from common import random_dataset

from nasax.core.checkpoint import Checkpoints
from nasax.core.config import validate_config
from nasax.loop.runloop import count_leaves, peak_rss_mb
from nasax.search.options import strategy_options
from nasax.search.strategy import STRATEGIES
from nasax.search.task import build_setup


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    config = validate_config({"model": {"channels": args.channels, "layers": args.layers}})
    data = random_dataset(64, 32, 3, 10, 0)
    setup = build_setup(config, data, steps_per_epoch=100)
    strategy = STRATEGIES.get("darts")(setup, strategy_options(config.search))
    state = strategy.init(jax.random.PRNGKey(0))
    meta = {"epoch": 1, "batch": 0, "step": 1, "metrics": [], "pending": [], "elapsed": 0.0}

    saves, restores = [], []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Checkpoints(Path(tmp) / "checkpoints", keep=2)
        for i in range(args.repeats):
            t0 = time.perf_counter()
            checkpoints.save(i + 1, state, {**meta, "step": i + 1})
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            checkpoints.restore(state)
            restores.append(time.perf_counter() - t0)
        size = folder_bytes(Path(tmp) / "checkpoints" / str(args.repeats))
        checkpoints.close()
    out = {
        "bench": "search_checkpoint_nasax",
        "channels": args.channels,
        "layers": args.layers,
        "leaves": len(jax.tree.leaves(state)),
        "scalars": count_leaves(state),
        "checkpoint_mb": round(size / 2**20, 2),
        "save_s": round(statistics.median(saves), 3),
        "restore_s": round(statistics.median(restores), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
