"""Retraining through the `nasax` command: run directory, resume, evaluate, export, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import nasax
from nasax.app.cli import main
from nasax.core.checkpoint import Checkpoints
from nasax.train import evaluate as train_evaluate
from nasax.train import task as train_task
from nasax.train.export import preprocess_for, read_manifest
from tests.conftest import train_args
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
    assert all(r["total_loss"] > r["train_loss"] for r in steps)  # the auxiliary loss counts


def test_evaluate_reports_the_run_accuracy(trained, capsys):
    assert main(["evaluate", str(trained)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((trained / "summary.json").read_text())
    assert "finished" in out and f"{summary['test_accuracy']:.4f}" in out


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


def test_resume_refuses_a_different_genotype(trained, tiny_npz, capsys):
    assert main(train_args(tiny_npz, trained, "--resume", genotype="DARTS_V1")) == 2
    assert "different genotype" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", str(trained), str(out)]) == 0
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
    assert main(["export", str(trained), str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().err
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
