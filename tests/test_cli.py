"""End to end through the `nasax` command: a tiny search, its run directory, resume, errors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from nasax.app.cli import main
from nasax.core.checkpoint import Checkpoints
from nasax.search import task as search_task
from nasax.supernet.genotypes import Genotype
from tests.conftest import search_args


def test_search_writes_a_complete_run_directory(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "genotype.json",
        "alphas.npz",
        "summary.json",
        "checkpoints",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    genotype = Genotype.load(finished_run / "genotype.json")
    genotype.validate()
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["genotype"] == genotype.to_dict()
    assert summary["steps"] == 2 * 4 and summary["epochs"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    resolved = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert resolved["search"]["epochs"] == 2 and resolved["model"]["channels"] == 4
    assert resolved["search"]["darts"] == {"order": 1, "hessian": "exact", "unrolled_lr": None}
    assert resolved["optim"]["weights"]["lr"] == 0.025  # defaults are written out


def test_metrics_and_alphas_are_logged_per_step_and_epoch(finished_run):
    lines = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "search"]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and r["images_per_sec"] > 0 for r in steps)
    assert all("test_acc" in r for r in epochs)
    with np.load(finished_run / "alphas.npz") as f:
        assert f["alpha_normal"].shape == (2, 14, 8) and f["alpha_reduce"].shape == (2, 14, 8)
        assert f["ops"][0] == "none" and f["edges"].shape == (14, 2)
        # Trained between the epochs: Adam steps of about the lr (3e-4), far past allclose's
        # 1e-5 |a| + 1e-8.
        assert not np.allclose(f["alpha_normal"][0], f["alpha_normal"][1])


def test_existing_run_directory_is_not_overwritten(finished_run, tiny_npz, capsys):
    assert main(search_args(tiny_npz, finished_run)) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--resume" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["search.epoch=2"], "unknown key 'search.epoch'"),
        (["search.batch_size=0"], "search.batch_size"),
        (["data.name=npz:/nonexistent/data.npz"], "does not exist"),
        (["search.batch_size=4096"], "fewer than one batch"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_npz, capsys, sets, fragment):
    args = search_args(tiny_npz, tmp_path / "run")
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_interrupted_search_resumes_to_the_uninterrupted_result(
    finished_run, tiny_npz, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "interrupted"
    real_prefetch = search_task.prefetch
    drawn = {"batches": 0}

    def prefetch_then_interrupt(it, size=2, **kw):
        for batch in real_prefetch(it, size, **kw):
            drawn["batches"] += 1
            if drawn["batches"] == 12:  # both streams of the second epoch: a real SIGINT
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(search_task, "prefetch", prefetch_then_interrupt)
    assert main(search_args(tiny_npz, out)) == 130
    err = capsys.readouterr().err
    assert "SIGINT" in err and "--resume" in err
    assert (out / "genotype.json").exists() and not (out / "summary.json").exists()
    monkeypatch.setattr(search_task, "prefetch", real_prefetch)
    assert main(search_args(tiny_npz, out, "--resume")) == 0

    a, b = finished_run, out
    assert (a / "genotype.json").read_text() == (b / "genotype.json").read_text()
    with np.load(a / "alphas.npz") as fa, np.load(b / "alphas.npz") as fb:
        for key in ("alpha_normal", "alpha_reduce"):
            np.testing.assert_array_equal(fa[key], fb[key])
    ca, cb = Checkpoints(a / "checkpoints"), Checkpoints(b / "checkpoints")
    assert ca.latest_step() == cb.latest_step() == 8
    flat_a, flat_b = ca.restore_flat(8)[0], cb.restore_flat(8)[0]
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert sa["test_accuracy"] == sb["test_accuracy"]

    # Two processes with the same config and seed: the same metrics, step for step.
    def untimed(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "images_per_sec"} for x in lines]

    assert untimed(a) == untimed(b)


def test_a_beta_darts_search_logs_its_cross_entropy_and_its_regulariser_apart(tiny_npz, tmp_path):
    """`val_loss` is the validation cross-entropy in metrics.jsonl and TensorBoard, near
    chance's log 10 here; β-DARTS' regulariser is `beta_reg`, 50 times a mean logsumexp
    of 5 near-zero alphas (about 50 log 5) in the last epoch, and `val_objective` the sum."""
    from tensorboard.backend.event_processing import event_accumulator

    from tests.test_strategy_runs import TINY_NB201
    from tests.tolerance import assert_close

    out = tmp_path / "beta"
    sets = [*TINY_NB201, f"data.name=npz:{tiny_npz}", "search.strategy=beta_darts"]
    args = ["search", "darts_nb201_digits", *[w for s in sets for w in ("--set", s)]]
    assert main([*args, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in records if r["kind"] == "search"]
    assert steps and all(0 < r["val_loss"] < 2 * np.log(10) for r in steps)
    for r in steps:
        why = "a float32 sum, as means of the same steps"
        assert_close(r["val_objective"], r["val_loss"] + r["beta_reg"], terms=3, why=why)
    last = [r for r in steps if r["epoch"] == 2]
    assert last and all(r["beta_reg"] > 0.9 * 50 * np.log(5) for r in last)
    assert all(r["val_objective"] > 10 * r["val_loss"] for r in last)
    events = event_accumulator.EventAccumulator(str(out / "tensorboard")).Reload()
    assert {"search/val_loss", "search/beta_reg", "search/val_objective"} <= set(
        events.Tags()["scalars"]
    )
    assert main(["report", str(out)]) == 0


def test_version_names_nasax_and_the_libraries_it_runs_on(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as raised:
        main(["--version"])
    assert raised.value.code == 0
    first, second = capsys.readouterr().out.strip().splitlines()
    assert first == f"nasax {version('nasax')}"
    for name in ("jax", "jaxlib", "flax", "optax"):
        assert f"{name} {version(name)}" in second


def test_the_old_export_form_carries_on_in_the_new_one(tmp_path):
    from nasax.app.cli import build_parser, continue_command

    argv = ["export", "runs/trained", str(tmp_path / "model"), "--quiet"]
    args = build_parser().parse_args(argv)
    assert continue_command(argv, args) == (
        f"nasax export runs/trained --quiet --out {tmp_path / 'model'}"
    )
