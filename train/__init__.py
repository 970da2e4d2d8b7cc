"""Retraining a genotype from scratch, evaluation and export (`nasax.train`)."""

from nasax.train.evaluate import evaluate_run
from nasax.train.export import export_run, load_model, preprocess_for, read_manifest
from nasax.train.regularizers import cutout, drop_path_rate
from nasax.train.task import TrainTask, build_trainer, run_train
from nasax.train.trainer import Regularizers, Trainer, TrainState

__all__ = [
    "Regularizers",
    "TrainState",
    "TrainTask",
    "Trainer",
    "build_trainer",
    "cutout",
    "drop_path_rate",
    "evaluate_run",
    "export_run",
    "load_model",
    "preprocess_for",
    "read_manifest",
    "run_train",
]
