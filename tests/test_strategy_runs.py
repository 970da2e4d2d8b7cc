"""Every strategy runs through the CLI on a tiny NAS-Bench-201 search and yields a valid
genotype, with its step compiled as one XLA program that never calls back to the host.

(DARTS runs through the CLI in test_cli and test_nb201; its second-order step, the
costliest to compile, is checked directly in test_darts_second_order.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasax.cli import main
from nasax.search import loop
from nasax.supernet.genotypes import Genotype

TINY_NB201 = [
    "model.space=nb201",
    "model.stem_multiplier=1",
    "model.channels=4",
    "model.layers=1",
    "search.epochs=2",
    "search.batch_size=16",
    "run.log_every=2",
    "run.progress=false",
    "run.plots=false",
]

STRATEGIES = {
    "gdas": ["search.strategy=gdas"],
    "snas": ["search.strategy=snas"],
    "drnas": ["search.strategy=drnas"],
    "pcdarts": ["search.strategy=pcdarts", "search.pcdarts.arch_warmup_epochs=1"],
    "random_ws": ["search.strategy=random_ws", "search.random_ws.candidates=8"],
}


def _search(name: str, tiny_npz: str, out) -> tuple:
    args = ["search", "darts_nb201_digits", "--out", str(out)]
    for item in [*TINY_NB201, f"data.name=npz:{tiny_npz}", *STRATEGIES[name]]:
        args += ["--set", item]
    assert main(args) == 0
    step, _ = next(reversed(loop._COMPILED.values()))  # the programs this run compiled
    return step, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_searches_through_the_cli(name, tiny_npz, tmp_path):
    step, summary = _search(name, tiny_npz, tmp_path / name)
    genotype = Genotype.load(tmp_path / name / "genotype.json")
    assert genotype.space == "nb201"
    assert summary["genotype_text"] == genotype.to_arch_string()
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    # One program per step, with no host callback inside it.
    hlo = step.as_text()
    assert "callback" not in hlo.lower()
    metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
    steps = [m for m in metrics if "train_loss" in m]
    assert steps and all(np.isfinite(m["train_loss"]) for m in steps)
    alphas = np.load(tmp_path / name / "alphas.npz")
    if name == "gdas":
        assert steps[0]["tau"] == pytest.approx(10.0)
    if name == "pcdarts":
        # The warm-up epoch leaves alphas and betas where they started; then they train.
        assert alphas["alpha_normal"].shape == (2, 6, 5)
        assert alphas["beta_normal"].shape == (2, 6)
        assert np.abs(alphas["alpha_normal"][0]).max() < 0.01  # 1e-3 scale initialisation
        assert not np.allclose(alphas["alpha_normal"][1], alphas["alpha_normal"][0])
    if name == "random_ws":
        assert "alpha_normal" not in alphas.files
