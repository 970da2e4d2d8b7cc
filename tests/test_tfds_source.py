"""load_tfds on tiny array_record datasets prepared offline in a temp dir, without TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from nasax.core.errors import DataError
from nasax.loop.tfds_source import load_tfds

tfds = pytest.importorskip("tensorflow_datasets")

TRAIN = range(12)
TEST = range(100, 106)
HAS_IMAGE_DECODER = any(importlib.util.find_spec(m) for m in ("PIL", "cv2"))


def _png(pixels: np.ndarray) -> bytes:
    """Encode a (H, W, 1) uint8 array as a grayscale PNG (no PIL or TF needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.tobytes() for row in pixels[:, :, 0])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


class NasaxTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """8x8x1 raw uint8 images filled with the example index; label = index % 3."""

    VERSION = tfds.core.Version("1.0.0")

    def _image_feature(self) -> tfds.features.FeatureConnector:
        return tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8)

    def _encode(self, pixels: np.ndarray) -> np.ndarray | bytes:
        return pixels

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": self._image_feature(),
            "label": tfds.features.ClassLabel(num_classes=3),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TRAIN), "test": self._generate_examples(TEST)}

    def _generate_examples(self, indices: range):
        for i in indices:
            yield i, {"image": self._encode(np.full((8, 8, 1), i, np.uint8)), "label": i % 3}


class NasaxTinyImagesV2(NasaxTinyImages, skip_registration=True):
    """Same dataset name with a newer code version than the one prepared on disk."""

    name = "nasax_tiny_images"
    VERSION = tfds.core.Version("2.0.0")


class NasaxTinyPngImages(NasaxTinyImages, skip_registration=True):
    """Same content stored PNG-encoded through tfds.features.Image, like cifar10 and mnist."""

    def _image_feature(self) -> tfds.features.FeatureConnector:
        return tfds.features.Image(shape=(8, 8, 1))

    def _encode(self, pixels: np.ndarray) -> np.ndarray | bytes:
        return _png(pixels)


def _prepare(builder_cls: type[NasaxTinyImages], data_dir: Path) -> None:
    builder_cls(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    _prepare(NasaxTinyImages, data_dir)
    return data_dir


def _assert_split(x: np.ndarray, y: np.ndarray, indices: range) -> None:
    assert x.shape == (len(indices), 8, 8, 1) and x.dtype == np.uint8
    assert y.shape == (len(indices),) and y.dtype == np.int64
    values = x[:, 0, 0, 0].astype(np.int64)  # generation order is shuffled on disk
    assert sorted(values) == list(indices)
    np.testing.assert_array_equal(x, np.broadcast_to(values[:, None, None, None], x.shape))
    np.testing.assert_array_equal(y, values % 3)


@pytest.mark.parametrize("builder_code", [None, NasaxTinyImages, NasaxTinyImagesV2])
def test_load_tfds_reads_prepared_dataset(
    prepared_dir: Path, builder_code: type | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None: builder code unknown to tfds (read from dataset_info.json), like a copied folder.
    if builder_code is not None:
        monkeypatch.setattr(tfds, "builder", lambda name, data_dir: builder_code(data_dir=data_dir))
    data = load_tfds("nasax_tiny_images", data_dir=str(prepared_dir))
    _assert_split(data["x_train"], data["y_train"], TRAIN)
    _assert_split(data["x_test"], data["y_test"], TEST)
    assert data["num_classes"] == 3
    assert data["class_names"] == ["0", "1", "2"]


@pytest.mark.parametrize("name", ["mnist", "nasax_missing"])
def test_load_tfds_not_prepared_raises_without_download(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("load_tfds must never download")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(DataError, match="not prepared") as info:
        load_tfds(name, data_dir=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and f"tfds build {name}" in message and "\n" not in message
    assert not any(tmp_path.iterdir())


def test_load_tfds_rejects_non_array_record(prepared_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(prepared_dir / "nasax_tiny_images", tmp_path / "nasax_tiny_images")
    info_path = tmp_path / "nasax_tiny_images" / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "fileFormat": "tfrecord"}))
    with pytest.raises(DataError, match="needs file_format=array_record"):
        load_tfds("nasax_tiny_images", data_dir=str(tmp_path))


def test_load_tfds_decodes_png_images(tmp_path: Path) -> None:
    _prepare(NasaxTinyPngImages, tmp_path)
    if not HAS_IMAGE_DECODER:
        with pytest.raises(DataError, match="pillow or opencv-python"):
            load_tfds("nasax_tiny_png_images", data_dir=str(tmp_path))
        return
    data = load_tfds("nasax_tiny_png_images", data_dir=str(tmp_path))
    _assert_split(data["x_train"], data["y_train"], TRAIN)
    _assert_split(data["x_test"], data["y_test"], TEST)
