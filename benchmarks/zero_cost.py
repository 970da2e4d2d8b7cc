"""Zero-cost proxies on NAS-Bench-201: rank correlation with the ground truth, speed, search.

Figures, one JSON line each:
- `rho`: per proxy (and the vote of synflow, jacob_cov and snip), Spearman rho between
  its scores and NB201's CIFAR-10 and CIFAR-100 test accuracy over a uniform sample of
  `--cells` distinct cells (all 15,625 with `--cells 15625`), with a bootstrap 95%
  interval, and the cells scored per second. The network is NB201's C16 N5 on 32x32
  CIFAR-10 (`../shared/data/cifar10.npz`), one batch of `--batch` training images
  (Abdelfattah et al. use 64), one line per seed (`--seeds`).
- `search`: the `zero_cost` strategy as NASWOT runs it: the best of `--pick` random cells
  by a proxy, each seed's cell looked up in the table, from a scoring made with `rho`
  (`--scores`), with the seconds that scoring that many cells takes.

    python benchmarks/zero_cost.py rho --cells 3000 --proxy synflow,snip --out /tmp/zc
    python benchmarks/zero_cost.py search --scores /tmp/zc --pick 1000

Scores go to `--out` (one JSON-lines file per seed, resumable); never into the repository.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from common import environment
from nb201_quality import load_table  # this folder's NB201 table reader (run as a script)

from nasax.loop.data import load_dataset
from nasax.search.proxies import VOTE, rank_vote
from nasax.search.scoring import (
    read_scores,
    sample_cells,
    score_batch,
    score_cells,
    scoring_network,
)
from nasax.supernet.spaces import get_space

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def bootstrap(a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    """The 95% percentile interval of Spearman rho over resampled cells."""
    rng = np.random.default_rng(seed)
    draws = [spearman(a[i], b[i]) for i in (rng.integers(0, len(a), len(a)) for _ in range(n))]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def rho(args: argparse.Namespace) -> list[dict]:
    space = get_space("nb201")
    dataset = load_dataset(f"npz:{args.data}")
    table = load_table(args.table)
    proxies = args.proxy.split(",")
    cells = sample_cells(space, args.cells, seed=1234)
    lines = []
    for seed in args.seeds:
        net = scoring_network(
            space,
            channels=16,
            layers=5,
            image_shape=dataset.image_shape,
            num_classes=10,
            key=jax.random.PRNGKey(seed),
            stem_multiplier=1,
        )
        batch = score_batch(dataset, args.batch, seed)
        out = args.out / f"scores_seed{seed}.jsonl"
        rates = {}
        for name in proxies:  # each proxy alone, so its rate is its own
            path = args.out / f"scores_seed{seed}_{name}.jsonl"
            tick = time.perf_counter()
            done = score_cells(net, cells, [name], batch, jax.random.PRNGKey(seed), path)
            if done:
                rates[name] = done / (time.perf_counter() - tick)
        scored = {n: read_scores(args.out / f"scores_seed{seed}_{n}.jsonl") for n in proxies}
        rows = [
            {"genotype": c.to_arch_string()} | {n: scored[n][k][n] for n in proxies}
            for k, c in enumerate(cells)
        ]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        truth = np.array([table[r["genotype"]] for r in rows])
        # a non-finite score (log 0 of a cell whose output ignores its input) ranks lowest
        columns = {n: np.array([-np.inf if r[n] is None else r[n] for r in rows]) for n in proxies}
        if set(VOTE) <= set(proxies):
            columns["vote"] = rank_vote(columns, VOTE)
        for name, values in columns.items():
            line = {
                "bench": "zero_cost_rho",
                "proxy": name,
                "seed": seed,
                "cells": len(values),
                "not_finite": int(np.sum(~np.isfinite(values))),
                "batch": args.batch,
                "rho_cifar10": spearman(values, truth[:, 0]),
                "rho_cifar10_95": bootstrap(values, truth[:, 0]),
                "rho_cifar100": spearman(values, truth[:, 1]),
                "cells_per_s": rates.get(name),
                **environment(),
            }
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


def search(args: argparse.Namespace) -> list[dict]:
    """NASWOT's protocol on a made scoring: for each seed, `--pick` cells drawn from the
    scored ones, the best by the proxy kept and looked up."""
    table = load_table(args.table)
    lines = []
    for path in sorted(args.scores.glob("scores_seed*.jsonl")):
        if "_" in path.stem.removeprefix("scores_seed"):
            continue
        rows = read_scores(path)
        names = [k for k in rows[0] if k != "genotype"]
        columns = {n: np.array([np.nan if r[n] is None else r[n] for r in rows]) for n in names}
        if set(VOTE) <= set(names):
            names.append("vote")
        for name in names:
            found = []
            for seed in range(args.repeats):
                pick = np.random.default_rng(seed).permutation(len(rows))[: args.pick]
                if name == "vote":
                    scores = rank_vote({n: columns[n][pick] for n in VOTE}, VOTE)
                else:
                    scores = np.where(
                        np.isfinite(columns[name][pick]), columns[name][pick], -np.inf
                    )
                best = rows[int(pick[int(np.argmax(scores))])]["genotype"]
                found.append(table[best][0])
            line = {
                "bench": "zero_cost_search",
                "scores": path.name,
                "proxy": name,
                "pick": args.pick,
                "repeats": args.repeats,
                "cifar10": found,
                "cifar10_mean": float(np.mean(found)),
                "cifar10_min": float(np.min(found)),
                **environment(),
            }
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("figure", choices=("rho", "search"))
    ap.add_argument("--cells", type=int, default=3000)
    ap.add_argument("--proxy", default="synflow,jacob_cov,snip,grad_norm,grasp,params,flops")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10.npz")
    ap.add_argument("--table", type=Path, default=SHARED / "nb201" / "nats_tss_200ep.csv")
    ap.add_argument("--out", type=Path, default=Path("/tmp/nasax-zero-cost"))
    ap.add_argument("--scores", type=Path, default=Path("/tmp/nasax-zero-cost"))
    ap.add_argument("--pick", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.figure == "rho":
        args.out.mkdir(parents=True, exist_ok=True)
        return rho(args)
    return search(args)


if __name__ == "__main__":
    main()
