"""A retraining run read back from its directory: its config, network and latest state, and
its test figures (`nasax evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import yaml

from nasax.core.checkpoint import Checkpoints
from nasax.core.config import Config, validate_config
from nasax.core.errors import RunDirError
from nasax.core.runlock import RunLock, share_run_dir
from nasax.engine.blocks import jit_for
from nasax.loop.data import Dataset, load_dataset
from nasax.loop.runloop import evaluate
from nasax.supernet.genotypes import Genotype
from nasax.train.task import build_trainer
from nasax.train.trainer import Trainer, TrainState


def load_train_run(
    run_dir: str | Path,
) -> tuple[Config, Genotype, Dataset, Trainer, TrainState, dict]:
    """Config, genotype, data, trainer and the latest checkpointed state of a retraining run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    config_path, genotype_path = run_dir / "config.yaml", run_dir / "genotype.json"
    if not config_path.is_file() or not genotype_path.is_file():
        raise RunDirError(
            f"{run_dir} is not a retraining run directory (it needs config.yaml and "
            "genotype.json from nasax train)"
        )
    if not (run_dir / "checkpoints").is_dir() or (run_dir / "alphas.npz").exists():
        kind = "a search run" if (run_dir / "alphas.npz").exists() else "a run without checkpoints"
        raise RunDirError(
            f"{run_dir} is {kind}, not a retraining run; retrain its cell first: "
            f"nasax train CONFIG --genotype {genotype_path}"
        )
    config = validate_config(yaml.safe_load(config_path.read_text()), str(config_path))
    genotype = Genotype.load(genotype_path)
    dataset = load_dataset(config.data.name, config.data.data_dir, config.data.num_classes)
    trainer = build_trainer(config, genotype, dataset)
    state, meta = restore_latest(run_dir, config, trainer.init(jax.random.PRNGKey(config.seed)))
    return config, genotype, dataset, trainer, state, meta


def run_progress(run_dir: Path, config: Config, meta: Any) -> dict[str, Any]:
    """Where a retraining's latest checkpoint stands: epochs done of planned, its step,
    and whether the run finished."""
    return {
        "run_dir": str(run_dir),
        "epochs_done": meta["epoch"],
        "epochs": config.train.epochs,
        "step": meta["step"],
        "finished": meta["epoch"] == config.train.epochs and meta["batch"] == 0,
    }


def restore_latest(run_dir: Path, config: Config, template: Any) -> tuple[Any, Any]:
    """The latest checkpoint of a run, restored into `template`'s structure, and its
    metadata; RunDirError when the run holds none yet."""
    checkpoints = Checkpoints(run_dir / "checkpoints", keep=config.run.checkpoint_keep)
    try:
        if checkpoints.latest_step() is None:
            raise RunDirError(f"{run_dir}/checkpoints holds no checkpoint yet")
        return checkpoints.restore(template)
    finally:
        checkpoints.close()


def reading_run(run_dir: str | Path) -> RunLock:
    """The shared lock of a run directory, for commands that read its checkpoints: a run
    still writing them is refused. A directory that is not there is left to the checks."""
    return share_run_dir(run_dir) if Path(run_dir).is_dir() else RunLock(Path(run_dir), None)


def evaluate_run(run_dir: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Test loss and top-1 of the latest checkpoint of a finished or interrupted retraining.

    Raises:
        RunDirBusy: the run is still running (its checkpoints may change while read).
    """
    with reading_run(run_dir):
        config, _, dataset, trainer, state, meta = load_train_run(run_dir)
    eval_fn = jit_for(config.run.execution)(trainer.evaluate)
    test = evaluate(
        eval_fn,
        state,
        dataset.x_test,
        dataset.y_test,
        config.train.batch_size,
        progress="evaluate" if progress else None,
    )
    return {
        **run_progress(run_dir, config, meta),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "examples": len(dataset.y_test),
    }


__all__ = ["evaluate_run", "load_train_run", "reading_run"]
