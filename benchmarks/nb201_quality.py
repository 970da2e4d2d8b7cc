"""Search quality on NAS-Bench-201: run a strategy on CIFAR-10, look its cell up, one JSON line.

The found cell's CIFAR-10 and CIFAR-100 accuracy after NB201's 200-epoch training, and
its rank among the 15,625 cells, come from the ground-truth table, so nothing is
retrained. The line also gives the Kendall tau between the supernet's one-shot scores
(each cell run alone on the shared weights, BN on the batch's statistics, as the
strategies' own candidate scorers do) and the true accuracies of a fixed sample of cells,
and for the relaxations the tau of the cells' log-probabilities under the final alphas.

Presets:
- `cpu`: a proxy for 2 CPU cores: 10,000 training images at 16x16 (2x2 average pooled),
  2,000 test images, C=8, N=2 cells per stage, `--epochs` (default 30) of search.
- `nb201`: NB201's own protocol (C=16, N=5, 32x32, all 50,000 training images, the
  config's epochs), for a GPU.

    python benchmarks/nb201_quality.py --strategy beta_darts --seed 0
    python benchmarks/nb201_quality.py --strategy gdas --preset nb201 --out runs/q

The data (`--data`, default ../shared/data/cifar10.npz) and the table (`--table`, default
../shared/nb201/nats_tss_200ep.csv) are read where they are; the proxy's pooled subset
is written to a temporary folder, never into the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
PRESETS = {
    "cpu": {"channels": 8, "layers": 2, "train": 10_000, "test": 2_000, "pool": 2},
    "nb201": {"channels": 16, "layers": 5, "train": None, "test": None, "pool": 1},
}


def _pcdarts_network(options: Any) -> dict[str, Any]:
    from nasax.search.pcdarts import PartialChannelEdge

    return {
        "edge": partial(PartialChannelEdge, k=options.partial_channels),
        "edge_normalization": True,
    }


def _darts_minus_network(options: Any) -> dict[str, Any]:
    from nasax.search.darts_minus import AuxSkipEdge

    return {"edge": AuxSkipEdge}


NETWORK_OPTIONS = {"pcdarts": _pcdarts_network, "darts_minus": _darts_minus_network}
"""Strategies whose supernet is not the plain one: the options it was built with."""


def load_table(path: Path) -> dict[str, tuple[float, float]]:
    """NB201 arch string -> (CIFAR-10, CIFAR-100) test accuracy after 200 epochs."""
    with open(path, newline="") as f:
        return {
            row["ArchitectureString"]: (
                float(row["CIFAR10TestAccuracy200Epochs"]),
                float(row["CIFAR100TestAccuracy200Epochs"]),
            )
            for row in csv.DictReader(f)
        }


def proxy_dataset(source: Path, out: Path, train: int | None, test: int | None, pool: int) -> Path:
    """A fixed subset of `source` (the same for every seed and strategy), average pooled."""
    with np.load(source) as f:
        data = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        if n is not None:
            keep = np.sort(rng.permutation(len(data[f"y_{split}"]))[:n])
            for k in (f"x_{split}", f"y_{split}"):
                data[k] = data[k][keep]
        if pool > 1:
            x = data[f"x_{split}"].astype(np.float32)
            n_, h, w, c = x.shape
            x = x.reshape(n_, h // pool, pool, w // pool, pool, c).mean(axis=(2, 4))
            data[f"x_{split}"] = np.round(x).astype(np.uint8)
    np.savez(out, **data)
    return out


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def alpha_scores(alpha: np.ndarray, arch_strings: list[str]) -> np.ndarray:
    """Each cell's log-probability under the softmax of the final alphas (edges, ops)."""
    from nasax.search.single_path import genotype_paths
    from nasax.supernet.genotypes import Genotype
    from nasax.supernet.spaces import get_space

    space = get_space("nb201")
    logp = alpha - np.log(np.exp(alpha).sum(-1, keepdims=True))
    edges = np.arange(space.n_edges)
    return np.array(
        [
            logp[edges, genotype_paths(Genotype.from_arch_string(a), space)["normal"]].sum()
            for a in arch_strings
        ]
    )


def one_shot_scores(config, run_dir: Path, arch_strings: list[str], batches: int) -> np.ndarray:
    """Validation accuracy of each cell run alone on the search's final shared weights."""
    from nasax.loop.data import batches as batch_iter
    from nasax.loop.data import load_dataset, search_split
    from nasax.search.options import strategy_options
    from nasax.search.single_path import genotype_paths, load_supernet_weights, path_scorer
    from nasax.search.strategy import FunctionalSupernet
    from nasax.search.task import build_setup
    from nasax.supernet.genotypes import Genotype

    s = config.search
    dataset = load_dataset(config.data.name, config.data.data_dir, config.data.num_classes)
    train_idx, val_idx = search_split(len(dataset.x_train), s.train_portion, config.seed)
    steps = min(len(train_idx), len(val_idx)) // s.batch_size
    setup = build_setup(config, dataset, steps)
    options = NETWORK_OPTIONS.get(s.strategy, lambda o: {})(strategy_options(s))
    net = FunctionalSupernet.create(setup, **options)
    state = load_supernet_weights(run_dir / "checkpoints", net.init(jax.random.PRNGKey(0)))
    score = path_scorer(net, setup)
    paths = [genotype_paths(Genotype.from_arch_string(a), setup.space) for a in arch_strings]
    stacked = {k: jnp.asarray(np.stack([p[k] for p in paths])) for k in paths[0]}
    total = np.zeros(len(arch_strings))
    used = 0
    for b in batch_iter(dataset.x_train, dataset.y_train, val_idx, s.batch_size):
        if used == batches:
            break
        total += np.asarray(score(state, stacked, jax.device_put(b)))
        used += 1
    return total / (used * s.batch_size)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--strategy", default="darts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--epochs", type=int, default=None, help="cpu: 30; nb201: the config's")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10.npz")
    ap.add_argument("--table", type=Path, default=SHARED / "nb201" / "nats_tss_200ep.csv")
    ap.add_argument("--tau-cells", type=int, default=64, help="cells sampled for Kendall tau")
    ap.add_argument("--tau-batches", type=int, default=16, help="validation batches per score")
    ap.add_argument("--out", type=Path, default=None, help="keep the run directory here")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument(
        "--from-run", type=Path, default=None, help="score a finished run instead of searching"
    )
    args = ap.parse_args(argv)

    from nasax.core.config import load_config
    from nasax.search.task import run_search
    from nasax.supernet.genotypes import Genotype

    table = load_table(args.table)
    preset = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        data = proxy_dataset(
            args.data, Path(tmp) / "cifar10.npz", preset["train"], preset["test"], preset["pool"]
        )
        epochs = args.epochs or (30 if args.preset == "cpu" else None)
        overrides = [
            f"data.name=npz:{data}",
            f"model.channels={preset['channels']}",
            f"model.layers={preset['layers']}",
            f"seed={args.seed}",
            "run.progress=false",
            "run.plots=false",
            "run.tensorboard=false",
            *([f"search.epochs={epochs}"] if epochs else []),
            *args.set,
        ]
        if args.from_run is None:
            config = load_config(f"{args.strategy}_nb201_cifar10", overrides)
            run_dir = args.out or Path(tmp) / "run"
            start = time.perf_counter()
            summary = run_search(config, run_dir, overwrite=args.out is not None)
            search_s = time.perf_counter() - start
        else:  # its own config, reading the proxy data written above
            run_dir = args.from_run
            config = load_config(run_dir / "config.yaml", [f"data.name=npz:{data}"])
            summary = json.loads((run_dir / "summary.json").read_text())
            search_s = summary["wall_seconds"]
        arch = Genotype.load(run_dir / "genotype.json").to_arch_string()

        accuracies = np.array([c10 for c10, _ in table.values()])
        c10, c100 = table[arch]
        sample = np.random.default_rng(12345).choice(len(table), args.tau_cells, replace=False)
        names = list(table)
        sampled = [names[i] for i in sample]
        truth = np.array([table[a][0] for a in sampled])
        scores = one_shot_scores(config, run_dir, sampled, args.tau_batches)
        tau = kendall_tau(scores, truth)
        alpha_tau = None
        with np.load(run_dir / "alphas.npz") as f:
            if "alpha_normal" in f.files:  # a relaxation: how its alphas rank the same cells
                alpha_tau = kendall_tau(alpha_scores(f["alpha_normal"][-1], sampled), truth)

    result = {
        "bench": "nb201_quality",
        "strategy": config.search.strategy,
        "preset": args.preset,
        "seed": config.seed,
        "epochs": config.search.epochs,
        "arch": arch,
        "cifar10": round(c10, 2),
        "cifar100": round(c100, 2),
        "rank": int(1 + np.sum(accuracies > c10)),
        "of": len(table),
        "search_s": round(search_s, 1),
        "epochs_planned": summary.get("epochs_planned"),
        "supernet_test_accuracy": summary.get("test_accuracy"),
        "kendall_tau": round(tau, 3),
        "alpha_kendall_tau": None if alpha_tau is None else round(alpha_tau, 3),
        "tau_cells": args.tau_cells,
        "one_shot_mean": round(float(scores.mean()), 4),
        "backend": jax.default_backend(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
