"""Read a prepared TFDS image-classification dataset into NumPy arrays, offline and without TF."""

from __future__ import annotations

from typing import Any

import numpy as np

from nasax.core.errors import DataError

_CHUNK = 8192  # examples deserialized per bulk read


def load_tfds(name: str, data_dir: str | None = None) -> dict[str, np.ndarray | int | list[str]]:
    """Load a prepared TFDS image-classification dataset via its array_record data source.

    Never downloads and needs no TensorFlow: the dataset must already be prepared under data_dir.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(
            f"cannot load TFDS dataset {name!r}: tensorflow-datasets is not installed "
            f"({_one_line(err)}); install it with `pip install tensorflow-datasets array-record`"
        ) from err

    builder = _prepared_builder(tfds, name, data_dir)
    info = builder.info
    if tfds.core.FileFormat.ARRAY_RECORD not in info.available_file_formats():
        formats = sorted(f.value for f in info.available_file_formats())
        raise DataError(
            f"dataset {name!r} in {builder.data_dir} is stored as {formats}, but tfds.data_source "
            f"needs file_format=array_record: rebuild it with `tfds build {name} --data_dir "
            f"{builder.data_dir_root} --file_format array_record`"
        )
    features = (
        dict(info.features.items()) if isinstance(info.features, tfds.features.FeaturesDict) else {}
    )
    image_key = _image_key(tfds, features)
    label_key = _label_key(tfds, features)
    if image_key is None or label_key is None:
        missing = "image feature (Image or 2-D/3-D Tensor)" if image_key is None else "ClassLabel"
        raise DataError(f"dataset {name!r} has no {missing}; its features are {sorted(features)}")
    label = features[label_key]
    if label.num_classes is None:
        raise DataError(
            f"dataset {name!r}: label feature {label_key!r} does not define num_classes"
        )
    train_split, test_split = _pick_splits(name, list(info.splits))

    try:
        train, test = builder.as_data_source(
            split=[train_split, test_split], file_format="array_record"
        )
        x_train, y_train = _read_split(name, train, image_key, label_key)
        x_test, y_test = _read_split(name, test, image_key, label_key)
    except ImportError as err:
        raise DataError(
            f"cannot read dataset {name!r}: a reader package is missing ({_one_line(err)}); "
            "install array-record, plus pillow or opencv-python for datasets with encoded "
            "images (e.g. cifar10)"
        ) from err
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "num_classes": int(label.num_classes),
        "class_names": list(label.names),
    }


def _prepared_builder(tfds: Any, name: str, data_dir: str | None) -> Any:
    """Return a builder for the prepared copy of `name` in data_dir, or raise DataError."""
    searched = data_dir or tfds.core.constants.DATA_DIR
    if tfds.core.naming.parse_builder_name_kwargs(name)[0].namespace:
        raise DataError(
            f"dataset {name!r}: namespaced (community or hub) datasets are not supported"
        )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
        # Known builder code, but another version on disk (e.g. a folder from another tfds).
        return tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in data_dir {searched}; datasets cannot be "
            f"downloaded at run time: prepare it with `tfds build {name} --data_dir {searched} "
            "--file_format array_record` on a machine with network access, or copy its prepared "
            f"folder into {searched}"
        ) from None


def _image_key(tfds: Any, features: dict[str, Any]) -> str | None:
    """Return `image` if it holds images, else the first image or rank-2/3 tensor feature."""
    keys = [
        key
        for key, feature in features.items()
        if isinstance(feature, tfds.features.Image)
        or (type(feature) is tfds.features.Tensor and len(feature.shape) in (2, 3))
    ]
    return "image" if "image" in keys else next(iter(keys), None)


def _label_key(tfds: Any, features: dict[str, Any]) -> str | None:
    """Return `label` if it is a ClassLabel, else the first ClassLabel feature."""
    keys = [
        key for key, feature in features.items() if isinstance(feature, tfds.features.ClassLabel)
    ]
    return "label" if "label" in keys else next(iter(keys), None)


def _pick_splits(name: str, splits: list[str]) -> tuple[str, str]:
    """Return the (train, test) split names: test falls back to validation."""
    test = next((split for split in ("test", "validation") if split in splits), None)
    if "train" not in splits or test is None:
        raise DataError(
            f"dataset {name!r} has splits {sorted(splits)}; nasax needs a 'train' split "
            "and a 'test' (or 'validation') split"
        )
    return "train", test


def _read_split(
    name: str, source: Any, image_key: str, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read every example of a data source in bulk chunks into (images, int64 labels)."""
    n = len(source)
    if n == 0:
        raise DataError(f"dataset {name!r}: split {source.split!r} is empty")
    first = np.asarray(source[0][image_key])
    images = np.empty((n, *first.shape), dtype=first.dtype)
    labels = np.empty(n, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        examples = source.__getitems__(range(start, stop))
        try:
            images[start:stop] = np.stack([example[image_key] for example in examples])
        except ValueError:
            raise DataError(
                f"dataset {name!r}: images in split {source.split!r} do not all have shape "
                f"{first.shape}; nasax needs fixed-size images"
            ) from None
        labels[start:stop] = [example[label_key] for example in examples]
    return images, labels


def _one_line(err: BaseException) -> str:
    """Collapse an exception message onto one line."""
    return " ".join(str(err).split())
