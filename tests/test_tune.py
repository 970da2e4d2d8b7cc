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


def test_a_trial_a_killed_tuning_left_running_runs_again(tmp_path, tiny_npz, monkeypatch):
    """Without --storage the study folder is locked while it is tuned, so a trial found
    running is one a killed tuning left: it is failed and run again, with its values."""
    from nasax.app.tune import RUNNERS, run_tune
    from nasax.search.options import load_config as load

    class Killed(BaseException):  # as kill -9: nothing of nasax's runs after it
        pass

    calls = []

    def fake_search(config, run_dir, *, overwrite, on_epoch, programs):
        calls.append((run_dir.name, config.search.options))
        if len(calls) == 1:
            raise Killed
        on_epoch({"epoch": 1, "val_acc": 0.5})
        on_epoch({"epoch": 2, "val_acc": 0.6})
        return {}

    monkeypatch.setitem(RUNNERS._items, "search", fake_search)
    config = load(_tune_config(tmp_path, tiny_npz, trials=2, pruner="none"))
    with pytest.raises(Killed):
        run_tune(config, tmp_path / "study", log=lambda _: None)
    summary = run_tune(config, tmp_path / "study", log=lambda _: None)
    assert [t["state"] for t in summary["trials"]] == ["fail", "complete", "complete"]
    assert [name for name, _ in calls] == ["trial_000", "trial_001", "trial_002"]
    assert calls[1][1] == calls[0][1]  # the same values
    assert summary["trials"][1]["params"] == summary["trials"][0]["params"]


def test_of_two_workers_that_saw_room_for_the_last_trial_one_gives_it_up(
    tmp_path, tiny_npz, monkeypatch
):
    """Another worker takes the study's last trial between this worker's count and its
    ask: this worker's trial (the higher number) is skipped, never run, and the worker
    waits for the other's trial to end."""
    import threading

    import optuna

    from nasax.app import tune
    from nasax.search.options import load_config as load

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    config = load(_tune_config(tmp_path, tiny_npz, trials=1, heartbeat_seconds=1))
    ask = tune.ask

    def another_worker_first(study):
        other = optuna.load_study(study_name="tune_digits", storage=storage)
        taken = other.ask()
        threading.Timer(0.5, lambda: other.tell(taken, 0.7)).start()
        return ask(study)

    def never(*args, **kwargs):
        raise AssertionError("a skipped trial ran")

    monkeypatch.setattr(tune, "ask", another_worker_first)
    monkeypatch.setitem(tune.RUNNERS._items, "search", never)
    summary = tune.run_tune(config, tmp_path / "study", storage=storage, log=lambda _: None)
    assert [t["state"] for t in summary["trials"]] == ["complete", "skipped"]
    assert summary["trials"][1]["run_dir"] is None
    assert summary["best"]["value"] == pytest.approx(0.7)
    assert not list((tmp_path / "study").glob("trial_*"))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_silent_for_its_grace_period_is_failed_and_queued(tmp_path, monkeypatch, kind):
    """Heartbeats: a trial beaten within its grace period stays running; one silent longer
    (judged by this machine's clock for the journal; a database's own clock judges its
    beats) is failed and queued again, once, with its values; so is a trial that never
    sent a beat, in either storage."""
    import time

    import optuna

    from nasax.app import study_storage
    from nasax.app.study_storage import Liveness, ask, fail_stale_trials, heartbeat, open_storage

    url = f"journal:{tmp_path / 'study.journal'}" if kind == "journal" else ""
    url = url or f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, Liveness(heartbeat_seconds=1, grace_seconds=5, retries=1))
    study = optuna.create_study(storage=storage, study_name="beats")
    beaten, silent = ask(study), ask(study)
    values = [trial.suggest_float("x", 0.0, 1.0) for trial in (beaten, silent)]
    with heartbeat(storage, beaten):
        pass
    fail_stale_trials(study)
    assert [t.state.name for t in study.trials] == ["RUNNING", "RUNNING"]
    monkeypatch.setattr(study_storage, "_now", lambda: time.time() + 6)
    fail_stale_trials(study)
    states = {"journal": ["FAIL", "FAIL", "WAITING", "WAITING"]}
    states["sqlite"] = ["RUNNING", "FAIL", "WAITING"]
    assert [t.state.name for t in study.trials] == states[kind]
    again = ask(study)  # the first queued
    assert again.suggest_float("x", 0.0, 1.0) == values[0 if kind == "journal" else 1]
    study.tell(again, state=optuna.trial.TrialState.FAIL)  # failed, not dead: no retry
    monkeypatch.setattr(study_storage, "_now", lambda: time.time() + 60)
    fail_stale_trials(study)
    assert len(study.trials) == len(states[kind])


@pytest.mark.parametrize(
    "storage,status,message",
    [
        ("postgresql:/db", 2, "--storage 'postgresql:/db' is not a storage URL; use "),
        ("postgres://nasax@localhost/db", 2, "unknown database 'postgres' (did you mean post"),
        ("journal:/nonexistent/study.journal", 2, "the folder /nonexistent does not exist"),
        ("postgresql://nasax:secret@localhost/db", 69, "is not installed; pip install "),
        ("postgresql://nasax:secret@127.0.0.1:1/db", 69, "cannot reach the study storage "),
    ],
)
def test_a_storage_that_cannot_be_used_is_one_line(
    tmp_path, tiny_npz, capsys, monkeypatch, storage, status, message
):
    """A malformed URL, a database driver that is missing (which pip package to install)
    and a server that does not answer are each one line; a password is never shown."""
    import shlex
    import sys

    from sqlalchemy.engine import make_url

    from nasax.app.study_storage import DRIVER_PACKAGES

    dialect = make_url("postgresql://").get_dialect()
    if "not installed" in message:
        monkeypatch.setitem(sys.modules, dialect.driver, None)  # as if it were missing
        message += shlex.quote(DRIVER_PACKAGES[dialect.driver])  # psycopg[binary], ...
    elif "reach" in message:
        try:
            dialect.import_dbapi()
        except ImportError:
            pytest.skip(f"the PostgreSQL driver {dialect.driver} is not installed")
    config = _tune_config(tmp_path, tiny_npz)
    assert main(["tune", config, "--out", str(tmp_path / "o"), "--storage", storage]) == status
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "secret" not in err, err


# Workers of one study on a shared storage. Each worker is a `nasax tune` process whose
# trials are scripted (the real runs are tested above): a trial reports two epochs at
# once, marks its run directory with its worker's PID, and the first trial of a worker
# told to hold marks the study folder and hangs until it is killed.
WORKER = """
import os, sys, time
from pathlib import Path

from nasax.app import tune
from nasax.app.cli import main

HOLD, AWAIT = os.environ.get("NASAX_TEST_HOLD"), os.environ.get("NASAX_TEST_AWAIT")


def scripted(config, run_dir, *, overwrite, on_epoch, programs):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"ran_by_{os.getpid()}").touch()
    if HOLD:  # until killed, with a trial running
        Path(HOLD).touch()
        time.sleep(600)
    deadline = time.monotonic() + 120
    while AWAIT and not Path(AWAIT).exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the holding worker has its trial
    lr = config.optim.weights.lr
    on_epoch({"epoch": 1, "val_acc": lr})
    on_epoch({"epoch": 2, "val_acc": 2 * lr})
    return {}


tune.RUNNERS._items["search"] = scripted
sys.exit(main(sys.argv[1:]))
"""


def _worker(config, out, storage, log, **env):
    import os
    import subprocess
    import sys

    command = [sys.executable, "-c", WORKER, "tune", config, "--out", str(out), "--quiet"]
    return subprocess.Popen(
        [*command, "--storage", storage],
        env={**os.environ, **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _wait_for(path, process, log, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the worker ended before {path}: {log.read_text()}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def _a_worker_dies_and_the_other_finishes(tmp_path, tiny_npz, storage, outs):
    """Two workers on one study of 3 trials: the first hangs in its first trial and is
    killed (kill -9); the other runs the rest, fails the dead worker's trial once its
    heartbeats stop, and runs it again with the same values."""
    import signal

    config = _tune_config(
        tmp_path, tiny_npz, trials=3, pruner="none", heartbeat_seconds=1, grace_seconds=2
    )
    with open(config) as f:
        data = yaml.safe_load(f)
    data["tune"]["params"] = {"optim.weights.lr": {"type": "float", "low": 0.01, "high": 0.1}}
    with open(config, "w") as f:
        f.write(yaml.safe_dump(data))
    holding = tmp_path / "holding"
    logs = [tmp_path / "worker_a.log", tmp_path / "worker_b.log"]
    dying = _worker(config, outs[0], storage, logs[0], NASAX_TEST_HOLD=str(holding))
    other = _worker(config, outs[1], storage, logs[1], NASAX_TEST_AWAIT=str(holding))
    try:
        _wait_for(holding, dying, logs[0])
        dying.send_signal(signal.SIGKILL)
        assert other.wait(timeout=180) == 0, logs[1].read_text()
    finally:
        for process in (dying, other):
            process.kill()
            process.wait()
    trials = {t.number: t for t in _load_study(storage).trials}
    complete = [t for t in trials.values() if t.state.name == "COMPLETE"]
    failed = [t for t in trials.values() if t.state.name == "FAIL"]
    skipped = [t for t in failed if t.user_attrs.get("nasax_skipped")]
    (dead,) = [t for t in failed if t not in skipped]
    assert len(complete) == 3  # the study's total, across workers
    # The dead worker's trial ran again, once, with its values, under a new number.
    (again,) = [t for t in complete if t.system_attrs.get("failed_trial") == dead.number]
    assert again.params == dead.params and again.number > dead.number
    assert f"trial_{dead.number:03d} again: its worker died" in logs[1].read_text()
    # Every other trial drew its own values; every trial that ran has one run directory,
    # written by one worker: the dead worker's in its --out, the others' in the other's.
    values = [t.params["optim.weights.lr"] for t in complete]
    assert len(set(values)) == 3
    dirs = [d for out in set(outs) for d in out.glob("trial_*")]
    assert sorted(d.name for d in dirs) == sorted(
        f"trial_{t.number:03d}" for t in [*complete, dead]
    )
    ran_by = {int(d.name[6:]): [m.name for m in d.glob("ran_by_*")] for d in dirs}
    assert ran_by[dead.number] == [f"ran_by_{dying.pid}"]
    assert all(ran_by[t.number] == [f"ran_by_{other.pid}"] for t in complete)
    assert all(t.user_attrs["run_dir"].startswith(str(outs[1])) for t in complete)
    summary = json.loads((outs[1] / "tune_summary.json").read_text())
    assert sorted(t["state"] for t in summary["trials"]) == sorted(
        ["complete"] * 3 + ["fail"] + ["skipped"] * len(skipped)
    )


def _load_study(storage):
    import optuna

    from nasax.app.study_storage import open_storage

    return optuna.load_study(study_name="tune_digits", storage=open_storage(storage, None))


def test_workers_share_a_study_in_a_journal_file(tmp_path, tiny_npz):
    """The journal on a (here: local) shared filesystem, with one --out for both."""
    out = tmp_path / "study"
    storage = f"journal:{tmp_path / 'study.journal'}"
    _a_worker_dies_and_the_other_finishes(tmp_path, tiny_npz, storage, [out, out])


def _postgres_program(name):
    """A PostgreSQL program: on the PATH, or where Debian's `postgresql` puts it."""
    import glob
    import shutil

    if shutil.which(name):
        return shutil.which(name)
    found = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    newest = sorted(found, key=lambda path: float(path.split("/")[-3]))
    return newest[-1] if newest else None


def _unavailable(reason):
    """Skips, or fails where the suite must run every test (NASAX_REQUIRE_POSTGRES=1)."""
    import os

    if os.environ.get("NASAX_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own in a temporary folder, reached by its Unix socket;
    its URL. As root, the server runs as the unprivileged user `postgres`."""
    import os
    import pwd
    import shutil
    import subprocess
    import tempfile

    from sqlalchemy.engine import make_url

    programs = {name: _postgres_program(name) for name in ("initdb", "pg_ctl")}
    if not all(programs.values()):
        _unavailable("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    try:
        make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError as e:
        _unavailable(f"no PostgreSQL driver for SQLAlchemy ({e}); pip install 'psycopg[binary]'")
    as_user = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("PostgreSQL refuses to run as root, and there is no user postgres")
        if not shutil.which("runuser"):
            _unavailable("PostgreSQL refuses to run as root, and there is no runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
    home = tempfile.mkdtemp(prefix="nasax-pg-")  # tmp_path's parents are private to root
    if as_user:
        os.chown(home, user.pw_uid, user.pw_gid)
    data = os.path.join(home, "data")
    options = f"-k {home} -c listen_addresses= -c fsync=off"
    try:
        for command in (
            [programs["initdb"], "-D", data, "-U", "nasax", "--auth=trust", "--no-sync"],
            [programs["pg_ctl"], "-D", data, "-l", f"{home}/log", "-w", "-o", options, "start"],
        ):
            done = subprocess.run([*as_user, *command], cwd=home, capture_output=True, text=True)
            if done.returncode != 0:
                _unavailable(f"PostgreSQL did not start: {done.stderr.strip() or done.stdout}")
        yield f"postgresql://nasax@/postgres?host={home}"
    finally:
        stop = [programs["pg_ctl"], "-D", data, "-m", "immediate", "stop"]
        subprocess.run([*as_user, *stop], cwd=home, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_workers_on_two_machines_share_a_study_in_postgresql(tmp_path, tiny_npz, postgres):
    """A database server, each worker with its own --out (as on two machines)."""
    outs = [tmp_path / "machine_a", tmp_path / "machine_b"]
    _a_worker_dies_and_the_other_finishes(tmp_path, tiny_npz, postgres, outs)
