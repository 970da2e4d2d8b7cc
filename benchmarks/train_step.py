"""Times one retraining step of a genotype's network and prints one JSON line.

Defaults are `retrain_cifar10`'s network and protocol (DARTS_V2, 36 channels, 20 cells,
batch 96, 32x32x3, auxiliary head, drop path, cutout) on random data:

    python benchmarks/train_step.py [--genotype DARTS_V2] [--channels 36 --layers 20]
"""

from __future__ import annotations

import argparse
import json

import jax
from common import batch_pool, environment, random_dataset, time_step

from nasax.core.config import load_config
from nasax.supernet.discrete import param_counts
from nasax.supernet.genotypes import load_genotype
from nasax.train.task import build_trainer


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
    ap.add_argument("--execution", default="auto", choices=("auto", "blocks", "fused"))
    ap.add_argument(
        "--remat",
        default=None,
        choices=("auto", "none", "convs", "full"),
        help="what each block keeps for backward (default: the config's run.remat)",
    )
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
    pool = batch_pool(data, args.batch)
    state, figures = time_step(
        trainer.step,
        state,
        lambda it: (pool[it % 4],),
        batch=args.batch,
        warmup=args.warmup,
        steps=args.steps,
        execution=args.execution,
        remat=args.remat or config.run.remat,
    )
    out = {
        "bench": "train_step_nasax",
        "genotype": args.genotype,
        "channels": args.channels,
        "layers": args.layers,
        "batch": args.batch,
        "image": args.image,
        **figures,
        **counts,
        **environment(),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
