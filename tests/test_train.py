"""Retraining through the `nasax` command: run directory, resume, evaluate, export, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import nasax
from nasax.app.cli import main
from nasax.core.checkpoint import Checkpoints
from nasax.loop import runloop
from nasax.train import evaluate as train_evaluate
from nasax.train import task as train_task
from nasax.train.export import preprocess_for, read_manifest
from tests.conftest import TINY_TRAIN, train_args
from tests.tolerance import assert_close


@pytest.fixture(scope="module")
def trained(finished_training) -> Path:
    """The session's finished tiny retraining (read only)."""
    return finished_training


def test_train_writes_a_complete_run_directory(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.yaml", "genotype.json", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    assert nasax.load_genotype(trained) == nasax.DARTS_V2
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert config["train"]["genotype"] == "DARTS_V2" and config["train"]["epochs"] == 3
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["kind"] == "train" and summary["steps"] == 3 * 4
    assert summary["params"] == 2_642 and summary["params_auxiliary"] > 0
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(0 <= r["test_acc"] <= 1 and np.isfinite(r["test_loss"]) for r in epochs)
    assert summary["test_accuracy"] == epochs[-1]["test_acc"]
    steps = [r for r in records if r["kind"] == "train"]
    # Drop path ramps over epochs: 0 in the first, 0.3 * 2/3 in the last.
    assert steps[0]["drop_path_rate"] == 0.0
    why = "float32 0.3 * 2 / 3"
    assert_close(steps[-1]["drop_path_rate"], 0.2, terms=3, why=why)
    # `train_loss` is the network's cross-entropy; the auxiliary head's is apart, and the
    # objective the weights descend adds it at its weight (means of the same steps).
    weight = config["train"]["auxiliary_weight"]
    for r in steps:
        assert r["train_objective"] > r["train_loss"] and r["aux_loss"] > 0
        objective = r["train_loss"] + weight * r["aux_loss"]
        assert_close(r["train_objective"], objective, terms=3, why="float32 sums of means")


def test_evaluate_reports_the_run_accuracy(trained, tmp_path, capsys):
    figures = tmp_path / "figures.json"
    assert main(["evaluate", str(trained), "--out", str(figures)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((trained / "summary.json").read_text())
    assert "finished" in out and f"{summary['test_accuracy']:.4f}" in out
    written = json.loads(figures.read_text())
    assert written["test_accuracy"] == summary["test_accuracy"] and written["finished"] is True


def test_interrupted_training_resumes_to_the_uninterrupted_result(
    trained, tiny_npz, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "interrupted"
    real_prefetch = train_task.prefetch
    drawn = {"batches": 0}

    def prefetch_then_interrupt(it, size=2, **kw):
        for batch in real_prefetch(it, size, **kw):
            drawn["batches"] += 1
            if drawn["batches"] == 6:  # in the second epoch: a real SIGINT to this process
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(train_task, "prefetch", prefetch_then_interrupt)
    assert main(train_args(tiny_npz, out)) == 130
    assert "--resume" in capsys.readouterr().err
    assert main(["evaluate", str(out)]) == 0
    assert "interrupted after 1 of 3 epochs, step 6" in capsys.readouterr().out
    monkeypatch.setattr(train_task, "prefetch", real_prefetch)
    assert main(train_args(tiny_npz, out, "--resume", genotype="DARTS_V2")) == 0

    ca, cb = Checkpoints(trained / "checkpoints"), Checkpoints(out / "checkpoints")
    assert ca.latest_step() == cb.latest_step() == 12
    flat_a, flat_b = ca.restore_flat(12)[0], cb.restore_flat(12)[0]
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)
    sa = json.loads((trained / "summary.json").read_text())
    sb = json.loads((out / "summary.json").read_text())
    assert sa["test_accuracy"] == sb["test_accuracy"] and sa["test_loss"] == sb["test_loss"]


def test_without_a_time_limit_the_retraining_steps_as_with_fixed_schedules(tiny_npz, monkeypatch):
    """The state's span (the epochs the lr and drop path anneal over) changes nothing
    while it is the configured one: three epochs of compiled steps give the metrics and
    state, to the bit, of a step whose schedules are fixed at `train.epochs` (the step
    before the span)."""
    import jax

    from nasax.core.config import load_config
    from nasax.loop.data import batches, load_dataset
    from nasax.loop.optim import weight_optimizer, weight_schedule
    from nasax.train import regularizers
    from nasax.train import trainer as trainer_module

    sets = [*TINY_TRAIN, f"data.name=npz:{tiny_npz}"]
    config = train_task.TrainTask().resolve(load_config("retrain_digits", sets))
    data = load_dataset(config.data.name)
    trainer = train_task.build_trainer(config, nasax.DARTS_V2, data)
    weights, epochs, spe = config.optim.weights, trainer.epochs, trainer.steps_per_epoch
    schedule = weight_schedule(weights, epochs, spe)
    fixed = trainer._replace(
        optimizer=weight_optimizer(weights, epochs, spe),
        learning_rate=lambda step, span: schedule(step),
    )
    order = np.arange(len(data.x_train))
    stream = [b for _ in range(epochs) for b in batches(data.x_train, data.y_train, order, 32)]

    def trajectory(trainer):
        step, state, out = jax.jit(trainer.step), trainer.init(jax.random.PRNGKey(0)), []
        for batch in stream:
            state, metrics = step(state, batch)
            out.append(jax.device_get(metrics))
        return state, out

    with monkeypatch.context() as m:  # the ramp without a span, while `fixed` traces
        ramp = regularizers.drop_path_rate
        m.setattr(trainer_module, "drop_path_rate", lambda *a, span=None: ramp(*a))
        want_state, want = trajectory(fixed)
    state, got = trajectory(trainer)
    assert int(state.epochs) == epochs and len(got) == 12
    assert got[-1]["drop_path_rate"] > 0 and got[-1]["lr"] < got[0]["lr"]  # both schedules ran
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys()
        for key in g:
            np.testing.assert_array_equal(g[key], w[key], err_msg=f"step {i + 1}: {key}")
    for part in ("params", "batch_stats", "opt"):
        for g, w in zip(
            jax.tree.leaves(getattr(state, part)), jax.tree.leaves(getattr(want_state, part))
        ):
            np.testing.assert_array_equal(g, w, err_msg=part)


def test_a_time_limit_ends_the_retraining_on_a_complete_epoch_of_its_span(
    tiny_npz, tmp_path, monkeypatch
):
    """On a clock where a step takes 100 s, 6 configured epochs of 4 steps and a limit of
    1500 s: after two epochs (800 s) one more fits, so the lr and the drop path anneal
    over 3 and the run ends on epoch 3, its span recorded in summary.json, the epoch
    records and the checkpoint (the seconds of compiling, real, are far below the 300 s
    that would change the plan)."""
    fake = {"seconds": 0.0}
    real = time.perf_counter
    clock = SimpleNamespace(perf_counter=lambda: real() + fake["seconds"], monotonic=time.monotonic)
    monkeypatch.setattr(runloop, "time", clock)
    real_prefetch = train_task.prefetch

    def prefetch_on_the_clock(it, size=2, **kw):
        for batch in real_prefetch(it, size, **kw):
            fake["seconds"] += 100.0  # the step this batch is drawn for
            yield batch

    monkeypatch.setattr(train_task, "prefetch", prefetch_on_the_clock)
    out = tmp_path / "planned"
    sets = ["--set", "train.epochs=6", "--set", "run.time_limit=1500"]
    assert main(train_args(tiny_npz, out, *sets)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 6 and summary["epochs_planned"] == 3
    assert summary["stopped_early"] is True and summary["steps"] == 3 * 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r.get("epochs_planned") for r in epochs] == [None, 3, 3]
    assert [r.get("stopped") for r in epochs] == [None, None, "time_limit"]
    flat, meta = Checkpoints(out / "checkpoints").restore_flat(12)
    assert int(flat["epochs"]) == 3 and (meta["epoch"], meta["batch"]) == (3, 0)
    # The first two epochs ran on the configured span of 6, the third on the plan's 3.
    for r in (r for r in records if r["kind"] == "train"):
        epoch, span = r["epoch"] - 1, 6 if r["epoch"] < 3 else 3
        lr = 0.5 * 0.025 * (1 + np.cos(np.pi * epoch / span))
        assert_close(r["lr"], lr, terms=6, magnitude=0.025, why="float32 cosine lr, a mean of 2")
        why = "float32 0.3 * epoch * (6 / span) / 6, a mean of 2"
        assert_close(r["drop_path_rate"], 0.3 * epoch / span, terms=6, magnitude=0.3, why=why)


def test_resume_refuses_a_different_genotype(trained, tiny_npz, capsys):
    assert main(train_args(tiny_npz, trained, "--resume", genotype="DARTS_V1")) == 2
    assert "different genotype" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", str(trained), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def reference(trained, exported) -> tuple[np.ndarray, np.ndarray]:
    """Test images and the logits the trained run's own network gives them."""
    _, _, dataset, trainer, state, _ = train_evaluate.load_train_run(trained)
    x = dataset.x_test[:10].astype(np.float32)
    return x, np.asarray(trainer.module(state)(preprocess_for(exported)(x), train=False))


def test_export_reloads_with_the_same_logits(exported, reference):
    assert {p.name for p in exported.iterdir()} == {
        "model.json",
        "genotype.json",
        "config.yaml",
        "params",
        "inference.jax",
    }
    manifest = read_manifest(exported)
    assert manifest["image_shape"] == [8, 8, 1] and manifest["epoch"] == 3
    x, expected = reference
    model = nasax.load_model(exported)
    assert isinstance(model, nasax.DiscreteNetwork)
    np.testing.assert_array_equal(model(preprocess_for(exported)(x), train=False), expected)


PLAIN_JAX = """
import sys
import numpy as np
from jax import export
x = np.load(sys.argv[2])
with open(sys.argv[1] + "/inference.jax", "rb") as f:
    logits = export.deserialize(bytearray(f.read())).call(x)
np.save(sys.argv[3], np.asarray(logits))
print("nasax imported:", any(m.split(".")[0] == "nasax" for m in sys.modules))
"""


def test_exported_artifact_runs_with_plain_jax(exported, reference, tmp_path):
    x, expected = reference
    x_path, got = tmp_path / "x.npy", tmp_path / "got.npy"
    np.save(x_path, x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_JAX, str(exported), str(x_path), str(got)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nasax imported: False" in proc.stdout
    # Another compilation of the same network: the longest path runs the stem's 9 taps, 3
    # cells of a 1x1 conv (up to 32 channels) and two separable convs (9 taps, then up to
    # 16 channels), and the classifier's 64 inputs.
    why = "the exported artifact's logits"
    assert_close(np.load(got), expected, terms=9 + 3 * (32 + 2 * (9 + 16)) + 64, why=why)


def test_export_refuses_to_overwrite_and_train_needs_a_valid_genotype(
    trained, exported, tiny_npz, tmp_path, capsys
):
    assert main(["export", str(trained), "--out", str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # The old form, the folder as a second argument, still works, with a one-line note.
    assert main(["export", str(trained), str(exported)]) == 2
    note, refusal = capsys.readouterr().err.strip().splitlines()
    assert note.endswith("deprecated; use nasax export RUN --out OUT_DIR")
    assert "--overwrite" in refusal
    bad = nasax.DARTS_V2.to_dict()
    bad["normal"][0][0] = ["conv_9x9", 0]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(train_args(tiny_npz, tmp_path / "run", genotype=str(tmp_path / "bad.json"))) == 2
    err = capsys.readouterr().err.strip()
    assert "'conv_9x9' is not an op" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing is created for a bad genotype
    assert main(train_args(tiny_npz, tmp_path / "run", genotype="DARTS_V9")) == 2
    assert "did you mean 'DARTS_V2'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a retraining run directory" in capsys.readouterr().err
