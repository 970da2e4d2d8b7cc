"""One writer per run directory: a second process is refused with one line naming the
holder and changes nothing; a lock whose holder was killed (kill -9) blocks nobody."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nasax.app.cli import main
from nasax.core.errors import RunDirBusy
from nasax.core.runlock import LOCK_NAME, describe_holder, lock_run_dir, share_run_dir
from nasax.search.options import load_config
from nasax.train.task import run_train
from tests.conftest import TINY_TRAIN, search_args, train_args
from tests.test_storage import Reference


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run directory but the lock file, with its size and change time."""
    return {
        str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def refusal(capsys: pytest.CaptureFixture, holder: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "is in use by" in err and holder in err, err
    return err


def test_a_second_process_is_refused_while_a_run_writes(finished_training, tiny_npz, tmp_path):
    """While a retraining runs here, `nasax train --overwrite` of its directory in another
    process exits 75 naming this process; the running one ends as if alone."""
    out, seen = tmp_path / "running", []
    config = load_config("retrain_digits", [*TINY_TRAIN, f"data.name=npz:{tiny_npz}"])
    second = [sys.executable, "-m", "nasax.app.cli", *train_args(tiny_npz, out, "--overwrite")]

    def after_epoch(figures: dict) -> None:
        if figures["epoch"] == 1:
            seen.append(subprocess.run(second, capture_output=True, text=True, timeout=300))

    run_train(config, out, genotype="DARTS_V2", on_epoch=after_epoch)
    (result,) = seen
    err = result.stderr.strip()
    assert result.returncode == RunDirBusy.exit_code, err
    assert len(err.splitlines()) == 1 and f"nasax train (PID {os.getpid()})" in err, err
    Reference(finished_training).assert_same(out)


def command(kind: str, tiny_npz: str, run: Path, tmp_path: Path) -> list[str]:
    if kind.startswith("search"):
        return search_args(tiny_npz, run, kind.split()[1])
    if kind.startswith("train"):
        return train_args(tiny_npz, run, kind.split()[1])
    export = ["export", str(run), "--out", str(tmp_path)]
    return {"evaluate": ["evaluate", str(run)], "export": export}[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "search --resume",
        "search --overwrite",
        "train --resume",
        "train --overwrite",
        "evaluate",
        "export",
    ],
)
def test_every_command_on_a_locked_run_is_refused_and_changes_nothing(
    kind, finished_run, finished_training, tiny_npz, tmp_path, capsys
):
    run = finished_run if kind.startswith("search") else finished_training
    before = snapshot(run)
    with lock_run_dir(run, "train"):
        assert main(command(kind, tiny_npz, run, tmp_path / "model")) == RunDirBusy.exit_code
    refusal(capsys, f"nasax train (PID {os.getpid()})")
    assert snapshot(run) == before and not (tmp_path / "model").exists()


def test_a_tuning_refuses_a_locked_study_and_stops_at_a_locked_trial(tmp_path, tiny_npz, capsys):
    from tests.test_tune import _tune_config

    config, study = _tune_config(tmp_path, tiny_npz), tmp_path / "study"
    with lock_run_dir(study, "tune"):
        assert main(["tune", config, "--out", str(study)]) == RunDirBusy.exit_code
    refusal(capsys, "nasax tune")
    with lock_run_dir(study / "trial_000", "search"):  # a trial resumed by hand
        assert main(["tune", config, "--out", str(study)]) == RunDirBusy.exit_code
    assert str(study / "trial_000") in refusal(capsys, "nasax search")


def test_readers_share_the_lock_and_keep_writers_out(tmp_path):
    run = tmp_path / "run"
    with lock_run_dir(run, "train"), pytest.raises(RunDirBusy):
        share_run_dir(run)
    two_evaluations = share_run_dir(run), share_run_dir(run)
    with pytest.raises(RunDirBusy, match="in use by"):
        lock_run_dir(run, "train")
    for reader in two_evaluations:
        reader.release()
    lock_run_dir(run, "train").release()


def test_the_holder_named_is_alive_or_a_reader(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert describe_holder(f"{ended.pid} {socket.gethostname()} nasax search\n") == (
        "a nasax process reading it (evaluate or export)"
    )
    assert describe_holder(f"{os.getpid()} {socket.gethostname()} nasax train\n") == (
        f"nasax train (PID {os.getpid()})"
    )
    assert describe_holder("12 node7 nasax tune\n") == "nasax tune (PID 12 on node7)"
    assert describe_holder("") == "another nasax process"


def test_a_lock_held_by_a_killed_process_blocks_nobody(tiny_npz, tmp_path, capsys):
    run = tmp_path / "run"
    hold = (
        "import sys; from nasax.core.runlock import lock_run_dir; "
        "lock_run_dir(sys.argv[1], 'train')"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", f"{hold}; print('held', flush=True); sys.stdin.read()", str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(train_args(tiny_npz, run, "--overwrite")) == RunDirBusy.exit_code
        refusal(capsys, f"nasax train (PID {holder.pid})")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK_NAME).read_text().startswith(f"{holder.pid} ")  # left as it was
    assert main(train_args(tiny_npz, run, "--overwrite")) == 0
    assert (run / LOCK_NAME).read_text().startswith(f"{os.getpid()} ")


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
    """In a multi-host job the other processes take no lock; they learn process 0's verdict."""
    import jax

    from nasax.core import rundir

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(rundir, "is_primary", lambda: False)
    monkeypatch.setattr(rundir, "process_zero_flag", lambda flag: True)
    lock = rundir.lock_on_process_zero(tmp_path / "run", "search")
    assert not lock.held and not (tmp_path / "run" / LOCK_NAME).exists()
    monkeypatch.setattr(rundir, "process_zero_flag", lambda flag: False)
    with pytest.raises(RunDirBusy, match="process 0 could not take its lock"):
        rundir.lock_on_process_zero(tmp_path / "run", "search")
