"""Retraining a genotype from scratch, evaluation and export (`nasax.train`)."""

from nasax.train.export import export_run, load_model, preprocess_for, read_manifest
from nasax.train.loop import build_trainer, evaluate_run, run_train
from nasax.train.regularizers import cutout, drop_path_rate
from nasax.train.trainer import Regularizers, Trainer, TrainState

__all__ = [
    "Regularizers",
    "TrainState",
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
