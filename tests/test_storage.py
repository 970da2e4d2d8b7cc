"""A disk that refuses a write (full, over quota, forbidden, read-only, failing): each
write site in turn fails once; the command ends with one line and exit status 74, the
files written before stay valid, and the command that line gives finishes the run as if
nothing had happened."""

from __future__ import annotations

import errno
import json
import os
import shlex
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from nasax.app.cli import main
from nasax.core.checkpoint import complete_steps
from nasax.core.errors import StorageError
from nasax.search.options import validate_config
from tests.conftest import search_args, train_args


def refuse(code: int, path: object) -> OSError:
    return OSError(code, os.strerror(code), os.fspath(path))


def fail_file(monkeypatch: pytest.MonkeyPatch, name: str, code: int, nth: int) -> None:
    """The `nth` opening for writing of a file called `name` (or of the temporary file an
    atomic write of it renames into place) fails with `code`."""
    real_open, seen = os.open, [0]

    def open_(path, flags, *args, **kwargs):
        base = os.path.basename(os.fspath(path))
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if writing and (base == name or base.startswith(f".{name}.")):
            seen[0] += 1
            if seen[0] == nth:
                raise refuse(code, path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def fail_checkpoint(monkeypatch: pytest.MonkeyPatch, code: int, nth: int, tensorstore: bool):
    """The `nth` checkpoint save fails as orbax fails on a full disk: a temporary folder is
    left and tensorstore's error names the OS error code (or epath's OSError)."""
    real_save, seen = ocp.CheckpointManager.save, [0]

    def save(self, step, *args, **kwargs):
        seen[0] += 1
        if seen[0] != nth:
            return real_save(self, step, *args, **kwargs)
        partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp"
        (partial / "state").mkdir(parents=True)
        if not tensorstore:
            raise refuse(code, partial / "_CHECKPOINT_METADATA")
        raise ValueError(
            f'RESOURCE_EXHAUSTED: Error writing "params/w" in OCDBT database at local file '
            f'"{partial}/state/ocdbt.process_0/": {os.strerror(code)} [os_error_code={code}]'
        )

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def fail_tensorboard(monkeypatch: pytest.MonkeyPatch, code: int, nth: int) -> None:
    """The `nth` flush of TensorBoard's event file fails with `code`."""
    from tensorboardX.record_writer import RecordWriter

    real_flush, seen = RecordWriter.flush, [0]

    def flush(self):
        seen[0] += 1
        if seen[0] == nth:
            raise refuse(code, self.path)
        return real_flush(self)

    monkeypatch.setattr(RecordWriter, "flush", flush)


def inject(monkeypatch: pytest.MonkeyPatch, site: str, code: int, nth: int) -> None:
    if site.startswith("checkpoint"):
        fail_checkpoint(monkeypatch, code, nth, tensorstore=site == "checkpoint")
    elif site == "tensorboard":
        fail_tensorboard(monkeypatch, code, nth)
    else:
        fail_file(monkeypatch, site, code, nth)


def the_line(capsys: pytest.CaptureFixture, code: int) -> str:
    """The one line the command printed for a refused write, checked for what it names."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"[{errno.errorcode[code]}]" in err and " with: nasax " in err, err
    return err


def next_command(line: str) -> list[str]:
    """The arguments of the command a line says to carry on with."""
    words = shlex.split(line.split(" with: ", 1)[1])
    assert words[0] == "nasax"
    return words[1:]


def checkpoint_arrays(run: Path, step: int) -> dict[str, np.ndarray]:
    """The state arrays of checkpoint `step`, restored as they were saved."""
    return dict(ocp.PyTreeCheckpointer().restore(run / "checkpoints" / str(step) / "state"))


def untimed_metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records]


def assert_earlier_files_are_valid(run: Path, latest: int | None) -> None:
    """Whatever the failed command left parses, and its latest complete checkpoint (step
    `latest`) restores."""
    assert not list(run.rglob("*.tmp"))
    for path in run.glob("*.json"):
        json.loads(path.read_text())
    if (run / "metrics.jsonl").exists():
        untimed_metrics(run)
    if (run / "config.yaml").exists():
        validate_config(yaml.safe_load((run / "config.yaml").read_text()))
    if (run / "alphas.npz").exists():
        with np.load(run / "alphas.npz") as f:
            assert {"alpha_normal", "alpha_reduce"} <= set(f.files)
    steps = complete_steps(run / "checkpoints")
    assert (steps[-1] if steps else None) == latest
    if latest:
        arrays = checkpoint_arrays(run, latest)
        assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")


class Reference:
    """What an uninterrupted run left, read once: metrics, last checkpoint, summary."""

    def __init__(self, run: Path) -> None:
        self.run, self.metrics = run, untimed_metrics(run)
        self.step = complete_steps(run / "checkpoints")[-1]
        self.arrays = checkpoint_arrays(run, self.step)
        self.test_accuracy = json.loads((run / "summary.json").read_text())["test_accuracy"]

    def assert_same(self, run: Path) -> None:
        """`run` ended bit-identical to the reference (all but wall-clock figures)."""
        assert untimed_metrics(run) == self.metrics
        assert complete_steps(run / "checkpoints")[-1] == self.step
        arrays = checkpoint_arrays(run, self.step)
        assert arrays.keys() == self.arrays.keys()
        for key, value in self.arrays.items():
            np.testing.assert_array_equal(arrays[key], value, err_msg=key)
        summary = json.loads((run / "summary.json").read_text())
        assert summary["test_accuracy"] == self.test_accuracy
        if (self.run / "genotype.json").exists():
            assert (run / "genotype.json").read_text() == (self.run / "genotype.json").read_text()
        if (self.run / "alphas.npz").exists():
            with np.load(self.run / "alphas.npz") as a, np.load(run / "alphas.npz") as b:
                assert a.files == b.files
                for key in a.files:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def faults_in_turn_then_the_same_end(reference: Path, args, sites, monkeypatch, capsys) -> Path:
    """Runs `args`, each time with the next site's fault, then the command its line gives;
    the last command finishes the run bit-identical to `reference`. Returns the run."""
    expected, out = Reference(reference), Path(args[args.index("--out") + 1])
    for site, code, nth, latest, *extra in sites:
        with monkeypatch.context() as patched:
            inject(patched, site, code, nth)
            assert main([*args, *extra]) == StorageError.exit_code, site
        line = the_line(capsys, code)
        carry_on = "continue with:" if latest else "start again with:"
        assert carry_on in line and line.endswith("--resume" if latest else "--overwrite"), line
        assert f"--out {out}" in line, line
        assert_earlier_files_are_valid(out, latest)
        args = next_command(line)
    assert main(args) == 0
    expected.assert_same(out)
    return out


# Each row: the site, the error, which of its writes fails, the latest complete
# checkpoint left, extra arguments. A search checkpoints after each of its 2 epochs and
# then draws each edge's evolution (run.plots). Sites it shares with retraining (the
# config, metrics, cell, summary and TensorBoard writers) are tested there, where a run
# costs less.
SEARCH_SITES = [
    ("checkpoint", errno.ENOSPC, 2, 4),
    ("alphas.npz", errno.EDQUOT, 1, 4),
    ("evolution_normal.png", errno.EROFS, 1, 8, "--set", "run.plots=true"),
]


def test_search_meets_each_fault_in_turn_and_ends_bit_exactly(
    finished_run, tiny_npz, tmp_path, monkeypatch, capsys
):
    args = search_args(tiny_npz, tmp_path / "run")
    out = faults_in_turn_then_the_same_end(finished_run, args, SEARCH_SITES, monkeypatch, capsys)
    assert {"epoch_002.png", "evolution_normal.png"} <= {p.name for p in (out / "arch").iterdir()}


# A retraining checkpoints after each of its 3 epochs (4 steps and 3 metric records
# each); the sites before the first checkpoint start again with --overwrite.
TRAIN_SITES = [
    (".nasax.lock", errno.EACCES, 1, None),
    ("config.yaml", errno.ENOSPC, 1, None),
    ("genotype.json", errno.EROFS, 1, None),
    ("metrics.jsonl", errno.ENOSPC, 5, 4),
    ("checkpoint (epath)", errno.EACCES, 1, 4),
    ("tensorboard", errno.ENOSPC, 1, 4),
    ("summary.json", errno.EIO, 1, 12),
]


def test_training_meets_each_fault_in_turn_and_ends_bit_exactly(
    finished_training, tiny_npz, tmp_path, monkeypatch, capsys
):
    args = train_args(tiny_npz, tmp_path / "run")
    faults_in_turn_then_the_same_end(finished_training, args, TRAIN_SITES, monkeypatch, capsys)


def test_a_refused_report_names_its_file_and_reruns(
    finished_training, tmp_path, monkeypatch, capsys
):
    run, report = finished_training, tmp_path / "report.html"
    fail_file(monkeypatch, "report.html", errno.ENOSPC, 1)
    assert main(["report", str(run), "--out", str(report)]) == StorageError.exit_code
    line = the_line(capsys, errno.ENOSPC)
    assert f"cannot write {report}: No space left on device" in line
    assert line.endswith(f"then rerun with: nasax report {run} --out {report}")
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    assert main(next_command(line)) == 0 and report.is_file()


def test_a_refused_export_leaves_nothing_behind(finished_training, tmp_path, monkeypatch, capsys):
    trained = finished_training
    real_save = ocp.StandardCheckpointer.save

    def save(self, directory, *args, **kwargs):
        raise ValueError(f"RESOURCE_EXHAUSTED: writing {directory}: [os_error_code={errno.EDQUOT}]")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save)
    model = tmp_path / "model"
    assert main(["export", str(trained), "--out", str(model), "--quiet"]) == StorageError.exit_code
    line = the_line(capsys, errno.EDQUOT)
    assert f"cannot write the exported model to {model}: Disk quota exceeded" in line
    assert line.endswith(
        f"or pass --out elsewhere; then rerun with: nasax export {trained} --out {model} --quiet"
    )
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its partial copy
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", real_save)


def test_a_full_disk_under_the_tuning_study_stops_the_tuning(
    tmp_path, tiny_npz, monkeypatch, capsys
):
    import sqlite3

    import optuna
    import sqlalchemy.exc

    from tests.test_tune import _tune_config

    def create_study(**kwargs):
        full = sqlite3.OperationalError("database or disk is full")
        raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, full)

    monkeypatch.setattr(optuna, "create_study", create_study)
    config, out = _tune_config(tmp_path, tiny_npz), tmp_path / "study"
    assert main(["tune", config, "--out", str(out)]) == StorageError.exit_code
    line = the_line(capsys, errno.ENOSPC)
    assert f"cannot update {out}/study.db" in line
    assert line.endswith(f"then rerun with: nasax tune {config} --out {out}")


def test_nasax_show_names_the_picture_it_could_not_write(tmp_path, monkeypatch, capsys):
    fail_file(monkeypatch, "cell.dot", errno.EROFS, 1)
    picture = tmp_path / "cell.dot"
    assert main(["show", "DARTS_V2", "--out", str(picture)]) == StorageError.exit_code
    assert f"cannot write {picture}: Read-only file system [EROFS]" in the_line(capsys, errno.EROFS)
    assert not list(tmp_path.iterdir())


def test_appends_are_whole_or_absent(tmp_path, monkeypatch):
    """A write that the disk cuts short is taken back: metrics.jsonl keeps whole lines."""
    from nasax.core.io import append_text

    path = tmp_path / "metrics.jsonl"
    append_text(path, '{"step": 1}\n')
    real_write, inode = os.write, path.stat().st_ino

    def write_half(fd, data):  # the disk takes 4 bytes at a time, then nothing
        if os.fstat(fd).st_ino != inode:
            return real_write(fd, data)
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise refuse(errno.ENOSPC, path)

    monkeypatch.setattr(os, "write", write_half)
    with pytest.raises(StorageError, match=r"cannot append to .*No space left on device"):
        append_text(path, '{"step": 2}\n')
    assert path.read_text() == '{"step": 1}\n'


FULL_DISK_SAVE = """
import logging, sys
import numpy as np
from nasax.core.checkpoint import Checkpoints
from nasax.core.errors import StorageError

logging.basicConfig()  # a handler on the root logger, as libraries' root-level calls add
checkpoints = Checkpoints(sys.argv[1])
state = {"w": np.zeros(4, np.float32)}  # fits; the metadata below does not
meta = {"metrics": [{"epoch": i, "loss": 0.5} for i in range(100_000)]}
try:
    checkpoints.save(1, state, meta)
except StorageError as e:
    print(f"StorageError {e.errno}")
"""


def test_a_full_disk_under_the_metadata_save_prints_nothing_but_the_error(tmp_path):
    """On a real full filesystem (a 300 KB tmpfs) orbax's JSON writer thread catches the
    ENOSPC and logs it with a traceback before the save raises it; nasax's one line
    (the StorageError) must be all that reaches the terminal."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to mount a small tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    script = tmp_path / "save.py"
    script.write_text(FULL_DISK_SAVE)
    shell = (
        f"mount -t tmpfs -o size=300k tmpfs {shlex.quote(str(mount))} && "
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(mount))}"
    )
    unprivileged = [] if os.geteuid() == 0 else ["-r"]
    done = subprocess.run(
        ["unshare", *unprivileged, "-m", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    if "mount" in done.stderr and done.returncode != 0 and "StorageError" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.stdout.strip() == f"StorageError {errno.ENOSPC}", done.stderr
    assert done.stderr.strip() == "", done.stderr
