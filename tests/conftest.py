"""Shared fixtures: a persistent compilation cache, a tiny dataset made from digits, and
one finished tiny search and retraining; tests marked `serial` run with no other test."""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
import pytest

CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "nasax-tests-jax")
)
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@contextmanager
def _turn(item: pytest.Item) -> Iterator[None]:
    """Hold a shared lock while `item` runs, or an exclusive one if it is marked `serial`.

    Under pytest-xdist the workers share one lock file per run. A serial test first takes
    a gate that every test passes through, so the other worker finishes its current test
    and then waits, instead of starving the serial test with fresh shared locks.
    """
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:  # one process: tests never overlap
        yield
        return
    serial = item.get_closest_marker("serial") is not None
    base = Path(tempfile.gettempdir()) / f"nasax-tests-{workerinput['testrunuid']}"
    with open(f"{base}.gate", "a") as gate, open(f"{base}.run", "a") as run:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if not serial:
            fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(run, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)


SHARED_WORKER = {
    "tests/test_report.py": "tests/test_classifier.py",
    "tests/test_tensorboard.py": "tests/test_classifier.py",
}
"""Modules that read another module's costly session fixture (`tiny_classifier`, a 40 s
fit), mapped to that module: pytest-xdist builds a session fixture once per worker, so
they run on its worker and the fixture is built once."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadscope` (pyproject addopts), with SHARED_WORKER's modules in one scope."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SHARED_WORKER.get(scope, scope)

    return SharedFixtureScheduling(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Each test's setup, call and teardown under its turn (see `_turn`)."""
    with _turn(item):
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops the compiled programs when a module ends with the process past half of
    Linux's memory maps per process (as `run` does before compiling). Every loaded XLA
    CPU executable holds maps of its own; the whole suite in one process kept them all,
    passed the limit of 65,530 (vm.max_map_count), and crashed loading the next one.
    Later modules load what they need from the disk cache."""
    yield
    from nasax.engine.compilation_cache import release_if_crowded

    release_if_crowded()


TINY = [
    "model.channels=4",
    "model.layers=3",
    "search.epochs=2",
    "search.batch_size=16",
    "run.log_every=2",
    "run.progress=false",
    "run.plots=false",
]
"""Overrides that make darts_digits a seconds-long search (after compilation)."""


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """128 train and 64 test digits as an npz dataset: 4 search steps per epoch at batch 16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 16).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny_digits.npz"
    np.savez(
        path,
        x_train=images[:128],
        y_train=digits.target[:128],
        x_test=images[128:192],
        y_test=digits.target[128:192],
    )
    return str(path)


TINY_TRAIN = [
    "model.channels=4",
    "model.layers=3",
    "train.epochs=3",
    "train.batch_size=32",
    "train.cutout=3",
    "train.drop_path=0.3",
    "run.log_every=2",
    "run.progress=false",
]
"""Overrides that make retrain_digits a seconds-long run: 4 steps per epoch on tiny data."""


def _cli_args(command: list[str], sets: list[str], tiny_npz: str, out: Path, extra) -> list[str]:
    sets = [*sets, f"data.name=npz:{tiny_npz}"]
    return [*command, *[a for s in sets for a in ("--set", s)], "--out", str(out), *extra]


def search_args(tiny_npz: str, out: Path, *extra: str) -> list[str]:
    """`nasax search` arguments of the tiny darts_digits search into `out`."""
    return _cli_args(["search", "darts_digits"], TINY, tiny_npz, out, extra)


def train_args(tiny_npz: str, out: Path, *extra: str, genotype: str = "DARTS_V2") -> list[str]:
    """`nasax train` arguments of the tiny retraining of `genotype` into `out`."""
    command = ["train", "retrain_digits", "--genotype", genotype]
    return _cli_args(command, TINY_TRAIN, tiny_npz, out, extra)


@pytest.fixture(scope="session")
def finished_run(tiny_npz, tmp_path_factory) -> Path:
    """One uninterrupted tiny search, the reference of every resumed one (not to be changed)."""
    from nasax.app.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(search_args(tiny_npz, out)) == 0
    return out


@pytest.fixture(scope="session")
def finished_training(tiny_npz, tmp_path_factory) -> Path:
    """One uninterrupted tiny retraining of DARTS_V2 (`train_args`), the reference of
    the retraining, reliability, storage and lock tests (not to be changed)."""
    from nasax.app.cli import main

    out = tmp_path_factory.mktemp("runs") / "trained"
    assert main(train_args(tiny_npz, out)) == 0
    return out


TINY_CLASSIFIER = [
    "model.channels=4",
    "model.layers=1",
    "search.batch_size=32",
    "train.batch_size=32",
    "run.log_every=5",
]
"""ImageClassifier overrides for a tiny NAS-Bench-201 search and retraining on digits."""


@pytest.fixture(scope="session")
def digits_arrays() -> dict[str, np.ndarray]:
    """scikit-learn's digits as uint8 arrays: 1400 to fit on, 397 to test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 16).clip(0, 255).astype(np.uint8)
    return {
        "x_train": images[:1400],
        "y_train": digits.target[:1400],
        "x_test": images[1400:],
        "y_test": digits.target[1400:],
    }


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory, digits_arrays):
    """One ImageClassifier fitted on the digits under a 40 s limit: a search of 20 s
    (far fewer than its 1000 epochs), then its cell retrained for one epoch; its run
    directories serve the report and TensorBoard tests too."""
    import nasax

    clf = nasax.ImageClassifier(
        strategy="darts",
        seed=0,
        space="nb201",
        max_epochs=1000,
        final_epochs=1,
        overrides=TINY_CLASSIFIER,
        directory=tmp_path_factory.mktemp("classifier"),
        quiet=True,
    )
    clf.fit(digits_arrays["x_train"], digits_arrays["y_train"], time_limit=40.0)
    return clf


KILL_AT_STEP = """
import importlib, os, signal, sys
from nasax.app.cli import main

module = importlib.import_module(sys.argv[1])
step, real_prefetch, count = int(sys.argv[2]), module.prefetch, [0]

def prefetch_then_kill(it, size=2, **kw):
    for batch in real_prefetch(it, size, **kw):
        count[0] += 1
        if count[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch

module.prefetch = prefetch_then_kill
sys.exit(main(sys.argv[3:]))
"""


def kill_at_step(tmp: Path, module: str, step: int, argv: list[str]) -> list[str]:
    """A command that runs `nasax argv` and SIGKILLs itself as its step `step` starts (when
    `module`'s `prefetch`, which feeds the steps, yields that step's batch)."""
    script = tmp / "kill_at_step.py"
    script.write_text(KILL_AT_STEP)
    return [sys.executable, str(script), module, str(step), *argv]
