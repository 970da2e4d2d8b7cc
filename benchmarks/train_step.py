"""Times one retraining step of a genotype's network and prints one JSON line.

Defaults are `retrain_cifar10`'s network and protocol (DARTS_V2, 36 channels, 20 cells,
batch 96, 32x32x3, auxiliary head, drop path, cutout) on random data:

    python benchmarks/train_step.py [--genotype DARTS_V2] [--channels 36 --layers 20]
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

from nasax.config import load_config
from nasax.runloop import peak_rss_mb
from nasax.supernet.discrete import param_counts
from nasax.supernet.genotypes import load_genotype
from nasax.train.loop import build_trainer


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="retrain_cifar10")
    ap.add_argument("--genotype", default="DARTS_V2")
    ap.add_argument("--channels", type=int, default=36)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    config = load_config(
        args.config,
        [
            f"model.channels={args.channels}",
            f"model.layers={args.layers}",
            f"train.batch_size={args.batch}",
        ],
    )
    data = random_dataset(4 * args.batch, args.image, args.in_channels, 10, args.seed)
    trainer = build_trainer(config, load_genotype(args.genotype), data)
    state = trainer.init(jax.random.PRNGKey(args.seed))
    counts = param_counts(trainer.module(state))
    pool = [
        jax.device_put(
            {
                "image": data.x_train[i * args.batch : (i + 1) * args.batch],
                "label": data.y_train[i * args.batch : (i + 1) * args.batch],
            }
        )
        for i in range(4)
    ]

    t0 = time.perf_counter()
    step = jax.jit(trainer.step, donate_argnums=(0,)).lower(state, pool[0]).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for it in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, pool[it % 4])
        loss = float(metrics["train_loss"])  # blocks until the step is done
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            raise FloatingPointError("non-finite loss")
    med = statistics.median(times)
    out = {
        "bench": "train_step_nasax",
        "genotype": args.genotype,
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
        **counts,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
