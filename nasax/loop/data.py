"""Datasets (digits, npz, TFDS), the search split, batching, and on-device preprocessing."""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nasax.core.errors import DataError
from nasax.core.registry import Registry

Batch = dict[str, Any]
"""{"image": (B, H, W, C) uint8 or float32, "label": (B,) int32}."""


@dataclass(frozen=True)
class Dataset:
    """An image-classification dataset held in host memory, NHWC.

    `mean` and `std` are per-channel statistics of the training images in their stored
    units, used to normalise on the device.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def signature(self) -> list[Any]:
        """What compiled programs depend on in the data: shapes, dtype, classes, statistics."""
        return [
            list(self.image_shape),
            str(self.x_train.dtype),
            self.num_classes,
            np.asarray(self.mean).tolist(),
            np.asarray(self.std).tolist(),
        ]


SOURCES: Registry[Callable[[str, str | None], dict[str, Any]]] = Registry("data source")
"""Source prefix (`digits`, `npz`, `tfds`) -> loader(argument, data_dir) -> raw arrays."""


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (pixel values 0-16) and labels, read from the CSV it
    bundles without importing `sklearn.datasets` (0.8 s of a warm start's 10 s); the
    loader itself where that file is not found."""
    spec = importlib.util.find_spec("sklearn")
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent
    csv = None if path is None else path / "datasets" / "data" / "digits.csv.gz"
    if csv is not None and csv.is_file():
        data = np.loadtxt(csv, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


@SOURCES.decorator("digits")
def _load_digits(arg: str, data_dir: str | None) -> dict[str, Any]:
    """scikit-learn's bundled 8x8 digits, split 80/20 into train/test by a fixed shuffle."""
    pixels, labels = digits_arrays()
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    n_train = int(0.8 * len(images))
    train, test = order[:n_train], order[n_train:]
    return {
        "x_train": images[train],
        "y_train": labels[train],
        "x_test": images[test],
        "y_test": labels[test],
        "num_classes": 10,
    }


@SOURCES.decorator("npz")
def _load_npz(arg: str, data_dir: str | None) -> dict[str, Any]:
    """Arrays x_train, y_train, x_test, y_test from an .npz file (path relative to cwd)."""
    path = Path(arg).expanduser()
    if not arg:
        raise DataError("data.name 'npz:' needs a path, e.g. npz:data/mnist.npz")
    if not path.is_file():
        raise DataError(f"npz dataset {str(path)!r} does not exist (data.name = 'npz:{arg}')")
    try:
        with path.open("rb") as f:
            archive = zipfile.is_zipfile(f)
    except OSError as e:
        raise DataError(f"cannot read npz dataset {str(path)!r}: {e.strerror}") from None
    if not archive:  # numpy would take it for a pickle and say so
        what = "an empty file" if path.stat().st_size == 0 else "not an npz archive"
        raise DataError(
            f"npz dataset {str(path)!r} is {what}; write one with numpy.savez(path, "
            "x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile/pickle errors: say what the file should hold
        raise DataError(f"cannot read {str(path)!r} as .npz: {e}") from None
    if not arrays:
        raise DataError(
            f"npz dataset {str(path)!r} is an empty archive; an npz dataset holds x_train, "
            "y_train, x_test, y_test"
        )
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(
            f"{path}: missing arrays {missing}; an npz dataset holds x_train, y_train, "
            f"x_test, y_test (found {sorted(arrays)})"
        )
    if "class_names" in arrays:
        arrays["num_classes"] = len(arrays.pop("class_names"))
    return arrays


@SOURCES.decorator("tfds")
def _load_tfds(arg: str, data_dir: str | None) -> dict[str, Any]:
    """A prepared TFDS dataset read through `tfds.data_source` (array_record)."""
    from nasax.loop.tfds_source import load_tfds

    if not arg:
        raise DataError("data.name 'tfds:' needs a dataset name, e.g. tfds:cifar10")
    return load_tfds(arg, data_dir)


def _text_source(prefix: str) -> Callable[[str, str | None], dict[str, Any]]:
    """`text:PATH` and `text-words:DIR` name corpora for language models, not images."""

    def load(arg: str, data_dir: str | None) -> dict[str, Any]:
        raise DataError(
            f"data.name '{prefix}:{arg}' is a text corpus for language models "
            "(nasax.loop.text.load_corpus); image search and training read digits, "
            "npz:PATH or tfds:NAME"
        )

    return load


for _prefix in ("text", "text-words"):
    SOURCES.register(_prefix, _text_source(_prefix))


def dataset_from_arrays(name: str, **arrays: Any) -> Dataset:
    """A dataset of numpy arrays x_train, y_train, x_test, y_test (and optionally
    num_classes), checked like any other, for `run(..., data=...)`; its name is the
    `data.name` a config records for it (`arrays:NAME`)."""
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing or not name:
        raise DataError(f"dataset_from_arrays needs a name and {', '.join(missing)}")
    return _checked(f"arrays:{name}", arrays, None)


@SOURCES.decorator("arrays")
def _load_arrays(arg: str, data_dir: str | None) -> dict[str, Any]:
    """`arrays:NAME` records arrays a caller passed to a run in memory; no process can load
    them by that name."""
    raise DataError(
        f"data.name 'arrays:{arg}' names numpy arrays that a Python process passed to its "
        "run in memory (nasax.ImageClassifier); save them with numpy.savez and use npz:PATH"
    )


def parse_source(name: str) -> tuple[str, str]:
    """Splits `tfds:cifar10` into ('tfds', 'cifar10'); `digits` has no argument."""
    prefix, _, arg = name.partition(":")
    if prefix not in SOURCES:
        raise DataError(
            f"data.name: {SOURCES.unknown_message(prefix)} "
            "(use digits, npz:PATH, tfds:NAME, arrays:NAME)"
        )
    return prefix, arg


def load_dataset(name: str, data_dir: str | None = None, num_classes: int | None = None) -> Dataset:
    """Loads, checks and describes a dataset by its `data.name`."""
    prefix, arg = parse_source(name)
    raw = SOURCES.get(prefix)(arg, data_dir)
    return _checked(name, raw, num_classes)


def check_images(split: str, x: Any, name: str) -> np.ndarray:
    """Images as NHWC uint8 or float32, or a DataError saying what shape and dtype to give."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{name}: x_{split} must be (N, H, W) grayscale or (N, H, W, 1|3) images, "
            f"got shape {x.shape}"
        )
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{name}: x_{split} must be uint8 or float images, got {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{name}: x_{split} contains NaN or infinite values")
    return x


def check_labels(split: str, y: Any, n: int, name: str) -> np.ndarray:
    """`n` integer labels as int32, or a DataError saying what to give."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{name}: y_{split} must be ({n},) labels, got shape {y.shape}")
    whole = np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))
    if not (np.issubdtype(y.dtype, np.integer) or whole):
        raise DataError(f"{name}: y_{split} must hold integer class labels, got {y.dtype}")
    return y.astype(np.int32)


def _checked(name: str, raw: dict[str, Any], num_classes: int | None) -> Dataset:
    x_train, x_test = (
        check_images("train", raw["x_train"], name),
        check_images("test", raw["x_test"], name),
    )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: train images are {x_train.shape[1:]} but test images {x_test.shape[1:]}"
        )
    if x_train.dtype != x_test.dtype:
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    y_train = check_labels("train", raw["y_train"], len(x_train), name)
    y_test = check_labels("test", raw["y_test"], len(x_test), name)
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"{name}: the train and test splits must not be empty")
    declared = raw.get("num_classes")
    declared = int(declared) if declared is not None else None
    if num_classes is not None and declared is not None and num_classes != declared:
        raise DataError(
            f"data.num_classes is {num_classes} but dataset {name!r} has {declared} classes"
        )
    limit = num_classes or declared
    low = int(min(y_train.min(), y_test.min()))
    high = int(max(y_train.max(), y_test.max()))
    if low < 0 or (limit is not None and high >= limit):
        allowed = f"0..{limit - 1}" if limit else "0 or more"
        raise DataError(f"{name}: labels out of range: found {low}..{high}, allowed {allowed}")
    classes = limit or high + 1
    if classes < 2:
        raise DataError(f"{name}: a classification dataset needs at least 2 classes")
    pixels = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
    mean, std = pixels.mean(0), pixels.std(0)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=classes,
        mean=mean.astype(np.float32),
        std=np.maximum(std, 1e-6).astype(np.float32),
    )


# ------------------------------------------------------------------ splits and batches


def search_split(n: int, train_portion: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index sets for the weight step and the architecture step (DARTS protocol)."""
    order = np.random.default_rng([seed, 1]).permutation(n)
    cut = round(train_portion * n)
    return order[:cut], order[cut:]


def epoch_order(indices: np.ndarray, seed: int, epoch: int, stream: int) -> np.ndarray:
    """A shuffle of `indices` fixed by (seed, epoch, stream), so a resumed run sees the same."""
    return indices[np.random.default_rng([seed, epoch, stream, 2]).permutation(len(indices))]


def batches(
    x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int, start: int = 0
) -> Iterator[Batch]:
    """Full batches in `order`, from batch number `start`; the remainder is dropped."""
    for b in range(start, len(order) // batch_size):
        idx = np.sort(order[b * batch_size : (b + 1) * batch_size])
        yield {"image": x[idx], "label": y[idx]}


def eval_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, order: np.ndarray | None = None
) -> Iterator[Batch]:
    """Every example once (in `order`, default as stored), padded to full batches; `mask`
    marks the real ones.

    The padding repeats the batch's real examples, so a network that normalises with the
    batch's statistics (single-path supernets) sees the same distribution in the last batch.
    """
    n = len(x)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if order is None:
            image, label = x[start:stop], y[start:stop]
        else:
            idx = np.sort(order[start:stop])
            image, label = x[idx], y[idx]
        if stop - start < batch_size:
            repeat = np.resize(np.arange(stop - start), batch_size)
            image, label = image[repeat], label[repeat]
        mask = np.arange(batch_size) < stop - start
        yield {"image": image, "label": label, "mask": mask}


def shuffled_order(n: int) -> np.ndarray:
    """A fixed shuffle of n examples for evaluation: sums do not depend on the order, and
    a network normalising with each batch's statistics sees batches of mixed classes
    even when a data set is stored class by class (the shared CIFAR-10 copy is)."""
    return np.random.default_rng(0x5EED).permutation(n)


def check_batch_size(dataset: Dataset, batch_size: int, n_examples: int, what: str) -> None:
    if n_examples < batch_size:
        raise DataError(
            f"{dataset.name}: the {what} has {n_examples} examples, fewer than one batch of "
            f"{batch_size}; lower search.batch_size"
        )


# ------------------------------------------------------------------ on-device preprocessing


def normalize(images: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
    """Float32 images with zero mean and unit variance per channel."""
    return (images.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)


def random_crop(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Zero-pads each image by `padding` and crops it back at a random offset."""
    if padding == 0:
        return images
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def make_preprocess(
    mean: np.ndarray, std: np.ndarray, crop_padding: int = 0, flip: bool = False
) -> Callable[[jax.Array, jax.Array, bool], jax.Array]:
    """Returns preprocess(images, rng, train): augment when training, then normalise."""

    def preprocess(images: jax.Array, rng: jax.Array, train: bool) -> jax.Array:
        x = images
        if train:  # augment raw pixels, so crop padding is black as in the reference
            crop_rng, flip_rng = jax.random.split(rng)
            x = random_crop(crop_rng, x, crop_padding)
            if flip:
                x = random_flip(flip_rng, x)
        return normalize(x, mean, std)

    return preprocess


def batch_images(
    preprocess: Callable[[jax.Array, jax.Array, bool], jax.Array],
) -> Callable[[Batch, jax.Array, bool], jax.Array]:
    """A preprocess of images as the search reads it: from a whole batch (whose network
    input is its `image`)."""

    def of_batch(batch: Batch, rng: jax.Array, train: bool) -> jax.Array:
        return preprocess(batch["image"], rng, train)

    return of_batch
