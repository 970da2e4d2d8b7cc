"""Retraining a genotype from scratch, evaluation and export (`nasax.train`); a recurrent
genotype retrains as a language model (`run_language`) and generates text."""

from nasax.train.evaluate import evaluate_run
from nasax.train.export import (
    export_run,
    load_model,
    preprocess_for,
    read_manifest,
    read_vocabulary,
)
from nasax.train.generate import generate_ids, generate_text
from nasax.train.language import LanguageTask, run_language
from nasax.train.lm_trainer import LanguageTrainer, LMState, Vocabulary
from nasax.train.regularizers import cutout, drop_path_rate
from nasax.train.task import TrainTask, build_trainer, run_train
from nasax.train.trainer import Regularizers, Trainer, TrainState

__all__ = [
    "LMState",
    "LanguageTask",
    "LanguageTrainer",
    "Regularizers",
    "TrainState",
    "TrainTask",
    "Trainer",
    "Vocabulary",
    "build_trainer",
    "cutout",
    "drop_path_rate",
    "evaluate_run",
    "export_run",
    "generate_ids",
    "generate_text",
    "load_model",
    "preprocess_for",
    "read_manifest",
    "read_vocabulary",
    "run_language",
    "run_train",
]
