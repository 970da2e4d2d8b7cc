"""Times one search step of a strategy and prints one JSON line.

Random data of the given shape (as the PyTorch reference benchmark uses), so the
figures compare with `shared/bench/torch_darts_ref.py` run with the same flags:

    python benchmarks/search_step.py --channels 16 --layers 8 --batch 64 --image 32

Other strategies and spaces: `--strategy gdas`, `--space nb201`, and strategy options
as config overrides, e.g. `--set search.pcdarts.arch_warmup_epochs=0`.
"""

from __future__ import annotations

import argparse
import json

import jax
from common import batch_pool, environment, random_dataset, time_step

from nasax.core.config import apply_overrides, validate_config
from nasax.loop.runloop import count_leaves
from nasax.search.options import strategy_options
from nasax.search.strategy import STRATEGIES
from nasax.search.task import build_setup


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--strategy", default="darts")
    ap.add_argument("--space", default="darts")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--execution", default="auto", choices=("auto", "blocks", "fused"))
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, as the CLI's --set",
    )
    args = ap.parse_args(argv)

    base = {
        "model": {"space": args.space, "channels": args.channels, "layers": args.layers},
        "search": {"strategy": args.strategy, "batch_size": args.batch, "epochs": 1},
    }
    config = validate_config(apply_overrides(base, args.set))
    data = random_dataset(4 * args.batch, args.image, args.in_channels, args.classes, args.seed)
    setup = build_setup(config, data, steps_per_epoch=100)
    strategy = STRATEGIES.get(args.strategy)(setup, strategy_options(config.search))
    state = strategy.init(jax.random.PRNGKey(args.seed))
    pool = batch_pool(data, args.batch)
    state, figures = time_step(
        strategy.step,
        state,
        lambda it: (pool[(2 * it) % 4], pool[(2 * it + 1) % 4]),
        batch=args.batch,
        warmup=args.warmup,
        steps=args.steps,
        execution=args.execution,
        remat=config.run.remat,
    )
    out = {
        "bench": f"{args.strategy}_search_step_nasax",
        "space": args.space,
        "options": config.search.options,
        "channels": args.channels,
        "layers": args.layers,
        "batch": args.batch,
        "image": args.image,
        **figures,
        "params": count_leaves(state.params),
        **environment(),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
