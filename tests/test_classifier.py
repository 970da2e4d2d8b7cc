"""nasax.ImageClassifier: fit (a search and a retraining within one time limit), evaluate,
predict, export and final_fit on numpy arrays (a tiny NAS-Bench-201 run on the digits),
and its checks of the arrays and options."""

from __future__ import annotations

import copy
import json
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import nasax
from nasax.app.classifier import NO_TIME_LEFT
from nasax.core.errors import DataError, NasaxError, RunDirError
from nasax.supernet.genotypes import Genotype
from nasax.train.export import preprocess_for


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def _moved(clf, project_dir, copy_runs: bool = True):
    """A shallow copy of a fitted classifier writing to `project_dir` (holding a copy of
    its runs): it shares the compiled programs, so its runs compile nothing."""
    other = copy.copy(clf)
    other.project_dir = project_dir
    if copy_runs:
        shutil.copytree(clf.project_dir, project_dir)
    return other


def test_fit_stops_at_the_time_limit_with_the_latest_cell(tiny_classifier):
    clf = tiny_classifier
    summary = json.loads((clf.search_dir / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["time_limit"] == 20.0
    epochs = [r for r in _records(clf.search_dir) if r["kind"] == "epoch"]
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


def test_fit_splits_one_time_limit_between_search_and_retraining(tiny_classifier):
    clf, times = tiny_classifier, tiny_classifier.fit_times
    search = json.loads((clf.search_dir / "summary.json").read_text())
    final = json.loads((clf.final_dir / "summary.json").read_text())
    assert times.time_limit == 40.0 and clf.time_limit == 600.0  # fit's own limit won
    # The search may take search_share of the limit ...
    assert search["time_limit"] == times.search_limit == clf.search_share * 40.0
    # ... and the retraining gets what remains of the limit when it starts: not the other
    # half, but the limit less the seconds the search (and the checks before it) took.
    assert final["time_limit"] == times.final_limit == max(40.0 - times.final_start, NO_TIME_LEFT)
    assert times.final_start >= search["wall_seconds"]  # the search's own record of its time
    assert final["time_limit"] <= max(40.0 - search["wall_seconds"], NO_TIME_LEFT)
    assert times.seconds - times.final_start >= final["wall_seconds"]
    for run_dir, summary in ((clf.search_dir, search), (clf.final_dir, final)):
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["run"]["time_limit"] == summary["time_limit"]  # as the run ran
    # The retraining ends after final_epochs or at its deadline, and says which. Its one
    # epoch is over before a second could time it: nothing to fit the schedules to.
    epochs = [r for r in _records(clf.final_dir) if r["kind"] == "epoch"]
    assert final["epochs_planned"] is None
    if final["stopped_early"]:
        assert epochs[-1]["stopped"] == "time_limit"
        assert final["steps"] < clf.final_epochs * (1120 // 32)
    else:
        assert len(epochs) == clf.final_epochs and not any("stopped" in r for r in epochs)
        assert final["steps"] == clf.final_epochs * (1120 // 32)  # 80% of 1400, batches of 32


def test_fit_leaves_a_network_to_evaluate_predict_and_export(
    tiny_classifier, digits_arrays, tmp_path
):
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


def test_final_fit_retrains_the_cell_for_all_epochs_replacing_fits_network(
    tiny_classifier, digits_arrays, tmp_path
):
    clf = _moved(tiny_classifier, tmp_path / "again")
    assert not clf.overwrite  # final_fit replaces the retraining fit left all the same
    clf.final_fit(digits_arrays["x_train"], digits_arrays["y_train"])
    summary = json.loads((clf.final_dir / "summary.json").read_text())
    assert summary == clf.final_summary and clf.final_summary is not tiny_classifier.final_summary
    assert summary["time_limit"] is None and summary["stopped_early"] is False
    assert summary["steps"] == clf.final_epochs * (1120 // 32)
    assert Genotype.from_dict(summary["genotype"]) == tiny_classifier.genotype
    epochs = [r for r in _records(clf.final_dir) if r["kind"] == "epoch"]
    assert len(epochs) == clf.final_epochs  # the new run's records only
    x, y = digits_arrays["x_test"], digits_arrays["y_test"]
    figures = clf.evaluate(x, y)
    assert figures["accuracy"] == pytest.approx(float(np.mean(clf.predict(x) == y)))
    assert clf.export(tmp_path / "model").is_dir()


def test_retraining_stops_at_its_deadline_and_says_so(
    tiny_classifier, digits_arrays, tmp_path, capsys
):
    # A limit the search overruns: the retraining gets no time left, runs one step,
    # stops there, and fit still leaves a network.
    clf = _moved(tiny_classifier, tmp_path / "rushed", copy_runs=False)
    clf.quiet = False
    x, y = digits_arrays["x_train"], digits_arrays["y_train"]
    clf.fit(x, y, time_limit=0.01)
    out = capsys.readouterr().out
    times = clf.fit_times
    assert times.search_limit == clf.search_share * 0.01
    assert times.final_limit == max(0.01 - times.final_start, NO_TIME_LEFT)
    final = json.loads((clf.final_dir / "summary.json").read_text())
    assert final["time_limit"] == times.final_limit and final["stopped_early"] is True
    assert final["steps"] < clf.final_epochs * (1120 // 32)
    epochs = [r for r in _records(clf.final_dir) if r["kind"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["stopped"] == "time_limit"
    assert final["epochs_planned"] is None and "epochs_planned" not in epochs[0]
    assert "the search stopped at its time limit" in out
    assert "retraining" in out and "final_fit(x, y)" in out
    figures = clf.evaluate(digits_arrays["x_test"], digits_arrays["y_test"])
    assert np.isfinite(figures["loss"])


def test_a_tight_limit_ends_the_retraining_on_the_last_epoch_of_its_planned_span(
    tiny_classifier, digits_arrays, tmp_path, monkeypatch, capsys
):
    """On a clock where every epoch of either run takes 1000 s more than it does, a limit
    of 5000 s: the search may take 2500 and, timed over two epochs, stops after them;
    the retraining gets the ~5000 left, fits two more epochs after its first two, and
    ends on the fourth of its 6, with its lr and drop path annealed over those 4. (The
    real seconds, compiling included, would have to pass 500 to change either plan.)"""
    from nasax.loop import run as run_module
    from nasax.loop import runloop

    fake = {"seconds": 0.0}
    real_clock, real_compile = time.perf_counter, run_module._compile
    clock = SimpleNamespace(
        perf_counter=lambda: real_clock() + fake["seconds"], monotonic=time.monotonic
    )
    monkeypatch.setattr(runloop, "time", clock)

    def compile_on_the_clock(task, task_run, state, progress):
        step_fn, seconds, plan = real_compile(task, task_run, state, progress)
        fake["seconds"] = 0.0  # a run's deadline is on the real clock, from its start
        per_step = 1000.0 / task_run.steps_per_epoch

        def step(*args):
            fake["seconds"] += per_step
            return step_fn(*args)

        return step, seconds, plan

    monkeypatch.setattr(run_module, "_compile", compile_on_the_clock)
    clf = _moved(tiny_classifier, tmp_path / "planned", copy_runs=False)
    clf.final_epochs, clf.quiet = 6, False
    clf.fit(digits_arrays["x_train"], digits_arrays["y_train"], time_limit=5000.0)
    out = capsys.readouterr().out
    search = json.loads((clf.search_dir / "summary.json").read_text())
    assert search["epochs_planned"] == 2 and search["stopped_early"] is True
    final = json.loads((clf.final_dir / "summary.json").read_text())
    assert final["epochs"] == 6 and final["epochs_planned"] == 4 and final["stopped_early"]
    assert final["steps"] == 4 * (1120 // 32)  # complete epochs only
    epochs = [r for r in _records(clf.final_dir) if r["kind"] == "epoch"]
    assert [r.get("epochs_planned") for r in epochs] == [None, 4, 4, 4]
    assert [r.get("stopped") for r in epochs] == [None, None, None, "time_limit"]
    assert "4 of 6 epochs (its lr and drop path annealed over 4)" in out
    assert clf.final_summary == final and np.isfinite(final["test_loss"])


def test_a_second_fit_refuses_earlier_runs_before_anything_runs(
    tiny_classifier, digits_arrays, tmp_path
):
    x, y = digits_arrays["x_train"], digits_arrays["y_train"]
    genotype, model = tiny_classifier.genotype, tiny_classifier._model
    with pytest.raises(RunDirError, match=r"search holds an earlier run; pass overwrite=True"):
        tiny_classifier.fit(x, y)
    assert tiny_classifier.genotype is genotype and tiny_classifier._model is model
    # A retraining left alone (its search deleted) is refused as well, before the search.
    clf = _moved(tiny_classifier, tmp_path / "final_only")
    shutil.rmtree(clf.search_dir)
    with pytest.raises(RunDirError, match=r"final holds an earlier run"):
        clf.fit(x, y)
    assert not clf.search_dir.exists()


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
    with pytest.raises(NasaxError, match="time_limit must be seconds > 0 or None"):
        clf.fit(x, y, time_limit=0)
    with pytest.raises(NasaxError, match="call fit"):
        clf.final_fit(x, y)
    with pytest.raises(NasaxError, match=r"no retrained network yet: call fit\(x, y\)$"):
        clf.predict(x)
    assert not (tmp_path / "image_classifier").exists()


def test_predict_refuses_images_of_another_shape(tiny_classifier):
    with pytest.raises(DataError, match=r"shape \(9, 9, 1\).*fitted on \(8, 8, 1\)"):
        tiny_classifier.predict(np.zeros((3, 9, 9), np.uint8))


def test_unknown_space_and_bad_options_are_refused():
    with pytest.raises(NasaxError, match="space must be one of"):
        nasax.ImageClassifier(space="nasbench101")
    with pytest.raises(NasaxError, match="validation_split"):
        nasax.ImageClassifier(validation_split=1.0)
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(NasaxError, match=r"search_share must lie in \(0, 1\)"):
            nasax.ImageClassifier(search_share=share)
    with pytest.raises(NasaxError, match="time_limit must be seconds > 0 or None, got -5"):
        nasax.ImageClassifier(time_limit=-5)
    with pytest.raises(NasaxError, match=r"not run\.time_limit in overrides"):
        nasax.ImageClassifier(overrides=["run.time_limit=60"])
