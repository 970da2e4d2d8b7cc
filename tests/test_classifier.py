"""nasax.ImageClassifier: fit within a time budget, final_fit, evaluate, predict and export
on numpy arrays (a tiny NAS-Bench-201 run on the digits), and its checks of the arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nasax
from nasax.core.errors import DataError, NasaxError
from nasax.supernet.genotypes import Genotype
from nasax.train.export import preprocess_for


def test_fit_stops_at_the_time_limit_with_the_latest_cell(tiny_classifier):
    clf = tiny_classifier
    summary = json.loads((clf.search_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["time_limit"] == 20.0
    records = [json.loads(line) for line in (clf.search_dir / "metrics.jsonl").open()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs[-1].get("stopped") == "time_limit"
    assert [r for r in epochs if "stopped" in r] == [epochs[-1]]
    assert len(epochs) < 1000 and summary["steps"] == epochs[-1]["step"]
    if summary["epochs_planned"] is not None:  # two epochs ran before the limit planned
        planned = [r["epochs_planned"] for r in epochs if "epochs_planned" in r]
        assert summary["epochs_planned"] == planned[-1]
        # It ends where the plan ends, or stops inside the plan's last epochs at the limit.
        assert len(epochs) <= summary["epochs_planned"]
        if "epochs_planned" in epochs[-1]:
            assert len(epochs) == summary["epochs_planned"]
    # The cell kept is the one derived from the state the search stopped with.
    assert Genotype.load(clf.search_dir / "genotype.json") == clf.genotype
    assert summary["genotype_text"] == clf.genotype.to_arch_string()
    alphas = np.load(clf.search_dir / "alphas.npz")
    assert alphas["alpha_normal"].shape == (len(epochs), 6, 5)


def test_final_fit_evaluate_predict_and_export_agree(tiny_classifier, digits_arrays, tmp_path):
    clf = tiny_classifier
    x, y = digits_arrays["x_test"], digits_arrays["y_test"]
    figures = clf.evaluate(x, y)
    predicted = clf.predict(x)
    assert predicted.shape == y.shape and predicted.dtype.kind == "i"
    assert set(np.unique(predicted)) <= set(range(10))
    assert figures["accuracy"] == pytest.approx(float(np.mean(predicted == y)))
    assert np.isfinite(figures["loss"])
    summary = json.loads((clf.final_dir / "summary.json").read_text())
    assert Genotype.from_dict(summary["genotype"]) == clf.genotype
    # The classifier holds its state in memory: with its run directories moved away,
    # it still evaluates, predicts and exports the same network.
    away = tmp_path / "away"
    clf.project_dir.rename(away)
    try:
        assert clf.evaluate(x, y) == figures
        np.testing.assert_array_equal(clf.predict(x), predicted)
        # The export is the retraining issue's format and predicts what the classifier does.
        model_dir = clf.export(tmp_path / "model")
    finally:
        away.rename(clf.project_dir)
    net = nasax.load_model(model_dir)
    logits = net(preprocess_for(model_dir)(x.astype(np.float32)[..., None]), train=False)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), predicted)
    manifest = json.loads((model_dir / "model.json").read_text())
    assert manifest["step"] == clf.final_summary["steps"]
    assert manifest["test_accuracy"] == clf.final_summary["test_accuracy"]


def test_arrays_are_checked_before_anything_runs(tmp_path, digits_arrays):
    clf = nasax.ImageClassifier(space="nb201", directory=tmp_path, quiet=True)
    x, y = digits_arrays["x_train"][:64], digits_arrays["y_train"][:64]
    with pytest.raises(DataError, match=r"\(N, H, W\) grayscale or \(N, H, W, 1\|3\)"):
        clf.fit(np.zeros((64, 8, 8, 2)), y)
    with pytest.raises(DataError, match=r"must be \(64,\) labels"):
        clf.fit(x, y[:10])
    with pytest.raises(DataError, match="must hold integer class labels"):
        clf.fit(x, y + 0.5)
    with pytest.raises(DataError, match="uint8 or float images"):
        clf.fit(x.astype(str), y)
    with pytest.raises(NasaxError, match="call fit"):
        clf.final_fit(x, y)
    with pytest.raises(NasaxError, match="final_fit"):
        clf.predict(x)
    assert not (tmp_path / "image_classifier").exists()


def test_predict_refuses_images_of_another_shape(tiny_classifier):
    with pytest.raises(DataError, match=r"shape \(9, 9, 1\).*fitted on \(8, 8, 1\)"):
        tiny_classifier.predict(np.zeros((3, 9, 9), np.uint8))


def test_unknown_space_and_bad_split_are_refused():
    with pytest.raises(NasaxError, match="space must be one of"):
        nasax.ImageClassifier(space="nasbench101")
    with pytest.raises(NasaxError, match="validation_split"):
        nasax.ImageClassifier(validation_split=1.0)
