"""Cost budgets: how well the latency table predicts whole networks, how long profiling
takes, and what the cost term adds to a search step. One JSON line per figure.

    python benchmarks/cost.py latency --space nb201 --cells 50 --batch 1
    python benchmarks/cost.py retest --space nb201 --cells 10 --batch 1
    python benchmarks/cost.py profile --space darts --batch 1
    python benchmarks/cost.py step --target 1e6 --runs 3 --channels 16 --layers 5

Networks are the space's published size (DARTS C36 L20, NAS-Bench-201 C16 N5) on 32x32x3
images and 10 classes, with zero weights; latency is the fastest of repeated calls.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from common import batch_pool, environment, random_dataset, time_step

from nasax.core.config import apply_overrides, validate_config
from nasax.search.budget import make_budget
from nasax.search.options import strategy_options
from nasax.search.profiling import Deploy, network_ms, profile_space, random_genotype
from nasax.search.strategy import STRATEGIES
from nasax.search.task import build_setup
from nasax.supernet.skeletons import skeleton_of
from nasax.supernet.spaces import get_space


def deploy_of(space: str) -> Deploy:
    d = skeleton_of(get_space(space)).discrete_network.defaults
    return Deploy(d["channels"], d["layers"], (32, 32), 3, 10)


def _relative(args: argparse.Namespace, difference) -> np.ndarray:
    """|difference(genotype)| over `args.cells` random cells of `args.space` (fixed seed)."""
    space, rng = get_space(args.space), np.random.default_rng(args.seed)
    return np.abs([difference(random_genotype(space, rng)) for _ in range(args.cells)])


def latency(args: argparse.Namespace) -> list[dict]:
    """Predicted against measured latency of random cells' networks."""
    space, deploy = get_space(args.space), deploy_of(args.space)
    tick = time.perf_counter()
    profile = profile_space(space, deploy, args.batch, cache=False)
    profile_s = time.perf_counter() - tick
    out = []
    for batch in args.batch:
        table = profile.table("latency", batch)

        def error(genotype, table=table, batch=batch) -> float:
            measured = network_ms(genotype, deploy, batch, args.repeats)
            return table.of_genotype(genotype, space) / measured - 1

        errors = _relative(args, error)
        out.append(
            {
                "bench": "cost_latency_prediction",
                "space": args.space,
                "batch": batch,
                "cells": args.cells,
                "within_10pct": float(np.mean(errors <= 0.10)),
                "median_abs_error": float(np.median(errors)),
                "p90_abs_error": float(np.quantile(errors, 0.9)),
                "profile_s": profile_s,
            }
        )
    return out


def retest(args: argparse.Namespace) -> list[dict]:
    """The same network measured twice (each a fresh compile): the floor of any predictor."""
    deploy = deploy_of(args.space)
    out = []
    for batch in args.batch:

        def twice(genotype, batch=batch) -> float:
            a, b = (network_ms(genotype, deploy, batch, args.repeats) for _ in range(2))
            return a / b - 1

        spread = _relative(args, twice)
        out.append(
            {
                "bench": "cost_latency_retest",
                "space": args.space,
                "batch": batch,
                "cells": args.cells,
                "within_10pct": float(np.mean(spread <= 0.10)),
                "median_abs_difference": float(np.median(spread)),
                "max_abs_difference": float(spread.max()),
            }
        )
    return out


def profile(args: argparse.Namespace) -> list[dict]:
    """`nasax profile`'s work, timed, without its kept table."""
    space, deploy = get_space(args.space), deploy_of(args.space)
    tick = time.perf_counter()
    table = profile_space(space, deploy, args.batch, cache=False)
    return [
        {
            "bench": "cost_profile",
            "space": args.space,
            "batch_sizes": args.batch,
            "seconds": time.perf_counter() - tick,
            "blocks": len(table.blocks),
        }
    ]


def step(args: argparse.Namespace) -> list[dict]:
    """DARTS' first-order search step (C16 L5, batch 32, 16x16 by default) with and
    without a params budget, the two alternating."""
    data = random_dataset(8 * args.step_batch, args.image, 3, 10, args.seed)
    pool = batch_pool(data, args.step_batch)
    figures: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.runs):
        for mode in ("off", "on"):
            base = {
                "model": {"channels": args.channels, "layers": args.layers},
                "search": {"strategy": "darts", "batch_size": args.step_batch, "epochs": 1},
            }
            sets = (
                []
                if mode == "off"
                else ["search.cost.metric=params", f"search.cost.target={args.target}"]
            )
            config = validate_config(apply_overrides(base, sets))
            budget = make_budget(config, data)
            setup = build_setup(config, data, steps_per_epoch=100, budget=budget)
            strategy = STRATEGIES.get("darts")(setup, strategy_options(config.search))
            state = strategy.init(jax.random.PRNGKey(args.seed))
            _, timing = time_step(
                strategy.step,
                state,
                lambda it: (pool[(2 * it) % 4], pool[(2 * it + 1) % 4]),
                batch=args.step_batch,
                warmup=2,
                steps=args.steps,
                execution="auto",
            )
            figures[mode].append(timing["step_ms"])
    off, on = np.median(figures["off"]), np.median(figures["on"])
    return [
        {
            "bench": "cost_term_step_time",
            "step_ms_without": figures["off"],
            "step_ms_with": figures["on"],
            "ratio_of_medians": float(on / off),
        }
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("figure", choices=("latency", "retest", "profile", "step"))
    ap.add_argument("--space", default="nb201", choices=("darts", "nb201"))
    ap.add_argument("--cells", type=int, default=50)
    ap.add_argument("--batch", type=lambda s: [int(b) for b in s.split(",")], default=[1])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=1e6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--image", type=int, default=16)
    ap.add_argument("--step-batch", type=int, default=32)
    args = ap.parse_args(argv)
    lines = globals()[args.figure](args)
    for line in lines:
        print(json.dumps({**line, **environment()}), flush=True)
    return lines


if __name__ == "__main__":
    main()
