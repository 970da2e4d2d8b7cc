"""TensorBoard event files of a run, read back with the tensorboard package's own reader."""

from __future__ import annotations

import json

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from tests.tolerance import assert_close


def _load(run_dir):
    acc = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "images": 0}
    )
    return acc.Reload()


def test_search_events_hold_the_metrics_and_the_architecture_weights(tiny_classifier):
    run_dir = tiny_classifier.search_dir
    acc = _load(run_dir)
    tags = acc.Tags()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    steps = [r for r in records if r["kind"] == "search"]
    losses = acc.Scalars("search/train_loss")
    assert [e.step for e in losses] == [r["step"] for r in steps]
    # TensorBoard keeps the records' float64 numbers as float32: one rounding each.
    want = np.array([r["train_loss"] for r in steps])
    why = "train_loss through TensorBoard's float32"
    assert_close([e.value for e in losses], want, terms=1, magnitude=abs(want), why=why)
    epochs = [r for r in records if r["kind"] == "epoch"]
    want = np.array([r["test_acc"] for r in epochs])
    why = "test_acc through TensorBoard's float32"
    assert_close(
        [e.value for e in acc.Scalars("epoch/test_acc")], want, terms=1, magnitude=want, why=why
    )
    ops = [str(o) for o in np.load(run_dir / "alphas.npz")["ops"]]
    assert {f"arch/normal/{op}" for op in ops} <= set(tags["histograms"])
    for op in ops:  # one histogram per epoch, over the 6 edges of the cell
        histograms = acc.Histograms(f"arch/normal/{op}")
        assert len(histograms) == len(epochs)
        assert histograms[-1].histogram_value.num == 6
    heatmaps = acc.Images("arch/heatmap")
    assert len(heatmaps) == len(epochs) and heatmaps[-1].width > 100


def test_retraining_events_hold_the_training_metrics(tiny_classifier):
    acc = _load(tiny_classifier.final_dir)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/train_loss", "train/lr", "epoch/test_acc"} <= scalars
    assert not acc.Tags()["histograms"]
