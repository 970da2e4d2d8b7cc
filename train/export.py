"""A trained network as a self-contained folder: genotype, config, weights, and StableHLO.

`nasax export RUN_DIR OUT_DIR` writes

    model.json         what the network is (genotype space, sizes, input shape, normalisation)
    genotype.json      the cell
    config.yaml        the config it was trained with
    params/            weights and BatchNorm statistics (orbax)
    inference.jax      `jax.export` of images -> logits, weights included; runs with plain
                       JAX (`jax.export.deserialize(data).call(images)`) and no nasax code

The folder is built next to OUT_DIR and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from nasax.core.checkpoint import flatten_state, orbax_writes, unflatten_state
from nasax.core.config import Config
from nasax.core.errors import RunDirError, StorageError
from nasax.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from nasax.core.storage import storage_errors
from nasax.loop.data import Dataset, normalize
from nasax.loop.progress import TaskProgress
from nasax.supernet.genotypes import Genotype
from nasax.supernet.skeletons import skeleton_of
from nasax.train.evaluate import load_train_run, reading_run
from nasax.train.trainer import Trainer, TrainState

FORMAT = "nasax-model"
VERSION = 1
EXPORT_PLATFORMS = ("cpu", "cuda", "tpu")
"""Platforms the StableHLO artifact is lowered for (it runs on any of them)."""


def _network_kwargs(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = ("num_classes", "channels", "layers", "in_channels", "stem_multiplier", "auxiliary")
    return {k: manifest[k] for k in keys}


def export_inference(
    module: nnx.Module, image_shape: tuple[int, ...], mean: np.ndarray, std: np.ndarray
) -> bytes:
    """Serialises raw images (float32, any batch size) -> logits with the weights inside."""
    graphdef, state = nnx.split(module)

    def predict(images: jax.Array) -> jax.Array:
        net = nnx.merge(graphdef, state)
        return net(normalize(images, mean, std), train=False)

    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    exported = jax.export.export(jax.jit(predict), platforms=EXPORT_PLATFORMS)(spec)
    return bytes(exported.serialize())


class TrainedModel(NamedTuple):
    """What an export writes: a retrained network's config, cell, data and state, and how
    far it trained. `load_trained` reads one from a run directory; a caller that holds
    the retraining in memory (`ImageClassifier`) builds it directly."""

    config: Config
    genotype: Genotype
    dataset: Dataset
    trainer: Trainer
    state: TrainState
    epoch: int
    step: int
    test_accuracy: float | None


def load_trained(run_dir: str | os.PathLike) -> TrainedModel:
    """The latest checkpoint of a retraining run, with its test accuracy if it finished."""
    config, genotype, dataset, trainer, state, meta = load_train_run(run_dir)
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    accuracy = summary.get("test_accuracy")
    return TrainedModel(
        config, genotype, dataset, trainer, state, meta["epoch"], meta["step"], accuracy
    )


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Writes the latest checkpoint of a retraining run as a self-contained model folder;
    `progress` shows a bar over its stages (restore, weights, StableHLO, rename).

    Raises:
        RunDirBusy: the run is still running.
        StorageError: the disk refused the folder; nothing of it is left behind.
    """
    out_dir = _check_out_dir(out_dir, overwrite)
    with (
        reading_run(run_dir),
        TaskProgress(4, enabled=progress, label="export", unit="stages") as bar,
    ):
        bar.advance(0, "restoring the checkpoint")
        model = load_trained(run_dir)
        bar.advance(1, "writing the weights")
        return _write(model, out_dir, bar)


def export_model(
    model: TrainedModel,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Writes a retrained network held in memory as `export_run` writes a run's."""
    out_dir = _check_out_dir(out_dir, overwrite)
    with TaskProgress(3, enabled=progress, label="export", unit="stages") as bar:
        bar.advance(0, "writing the weights")
        return _write(model, out_dir, bar)


def _check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise RunDirError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    return out_dir


def _write(model: TrainedModel, out_dir: Path, bar: TaskProgress) -> Path:
    """The folder, built beside `out_dir` and renamed into place."""
    config, dataset, state = model.config, model.dataset, model.state
    module = model.trainer.module(state)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_classes": dataset.num_classes,
        "channels": config.model.channels,
        "layers": config.model.layers,
        "in_channels": dataset.image_shape[-1],
        "stem_multiplier": config.model.stem_multiplier,
        "auxiliary": module.auxiliary is not None,
        "image_shape": list(dataset.image_shape),
        "mean": [float(v) for v in dataset.mean],
        "std": [float(v) for v in dataset.std],
        "dataset": dataset.name,
        "epoch": model.epoch,
        "step": model.step,
        "test_accuracy": model.test_accuracy,
        "inference": "inference.jax: raw float32 NHWC images in the data set's units -> logits",
    }
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with storage_errors(tmp, "create"):
            tmp.mkdir(parents=True)
        atomic_write_json(tmp / "model.json", manifest)
        model.genotype.save(tmp / "genotype.json")
        atomic_write_text(tmp / "config.yaml", config.to_yaml())
        weights = {"params": state.params, "batch_stats": state.batch_stats}
        with orbax_writes(tmp / "params", "write the weights to"):
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(tmp / "params", flatten_state(jax.device_get(weights)))
            checkpointer.wait_until_finished()
        bar.advance(1, f"lowering to StableHLO for {', '.join(EXPORT_PLATFORMS)}")
        blob = export_inference(module, dataset.image_shape, dataset.mean, dataset.std)
        atomic_write_bytes(tmp / "inference.jax", blob)
        bar.advance(1, "moving into place")
        with storage_errors(out_dir, "move the exported model to"):
            if out_dir.exists():
                old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
                out_dir.rename(old)
                tmp.rename(out_dir)
                shutil.rmtree(old)
            else:
                tmp.rename(out_dir)
    except StorageError as e:  # name the folder asked for, not its partial copy
        raise StorageError(out_dir, "write the exported model to", e.errno) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bar.advance(1, "done")
    return out_dir


def read_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The model.json of an exported folder (sizes, input shape, normalisation)."""
    path = Path(model_dir) / "model.json"
    if not path.is_file():
        raise RunDirError(f"{model_dir} is not an exported nasax model (no model.json)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise RunDirError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    return manifest


def load_model(model_dir: str | os.PathLike) -> nnx.Module:
    """The network of an exported folder with its trained weights (eval with `train=False`):
    a `DiscreteNetwork`, or the discrete network of the genotype space's skeleton.

    It takes images normalised with the folder's `model.json` mean and std; see
    `read_manifest`, or `preprocess_for` for a ready function.
    """
    model_dir = Path(model_dir).absolute()
    manifest = read_manifest(model_dir)
    genotype = Genotype.load(model_dir / "genotype.json")
    kwargs = _network_kwargs(manifest)
    network = skeleton_of(genotype.resolve_space()).discrete_network
    abstract = nnx.eval_shape(lambda: network(genotype, **kwargs, rngs=nnx.Rngs(0)))
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    like = {"params": params, "batch_stats": stats}
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flatten_state(like).items()}
    restored = ocp.StandardCheckpointer().restore(model_dir / "params", target)
    weights = unflatten_state(dict(restored), like)
    return nnx.merge(graphdef, weights["params"], weights["batch_stats"])


def preprocess_for(model_dir: str | os.PathLike) -> Any:
    """images -> normalised float32 images, as the exported network expects."""
    manifest = read_manifest(model_dir)
    mean, std = np.array(manifest["mean"]), np.array(manifest["std"])
    return lambda images: normalize(jnp.asarray(images), mean, std)


__all__ = [
    "TrainedModel",
    "export_inference",
    "export_model",
    "export_run",
    "load_model",
    "load_trained",
    "preprocess_for",
    "read_manifest",
]
