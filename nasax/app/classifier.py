"""`ImageClassifier`: search, retrain, evaluate and export on numpy arrays in a few calls.

`fit` searches a cell and retrains it within one time limit, so that, as in AutoKeras 1.x,
a trained model follows `fit`. It builds a config from the arrays' shapes, hands the arrays
to the config-driven loops as in-memory datasets (`run(..., data=...)`), and writes the same
run directories as the CLI (`<directory>/<project_name>/search` and `.../final`), so
`nasax report` works on them.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from types import EllipsisType
from typing import Any, NamedTuple

import numpy as np

from nasax.core.config import Config, apply_overrides
from nasax.core.errors import DataError, NasaxError, RunDirError
from nasax.core.rundir import holds_run
from nasax.engine.compilation_cache import use_compilation_cache
from nasax.loop.data import Dataset, check_images, check_labels, dataset_from_arrays
from nasax.loop.programs import ProgramCache
from nasax.search.options import validate_config

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "darts": {
        "small": {"search": {"channels": 8, "layers": 5}, "final": {"channels": 16, "layers": 8}},
        "large": {"search": {"channels": 16, "layers": 8}, "final": {"channels": 16, "layers": 8}},
        "train": {"auxiliary": True},
    },
    "nb201": {
        "small": {
            "search": {"channels": 16, "layers": 2, "stem_multiplier": 1},
            "final": {"channels": 16, "layers": 2, "stem_multiplier": 1},
        },
        "large": {
            "search": {"channels": 16, "layers": 5, "stem_multiplier": 1},
            "final": {"channels": 16, "layers": 5, "stem_multiplier": 1},
        },
        "train": {"auxiliary": False},
    },
}
"""Model sizes per search space for small (at most 16 px, like the digits configs) and
larger images; `overrides` change any of them."""

_instances = itertools.count()

NO_TIME_LEFT = 1e-3
"""The retraining's time limit when the search used all of `fit`'s: the run loop runs one
step of every epoch it enters, so `fit` still leaves a network (and says so)."""


class FitTimes(NamedTuple):
    """How the last `fit` split its time limit, in seconds from the call (None: no limit).

    The search ran under `search_limit` = `search_share` x `time_limit`; the retraining,
    started `final_start` seconds after the call, under `final_limit` = `time_limit` -
    `final_start` (at least `NO_TIME_LEFT`). Both are also the `time_limit` of their run
    directories' config.yaml and summary.json.
    """

    time_limit: float | None
    search_limit: float | None
    final_start: float
    final_limit: float | None
    seconds: float
    """The whole `fit`."""


def _check_time_limit(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise NasaxError(f"{where}: time_limit must be seconds > 0 or None, got {value!r}")
    return float(value)


class ImageClassifier:
    """Neural architecture search for image classification in the AutoKeras style.

    `fit` searches a cell, then retrains it from scratch, within one time limit
    (compilation included), and leaves the retrained network to `evaluate`, `predict`
    and `export`. The search may take `search_share` of the limit (it then stops with
    the latest derived cell); the retraining gets what remains of the limit when the
    search has stopped, so time the search did not use goes to the retraining, and
    ends after `final_epochs` or at the limit, whichever comes first (saying so).
    `final_fit` retrains the searched cell again, for all of `final_epochs` and on the
    data it is given, and replaces the network `fit` left.

    Args:
        strategy: a registered search strategy; `beta_darts` by default: the best mean
            of the strategies on the NAS-Bench-201 CPU proxy under a 600 s limit (seeds
            0-2, see benchmarks/README.md). `pcdarts` warms up for 30% of `max_epochs`
            (its default: the paper's 15 of 50), and so of the epochs the limit leaves.
        time_limit: seconds `fit` may take, search and retraining together (None: the
            whole `max_epochs` search, then the whole `final_epochs` retraining);
            `fit(..., time_limit=)` overrides it for one call.
        seed: the runs' seed.
        space: the search space (`darts`, `nb201`).
        max_epochs: search epochs when the time limit does not stop it first.
        final_epochs: retraining epochs (`fit`'s retraining stops earlier at the time
            limit; `final_fit` trains them all).
        search_share: the share of `time_limit` the search may take, in (0, 1).
        validation_split: share of the given arrays held out for the test figures
            when no `validation_data` is passed.
        overrides: dotted config overrides applied to both runs (`model.channels=4`).
        directory, project_name: the runs go to `directory/project_name/{search,final}`.
        overwrite: let `fit` replace those run directories if they hold earlier runs
            (without it, `fit` refuses before anything runs).
        quiet: no progress bars.
        max_params: the found cell's network, as the retraining trains it, has at most
            this many parameters (`search.cost`; every strategy keeps to it).
        max_latency_ms: ... or takes at most this many ms per image on this machine.
    """

    def __init__(
        self,
        strategy: str = "beta_darts",
        time_limit: float | None = 600.0,
        seed: int = 0,
        *,
        space: str = "darts",
        max_epochs: int = 50,
        final_epochs: int = 30,
        search_share: float = 0.5,
        validation_split: float = 0.2,
        overrides: list[str] | tuple[str, ...] = (),
        directory: str | os.PathLike = "runs",
        project_name: str = "image_classifier",
        overwrite: bool = False,
        quiet: bool = False,
        max_params: float | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        if max_params is not None and max_latency_ms is not None:
            raise NasaxError("ImageClassifier: give max_params or max_latency_ms, not both")
        self.budget = (
            {"metric": "params", "target": max_params}
            if max_params is not None
            else {"metric": "latency", "target": max_latency_ms}
            if max_latency_ms is not None
            else None
        )
        if space not in SIZES:
            raise NasaxError(
                f"ImageClassifier: space must be one of {sorted(SIZES)}, got {space!r}"
            )
        if not 0.0 < validation_split < 1.0:
            raise NasaxError(f"validation_split must lie in (0, 1), got {validation_split}")
        if not 0.0 < search_share < 1.0:
            raise NasaxError(f"search_share must lie in (0, 1), got {search_share}")
        if any(o.partition("=")[0].strip() == "run.time_limit" for o in overrides):
            raise NasaxError(
                "ImageClassifier: set time_limit (and search_share), not run.time_limit in "
                "overrides: fit splits one limit between the search and the retraining"
            )
        self.time_limit = _check_time_limit(time_limit, "ImageClassifier")
        self.strategy, self.seed, self.space = strategy, seed, space
        self.max_epochs, self.final_epochs = max_epochs, final_epochs
        self.search_share = search_share
        self.validation_split, self.overrides = validation_split, list(overrides)
        self.project_dir = Path(directory) / project_name
        self.overwrite, self.quiet = overwrite, quiet
        self._key = f"{project_name}-{next(_instances)}"
        self._programs = ProgramCache()  # a fit again with the same sizes compiles nothing
        self.image_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None
        self.genotype: Any = None
        self.search_summary: dict[str, Any] | None = None
        self.final_summary: dict[str, Any] | None = None
        self.fit_times: FitTimes | None = None  # how the last fit split its time limit
        self._model: Any = None  # the retrained network in memory (a train.export.TrainedModel)
        self._jit: Any = None  # compiles evaluation and prediction as the final run did

    @property
    def search_dir(self) -> Path:
        """The search run directory (as `nasax search` writes it)."""
        return self.project_dir / "search"

    @property
    def final_dir(self) -> Path:
        """The retraining run directory (as `nasax train` writes it)."""
        return self.project_dir / "final"

    # ------------------------------------------------------------------ public API

    def fit(
        self,
        x: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None = None,
        *,
        time_limit: float | EllipsisType | None = ...,
    ) -> ImageClassifier:
        """Searches a cell on (x, y), then retrains it from scratch, within one time limit;
        returns self, ready to `evaluate`, `predict` and `export`.

        The limit counts from this call, compilation included. The search may take
        `search_share` x `time_limit` seconds; the retraining gets `time_limit` minus the
        seconds spent when it starts, so what the search left goes to it. It ends after
        `final_epochs` or at the limit, whichever comes first, with the state it reached:
        once two epochs have been timed, its lr and drop path are fitted to the epochs
        that end in time (`epochs_planned` in its summary), and it ends on the last of
        them (if the search left no time, after one step). `fit_times` records the split.

        Args:
            x, y: images (N, H, W) or (N, H, W, C) and integer labels (N,).
            validation_data: (x, y) for the test figures; default: `validation_split`
                of (x, y) held out.
            time_limit: seconds for the search and the retraining together; default
                (`...`): the constructor's; None: the whole `max_epochs` search, then
                the whole `final_epochs` retraining.

        Raises:
            RunDirError: `search_dir` or `final_dir` holds an earlier run and `overwrite`
                is off (before anything runs).
        """
        from nasax.loop.run import run
        from nasax.search.task import SearchTask

        start = time.perf_counter()
        limit = self.time_limit if time_limit is ... else _check_time_limit(time_limit, "fit")
        if not self.overwrite:
            self._refuse_earlier_runs()
        use_compilation_cache()
        data = self._dataset("search", x, y, validation_data)
        self.genotype = self.search_summary = self.final_summary = self.fit_times = None
        self._model = self._jit = None
        search_limit = None if limit is None else self.search_share * limit
        result = run(
            SearchTask(),
            self._config("search", data.name, search_limit),
            self.search_dir,
            data=data,
            overwrite=self.overwrite,
            programs=self._programs,
        )
        del data  # the search's copy of the arrays, before the retraining makes its own
        self.search_summary = result.summary
        self.genotype = result.made
        if self.search_summary["stopped_early"] and not self.quiet:
            print(
                f"nasax: the search stopped at its time limit ({search_limit:g} s, "
                f"{self.search_share:.0%} of {limit:g} s) after "
                f"{self.search_summary['steps']} steps; keeping the latest derived cell"
            )
        final_start = time.perf_counter() - start
        final_limit = None if limit is None else max(limit - final_start, NO_TIME_LEFT)
        self._retrain(x, y, validation_data, final_limit, overwrite=self.overwrite)
        if self.final_summary["stopped_early"] and not self.quiet:  # type: ignore[index]
            self._say_retraining_stopped(limit, final_limit)
        self.fit_times = FitTimes(
            limit, search_limit, final_start, final_limit, time.perf_counter() - start
        )
        return self

    def final_fit(
        self, x: Any, y: Any, validation_data: tuple[Any, Any] | None = None
    ) -> ImageClassifier:
        """Retrains the searched cell from scratch on (x, y) for all of `final_epochs`,
        without a time limit, replacing the network (and the `final_dir` run) `fit` left:
        to retrain on more data, or for longer than `fit`'s limit allowed; returns self."""
        if self.genotype is None:
            raise NasaxError("final_fit needs a searched cell: call fit(x, y) first")
        # final_dir is this classifier's own: fit checked it before searching.
        return self._retrain(x, y, validation_data, None, overwrite=True)

    def _retrain(
        self,
        x: Any,
        y: Any,
        validation_data: tuple[Any, Any] | None,
        time_limit: float | None,
        *,
        overwrite: bool,
    ) -> ImageClassifier:
        """Retrains `genotype` into `final_dir` under `time_limit` and keeps the network."""
        from nasax.engine.blocks import jit_for
        from nasax.loop.run import run
        from nasax.train.export import TrainedModel
        from nasax.train.task import Retrained, TrainTask

        self._model = self._jit = self.final_summary = None
        data = self._dataset("final", x, y, validation_data)
        config = self._config("final", data.name, time_limit)
        result = run(
            TrainTask(self.genotype),
            config,
            self.final_dir,
            data=data,
            overwrite=overwrite,
            programs=self._programs,
        )
        summary = self.final_summary = result.summary
        made: Retrained = result.made
        self._model = TrainedModel(
            config,
            made.genotype,
            made.dataset,
            made.trainer,
            result.state,
            made.epoch,
            summary["steps"],
            summary["test_accuracy"],
        )
        self._jit = jit_for(config.run.execution)
        return self

    def _say_retraining_stopped(self, limit: float | None, final_limit: float | None) -> None:
        steps, epochs = self.final_summary["steps"], self._model.epoch  # type: ignore[index]
        if final_limit == NO_TIME_LEFT:
            print(
                f"nasax: the search used all of the time limit ({limit:g} s), so the "
                f"retraining ran {steps} step(s) only; call final_fit(x, y) to retrain the "
                f"cell (final_epochs={self.final_epochs})"
            )
        else:
            planned = self.final_summary["epochs_planned"]  # type: ignore[index]
            fitted = f" (its lr and drop path annealed over {planned})" if planned else ""
            print(
                f"nasax: the retraining stopped at the time limit ({limit:g} s for search "
                f"and retraining) after {steps} steps, {epochs} of {self.final_epochs} epochs"
                f"{fitted}; final_fit(x, y) retrains for all of them"
            )

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """Loss and accuracy of the retrained network on (x, y)."""
        from nasax.loop.runloop import evaluate

        model = self._trained()
        trainer, state, batch_size = model.trainer, model.state, model.config.train.batch_size
        images = self._images(x, "x")
        labels = check_labels("test", y, len(images), "ImageClassifier y")
        label = None if self.quiet else "evaluate"
        return evaluate(
            self._jit(trainer.evaluate), state, images, labels, batch_size, progress=label
        )

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class indices of the retrained network for images x."""
        return np.argmax(self.predict_logits(x), axis=-1)

    def predict_logits(self, x: Any) -> np.ndarray:
        """Logits of the retrained network for images x, (N, num_classes)."""
        import jax

        from nasax.loop.data import eval_batches

        model = self._trained()
        trainer, state, batch_size = model.trainer, model.state, model.config.train.batch_size
        images = self._images(x, "x")

        @self._jit
        def logits_of(state: Any, image: jax.Array) -> jax.Array:
            net = trainer.module(state)
            return net(trainer.preprocess(image, state.rng, False), train=False)

        dummy = np.zeros(len(images), np.int32)
        out = [
            np.asarray(logits_of(state, b["image"]))[b["mask"]]
            for b in eval_batches(images, dummy, batch_size)
        ]
        return np.concatenate(out)

    def export(self, model_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Writes the retrained network as `nasax export` does; returns the folder."""
        from nasax.train.export import export_model

        model = self._trained()
        return export_model(model, model_dir, overwrite=overwrite, progress=not self.quiet)

    # ------------------------------------------------------------------ helpers

    def _images(self, x: Any, what: str) -> np.ndarray:
        images = check_images("train", x, f"ImageClassifier {what}")
        if self.image_shape is not None and images.shape[1:] != self.image_shape:
            raise DataError(
                f"ImageClassifier: {what} holds images of shape {images.shape[1:]}, but the "
                f"classifier was fitted on {self.image_shape}"
            )
        return images

    def _dataset(
        self, run: str, x: Any, y: Any, validation_data: tuple[Any, Any] | None
    ) -> Dataset:
        """The checked arrays as the dataset of the run `run` (`search` or `final`)."""
        x_train = self._images(x, "x")
        y_train = check_labels("train", y, len(x_train), "ImageClassifier y")
        if validation_data is None:
            order = np.random.default_rng([self.seed, 3]).permutation(len(x_train))
            cut = len(x_train) - max(1, round(self.validation_split * len(x_train)))
            fit_idx, held_idx = np.sort(order[:cut]), np.sort(order[cut:])
            x_test, y_test = x_train[held_idx], y_train[held_idx]
            x_train, y_train = x_train[fit_idx], y_train[fit_idx]
        else:
            x_val, y_val = validation_data
            x_test = self._images(x_val, "validation_data x")
            y_test = check_labels("test", y_val, len(x_test), "ImageClassifier validation y")
        if self.image_shape is None:
            self.image_shape = x_train.shape[1:]
            self.num_classes = int(max(y_train.max(), y_test.max())) + 1
        return dataset_from_arrays(
            f"{self._key}-{run}",
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            num_classes=self.num_classes,
        )

    def _refuse_earlier_runs(self) -> None:
        """RunDirError if a run directory `fit` writes holds an earlier run."""
        for run_dir in (self.search_dir, self.final_dir):
            if holds_run(run_dir):
                raise RunDirError(
                    f"ImageClassifier: {run_dir} holds an earlier run; pass overwrite=True "
                    "to replace it, or another directory or project_name"
                )

    def _config(self, run: str, source: str, time_limit: float | None = None) -> Config:
        """The config of the search (`run="search"`) or the retraining (`"final"`), each
        run stopping at its `time_limit` (None: none)."""
        side = max(self.image_shape[:2])  # type: ignore[index]
        sizes = SIZES[self.space]["small" if side <= 16 else "large"][run]
        data: dict[str, Any] = {
            "name": f"{self.project_dir.name}-{run}",
            "seed": self.seed,
            "data": {"name": source, "num_classes": self.num_classes},
            "model": {"space": self.space, **sizes},
            "run": {"progress": not self.quiet, "time_limit": time_limit},
        }
        if run == "search":
            data["search"] = {"strategy": self.strategy, "epochs": self.max_epochs}
            if self.budget is not None:  # priced at the network the retraining trains
                final = SIZES[self.space]["small" if side <= 16 else "large"]["final"]
                deploy = {k: final[k] for k in ("channels", "layers") if k in final}
                data["search"]["cost"] = {**self.budget, "deploy": deploy}
        else:
            data["train"] = {
                "epochs": self.final_epochs,
                "batch_size": 64,
                "drop_path": 0.1,
                "cutout": side // 2 if side <= 16 else 16,
                "auxiliary_weight": 0.4,
                **SIZES[self.space]["train"],
            }
            data["optim"] = {"weights": {"lr_min": 0.0}}
        data = apply_overrides(data, self.overrides)
        return validate_config(data, "ImageClassifier")

    def _trained(self) -> Any:
        if self._model is None:
            again = "" if self.genotype is None else ", or final_fit(x, y) to retrain its cell"
            raise NasaxError(f"no retrained network yet: call fit(x, y){again}")
        return self._model


__all__ = ["NO_TIME_LEFT", "SIZES", "FitTimes", "ImageClassifier"]
