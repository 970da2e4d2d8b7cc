"""A trained network as a self-contained folder: genotype, config, weights, and StableHLO.

`nasax export RUN_DIR --out OUT_DIR` writes

    model.json         what the network is (genotype space, sizes, input shape, normalisation)
    genotype.json      the cell
    config.yaml        the config it was trained with
    params/            weights and BatchNorm statistics (orbax)
    inference.jax      `jax.export` of images -> logits, weights included; runs with plain
                       JAX (`jax.export.deserialize(data).call(images)`) and no nasax code

A language-model retraining (a run with a vocab.json) exports as a folder of the same
shape, with `kind: language_model` in model.json, `vocab.json` (its tokens), the weights
it evaluates with (NT-ASGD's average once on) under params/, and an inference.jax of
(tokens (batch, time) int32, hidden (batch, hidden) float32) -> (logits (batch, time,
vocab), hidden), batch and time symbolic: `call(tokens, hidden)` at any sizes; zeros
start a text.

The folder is built next to OUT_DIR and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
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
from nasax.supernet.rnn_network import Dropouts, RNNModel
from nasax.supernet.skeletons import skeleton_of
from nasax.train.evaluate import load_train_run, reading_run
from nasax.train.language import LanguageRunFiles, is_language_run, load_language_run
from nasax.train.lm_trainer import Vocabulary
from nasax.train.trainer import Trainer, TrainState

FORMAT = "nasax-model"
VERSION = 1
EXPORT_PLATFORMS = ("cpu", "cuda", "tpu")
"""Platforms the StableHLO artifact is lowered for (it runs on any of them)."""
LANGUAGE_MODEL = "language_model"
"""model.json's `kind` of an exported language model (an image network has none)."""


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


def export_language_inference(module: RNNModel) -> bytes:
    """Serialises (tokens (batch, time) int32, hidden (batch, hidden) float32) -> (logits
    (batch, time, vocab), last hidden) with the weights inside; batch and time are
    symbolic, so one artifact serves any batch and window (a prompt, then one token at a
    time)."""
    graphdef, state = nnx.split(module)

    def predict(tokens: jax.Array, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = nnx.merge(graphdef, state)(tokens, hidden)
        return out.logits, out.hidden

    batch, time = jax.export.symbolic_shape("batch, time")
    specs = (
        jax.ShapeDtypeStruct((batch, time), jnp.int32),
        jax.ShapeDtypeStruct((batch, module.hidden_size), jnp.float32),
    )
    exported = jax.export.export(jax.jit(predict), platforms=EXPORT_PLATFORMS)(*specs)
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
        if is_language_run(run_dir):
            files = load_language_run(run_dir)
            bar.advance(1, "writing the weights")
            return _write_language(files, _test_figures(run_dir), out_dir, bar)
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
    """The folder of an image network, built beside `out_dir` and renamed into place."""
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

    def fill(tmp: Path) -> None:
        atomic_write_json(tmp / "model.json", manifest)
        model.genotype.save(tmp / "genotype.json")
        atomic_write_text(tmp / "config.yaml", config.to_yaml())
        _save_weights(tmp / "params", {"params": state.params, "batch_stats": state.batch_stats})
        bar.advance(1, f"lowering to StableHLO for {', '.join(EXPORT_PLATFORMS)}")
        blob = export_inference(module, dataset.image_shape, dataset.mean, dataset.std)
        atomic_write_bytes(tmp / "inference.jax", blob)

    return _build_folder(out_dir, bar, fill)


def _test_figures(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The test figures of a finished run's summary.json (none before it finishes)."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    keys = ("test_loss", "test_accuracy", "test_ppl", "test_bpc", "test_split")
    return {k: summary.get(k) for k in keys}


def _write_language(
    files: LanguageRunFiles, test: dict[str, Any], out_dir: Path, bar: TaskProgress
) -> Path:
    """The folder of a language model, built beside `out_dir` and renamed into place."""
    config, text, meta = files.config, files.config.text, files.meta
    module = files.module()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": LANGUAGE_MODEL,
        "vocab_size": len(files.vocab),
        "level": files.vocab.level,
        "embed_size": text.embed_size,
        "hidden_size": text.hidden_size,
        "tie_weights": text.tie_weights,
        "dropouts": text.dropout.model_dump(),
        "dataset": config.data.name,
        "epoch": meta["epoch"],
        "step": meta["step"],
        "averaged": int(jax.device_get(files.state.averaging.count)) > 0,
        **test,
        "inference": "inference.jax: (tokens (batch, time) int32, hidden (batch, hidden) "
        "float32) -> (logits (batch, time, vocab), hidden); batch and time symbolic; zeros "
        "start a text",
    }

    def fill(tmp: Path) -> None:
        atomic_write_json(tmp / "model.json", manifest)
        files.genotype.save(tmp / "genotype.json")
        files.vocab.save(tmp / "vocab.json")
        atomic_write_text(tmp / "config.yaml", config.to_yaml())
        _save_weights(tmp / "params", {"params": nnx.state(module, nnx.Param)})
        bar.advance(1, f"lowering to StableHLO for {', '.join(EXPORT_PLATFORMS)}")
        atomic_write_bytes(tmp / "inference.jax", export_language_inference(module))

    return _build_folder(out_dir, bar, fill)


def _save_weights(path: Path, weights: dict[str, Any]) -> None:
    with orbax_writes(path, "write the weights to"):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, flatten_state(jax.device_get(weights)))
        checkpointer.wait_until_finished()


def _build_folder(out_dir: Path, bar: TaskProgress, fill: Callable[[Path], None]) -> Path:
    """A folder `fill` writes into a temporary one beside `out_dir`, renamed into place."""
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with storage_errors(tmp, "create"):
            tmp.mkdir(parents=True)
        fill(tmp)
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
    `read_manifest`, or `preprocess_for` for a ready function. A language model's folder
    gives its `RNNModel` (tokens and hidden state in; `read_vocabulary` for the tokens).
    """
    model_dir = Path(model_dir).absolute()
    manifest = read_manifest(model_dir)
    genotype = Genotype.load(model_dir / "genotype.json")
    if manifest.get("kind") == LANGUAGE_MODEL:
        return _load_language_model(model_dir, manifest, genotype)
    kwargs = _network_kwargs(manifest)
    network = skeleton_of(genotype.resolve_space()).discrete_network
    abstract = nnx.eval_shape(lambda: network(genotype, **kwargs, rngs=nnx.Rngs(0)))
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    like = {"params": params, "batch_stats": stats}
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flatten_state(like).items()}
    restored = ocp.StandardCheckpointer().restore(model_dir / "params", target)
    weights = unflatten_state(dict(restored), like)
    return nnx.merge(graphdef, weights["params"], weights["batch_stats"])


def _load_language_model(model_dir: Path, manifest: dict[str, Any], genotype: Genotype) -> RNNModel:
    """The `RNNModel` of an exported language model with its weights."""

    def network() -> RNNModel:
        return RNNModel(
            genotype,
            vocab_size=manifest["vocab_size"],
            embed_size=manifest["embed_size"],
            hidden_size=manifest["hidden_size"],
            dropouts=Dropouts(**manifest["dropouts"]),
            tie_weights=manifest["tie_weights"],
            rngs=nnx.Rngs(0),
        )

    graphdef, params = nnx.split(nnx.eval_shape(network), nnx.Param)
    like = {"params": params}
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flatten_state(like).items()}
    restored = ocp.StandardCheckpointer().restore(model_dir / "params", target)
    return nnx.merge(graphdef, unflatten_state(dict(restored), like)["params"])


def read_vocabulary(model_dir: str | os.PathLike) -> Vocabulary:
    """The vocabulary of an exported language model (its vocab.json)."""
    return Vocabulary.load(Path(model_dir) / "vocab.json")


def preprocess_for(model_dir: str | os.PathLike) -> Any:
    """images -> normalised float32 images, as the exported network expects."""
    manifest = read_manifest(model_dir)
    mean, std = np.array(manifest["mean"]), np.array(manifest["std"])
    return lambda images: normalize(jnp.asarray(images), mean, std)


__all__ = [
    "TrainedModel",
    "export_inference",
    "export_language_inference",
    "export_model",
    "export_run",
    "load_model",
    "load_trained",
    "preprocess_for",
    "read_manifest",
    "read_vocabulary",
]
