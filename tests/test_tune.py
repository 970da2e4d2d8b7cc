"""`nasax tune`: a study of tiny trials in SQLite, pruning, the best config, resuming,
and clear errors for knobs that are not in the config."""

from __future__ import annotations

import json

import pytest
import yaml

from nasax.app.cli import main
from nasax.search.options import load_config, validate_config


def _tune_config(tmp_path, tiny_npz, **tune) -> str:
    data = yaml.safe_load(yaml.safe_dump(load_config("tune_digits").to_dict()))
    data["model"]["channels"] = 4
    data["search"].update(epochs=2, batch_size=16)
    data["search"]["random_ws"].update(candidates=4, select_batches=1)
    data["data"]["name"] = f"npz:{tiny_npz}"
    data["run"]["progress"] = False
    data["tune"].update(startup_trials=1, warmup_epochs=0, trials=3)
    # Knobs of the selection only, so the trials share one compiled search step (the
    # shipped tune_digits tunes learning rate, weight decay and width).
    data["tune"]["params"] = {
        "search.random_ws.select_batches": {"type": "int", "low": 1, "high": 3},
        "search.random_ws.candidates": {"type": "int", "low": 2, "high": 6, "step": 2},
    }
    data["tune"].update(tune)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_tune_runs_a_study_and_resumes_it(tmp_path, tiny_npz):
    import optuna

    config = _tune_config(tmp_path, tiny_npz)
    out = tmp_path / "study"
    assert main(["tune", config, "--out", str(out), "--trials", "2"]) == 0
    assert main(["tune", config, "--out", str(out), "--trials", "3"]) == 0  # one more
    study = optuna.load_study(study_name="tune_digits", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    for t in study.trials:  # every trial reported its epochs and stayed in range
        assert t.params["search.random_ws.select_batches"] in (1, 2, 3)
        assert t.params["search.random_ws.candidates"] in (2, 4, 6)
        assert len(t.intermediate_values) == (2 if t.state.name == "COMPLETE" else 1)
        assert (out / f"trial_{t.number:03d}" / "metrics.jsonl").exists()
    summary = json.loads((out / "tune_summary.json").read_text())
    best = summary["best"]
    assert best["number"] == study.best_trial.number
    assert best["value"] == pytest.approx(study.best_value)
    # The best config is a valid nasax config holding the best trial's values; its
    # value is the mean validation accuracy of that trial's last epoch.
    best_config = validate_config(yaml.safe_load((out / "best_config.yaml").read_text()))
    assert best_config.search.options == {
        "candidates": best["params"]["search.random_ws.candidates"],
        "select_batches": best["params"]["search.random_ws.select_batches"],
        "warmup": None,
    }
    assert best_config.tune is None
    trial_dir = out / f"trial_{best['number']:03d}"
    steps = [json.loads(line) for line in (trial_dir / "metrics.jsonl").open()]
    last = [r["val_acc"] for r in steps if r["kind"] == "search" and r["epoch"] == 2]
    assert best["value"] == pytest.approx(sum(last) / len(last))
    # The same folder with another config is refused.
    other = _tune_config(tmp_path, tiny_npz, metric="train_acc")
    assert main(["tune", other, "--out", str(out)]) == 2


@pytest.mark.parametrize(
    "params,message",
    [
        ({"optim.weights.lrr": {"type": "float", "low": 0.1, "high": 0.2}}, "lrr"),
        ({"search.epochs": {"type": "int", "low": -3, "high": 2}}, "search.epochs"),
        ({"optim.weights.lr": {"type": "float", "low": 0.2, "high": 0.1}}, "low < high"),
    ],
)
def test_bad_knobs_are_refused_before_any_trial(tmp_path, tiny_npz, capsys, params, message):
    config = _tune_config(tmp_path, tiny_npz)
    with open(config) as f:
        data = yaml.safe_load(f)
    data["tune"]["params"] = params
    with open(config, "w") as f:
        f.write(yaml.safe_dump(data))
    assert main(["tune", config, "--out", str(tmp_path / "study")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study" / "study.db").exists()


def test_median_pruning_stops_a_trial_that_lags(tmp_path, tiny_npz, monkeypatch):
    """With scripted epoch figures, the third trial lags the median of the first two
    at epoch 1 and is pruned there; a trial is never pruned after its last epoch; a
    metric the runs do not report is a clear error."""
    import optuna

    from nasax.app.tune import RUNNERS, run_tune
    from nasax.core.errors import ConfigError
    from nasax.search.options import load_config as load

    scripted = [[0.5, 0.6], [0.7, 0.8], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5]]

    def fake_search(config, run_dir, *, overwrite, on_epoch, programs):
        for epoch, value in enumerate(scripted.pop(0), start=1):
            on_epoch({"epoch": epoch, "val_acc": value})
        return {}

    monkeypatch.setitem(RUNNERS._items, "search", fake_search)
    config = load(_tune_config(tmp_path, tiny_npz, trials=4))
    summary = run_tune(config, tmp_path / "study", log=lambda _: None)
    states = [t["state"] for t in summary["trials"]]
    assert states == ["complete", "complete", "pruned", "complete"]
    assert summary["trials"][2]["epochs_reported"] == 1
    # The fourth trial ends below the median at its last epoch, but it has finished.
    assert summary["trials"][3]["value"] == pytest.approx(0.1)
    assert summary["best"]["number"] == 1 and summary["best"]["value"] == pytest.approx(0.8)

    config = load(_tune_config(tmp_path, tiny_npz, metric="val_accuracy"))
    with pytest.raises(ConfigError, match=r"val_accuracy.*val_acc"):
        run_tune(config, tmp_path / "other", log=lambda _: None)
    study = optuna.load_study(
        study_name="tune_digits", storage=f"sqlite:///{tmp_path / 'other' / 'study.db'}"
    )
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_an_interrupted_tuning_continues_where_it_stopped(tmp_path, tiny_npz, monkeypatch):
    """Ctrl-C during a trial: that trial is marked failed, the message says how to go on,
    and running the same tuning again completes the study without redoing finished trials."""
    from nasax.app.tune import RUNNERS, run_tune
    from nasax.loop.runloop import Interrupted
    from nasax.search.options import load_config as load

    calls = []

    def fake_search(config, run_dir, *, overwrite, on_epoch, programs):
        calls.append(run_dir.name)
        if len(calls) == 2:
            raise Interrupted("stopped by SIGINT")
        on_epoch({"epoch": 1, "val_acc": 0.5})
        on_epoch({"epoch": 2, "val_acc": 0.6})
        return {}

    monkeypatch.setitem(RUNNERS._items, "search", fake_search)
    config = load(_tune_config(tmp_path, tiny_npz, trials=3, pruner="none"))
    with pytest.raises(Interrupted, match=r"1 of 3 trials done.*rerun the same command"):
        run_tune(config, tmp_path / "study", log=lambda _: None)
    summary = run_tune(config, tmp_path / "study", log=lambda _: None)
    assert [t["state"] for t in summary["trials"]] == ["complete", "fail", "complete", "complete"]
    assert calls == ["trial_000", "trial_001", "trial_002", "trial_003"]
