"""Times ENAS' controller steps and regularized evolution's cycles; prints one JSON line.

Random data of the given shape. A controller step samples `aggregate` cells, scores
each on a validation batch with the shared weights and takes a REINFORCE step; an
evolution cycle mutates a cell and scores it on `select_batches` batches. Both are
timed after one warm-up call (which compiles):

    python benchmarks/sampling.py --channels 8 --layers 5 --image 8 --in-channels 1
"""

from __future__ import annotations

import argparse
import json
import time

import jax
from common import batch_pool, environment, random_dataset

from nasax.core.config import apply_overrides, validate_config
from nasax.loop.runloop import peak_rss_mb
from nasax.search.options import strategy_options
from nasax.search.strategy import STRATEGIES
from nasax.search.task import build_setup


def _strategy(args: argparse.Namespace, name: str, options: dict, data) -> tuple:
    base = {
        "model": {"space": args.space, "channels": args.channels, "layers": args.layers},
        "search": {"strategy": name, "batch_size": args.batch, "epochs": 1, name: options},
    }
    if args.space == "nb201":
        base["model"]["stem_multiplier"] = 1
    config = validate_config(apply_overrides(base, args.set))
    setup = build_setup(config, data, steps_per_epoch=100)
    strategy = STRATEGIES.get(name)(setup, strategy_options(config.search))
    return strategy, strategy.init(jax.random.PRNGKey(args.seed))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--space", default="darts")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image", type=int, default=8)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--controller-steps", type=int, default=10)
    ap.add_argument("--aggregate", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--select-batches", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)

    data = random_dataset(4 * args.batch, args.image, args.in_channels, args.classes, args.seed)
    pool = batch_pool(data, args.batch)

    def stream():
        while True:
            yield from pool

    enas, state = _strategy(
        args,
        "enas",
        {"controller_steps": args.controller_steps, "aggregate": args.aggregate},
        data,
    )
    t0 = time.perf_counter()
    state, _ = enas.after_epoch(state, stream())  # compiles, then runs the phase
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, records = enas.after_epoch(state, stream())
    jax.block_until_ready(records[-1])
    phase = time.perf_counter() - t0

    population = 10
    evolution, evo_state = _strategy(
        args,
        "evolution",
        {
            "population": population,
            "sample_size": 3,
            "cycles": args.cycles,
            "select_batches": args.select_batches,
        },
        data,
    )
    evolution.select(evo_state, iter(pool))  # compiles the scorer for 1 and 10 cells
    t0 = time.perf_counter()
    evolution.select(evo_state, iter(pool))
    evolve = time.perf_counter() - t0
    out = {
        "bench": "sampling_strategies_nasax",
        "space": args.space,
        "channels": args.channels,
        "layers": args.layers,
        "batch": args.batch,
        "image": args.image,
        "controller_steps_per_sec": round(args.controller_steps / phase, 3),
        "controller_aggregate": args.aggregate,
        "controller_phase_first_s": round(first, 1),
        "evolution_cycles_per_sec": round((population + args.cycles) / evolve, 3),
        "evolution_select_batches": args.select_batches,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **environment(),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
