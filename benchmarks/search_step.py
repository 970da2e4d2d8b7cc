"""Times one search step of a strategy and prints one JSON line.

Random data of the given shape (as the PyTorch reference benchmark uses), so the
figures compare with `shared/bench/torch_darts_ref.py` run with the same flags:

    python benchmarks/search_step.py --channels 16 --layers 8 --batch 64 --image 32
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np
from common import random_dataset

from nasax.config import validate_config
from nasax.runloop import count_leaves, peak_rss_mb
from nasax.search.loop import build_setup
from nasax.search.strategy import STRATEGIES


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--strategy", default="darts")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    config = validate_config(
        {
            "model": {"channels": args.channels, "layers": args.layers},
            "search": {"strategy": args.strategy, "batch_size": args.batch, "epochs": 1},
        }
    )
    data = random_dataset(4 * args.batch, args.image, args.in_channels, args.classes, args.seed)
    setup = build_setup(config, data, steps_per_epoch=100)
    strategy = STRATEGIES.get(args.strategy)(setup, config.search.strategy_options())
    state = strategy.init(jax.random.PRNGKey(args.seed))
    pool = [
        {
            "image": data.x_train[i * args.batch : (i + 1) * args.batch],
            "label": data.y_train[i * args.batch : (i + 1) * args.batch],
        }
        for i in range(4)
    ]
    pool = [jax.device_put(b) for b in pool]

    t0 = time.perf_counter()
    step = jax.jit(strategy.step, donate_argnums=(0,)).lower(state, pool[0], pool[1]).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for it in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, pool[(2 * it) % 4], pool[(2 * it + 1) % 4])
        loss = float(metrics["train_loss"])  # blocks until the step is done
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            raise FloatingPointError("non-finite loss")
    med = statistics.median(times)
    out = {
        "bench": f"{args.strategy}_search_step_nasax",
        "channels": args.channels,
        "layers": args.layers,
        "batch": args.batch,
        "image": args.image,
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_sec": round(args.batch / med, 3),
        "step_ms": round(1e3 * med, 1),
        "step_ms_min": round(1e3 * min(times), 1),
        "compile_s": round(compile_s, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "params": count_leaves(state.params),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
