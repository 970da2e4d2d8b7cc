"""Datasets, checks on malformed ones, the search split and on-device augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nasax.core.errors import DataError
from nasax.loop.data import (
    batches,
    eval_batches,
    load_dataset,
    make_preprocess,
    random_crop,
    random_flip,
    search_split,
)


def test_digits_loads_as_uint8_nhwc_with_a_fixed_split():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert np.array_equal(load_dataset("digits").y_test, ds.y_test)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_grayscale_float_and_rgb_uint8(tmp_path):
    rng = np.random.default_rng(0)
    gray = write_npz(
        tmp_path / "g.npz",
        x_train=rng.random((20, 5, 5)),
        y_train=np.arange(20) % 3,
        x_test=rng.random((6, 5, 5)),
        y_test=np.arange(6) % 3,
    )
    ds = load_dataset(gray)
    assert ds.x_train.shape == (20, 5, 5, 1) and ds.x_train.dtype == np.float32
    assert ds.num_classes == 3
    rgb = write_npz(
        tmp_path / "c.npz",
        x_train=rng.integers(0, 255, (10, 4, 4, 3), dtype=np.uint8),
        y_train=np.arange(10) % 2,
        x_test=rng.integers(0, 255, (4, 4, 4, 3), dtype=np.uint8),
        y_test=np.arange(4) % 2,
    )
    ds = load_dataset(rgb)
    assert ds.image_shape == (4, 4, 3) and ds.mean.shape == (3,) and ds.std.shape == (3,)


def test_missing_npz_file_gives_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset(f"npz:{tmp_path}/nothing.npz")
    assert "nothing.npz" in str(info.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"x_train,y_train\n1,2\n", "is not an npz archive"),
        (np.lib.format.MAGIC_PREFIX + b"\x01\x00", "is not an npz archive"),  # an .npy
        (b"", "is an empty file"),
    ],
)
def test_a_file_that_is_not_an_npz_archive_says_so(tmp_path, content, fragment):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=fragment) as info:
        load_dataset(f"npz:{path}")
    assert "numpy.savez" in str(info.value) and "pickle" not in str(info.value)


def test_an_empty_npz_archive_says_so(tmp_path):
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError, match="is an empty archive; an npz dataset holds x_train"):
        load_dataset(f"npz:{tmp_path / 'empty.npz'}")


def test_npz_with_missing_arrays_names_them(tmp_path):
    name = write_npz(tmp_path / "m.npz", x_train=np.zeros((4, 3, 3)), y_train=np.zeros(4))
    with pytest.raises(DataError, match=r"missing arrays \['x_test', 'y_test'\]"):
        load_dataset(name)


@pytest.mark.parametrize(("labels", "num_classes"), [([0, 1, -1, 2], None), ([0, 1, 5, 2], 3)])
def test_labels_out_of_range_are_refused(tmp_path, labels, num_classes):
    name = write_npz(
        tmp_path / "l.npz",
        x_train=np.zeros((4, 3, 3)),
        y_train=np.array(labels),
        x_test=np.zeros((2, 3, 3)),
        y_test=np.array([0, 1]),
    )
    with pytest.raises(DataError, match="labels out of range"):
        load_dataset(name, num_classes=num_classes)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x_train": np.zeros((4, 3)), "y_train": np.zeros(4)}, "x_train must be"),
        ({"x_train": np.zeros((4, 3, 3)), "y_train": np.zeros(5)}, "y_train must be (4,)"),
        ({"x_train": np.zeros((4, 3, 3)), "y_train": np.full(4, 0.5)}, "integer class labels"),
        ({"x_train": np.zeros((4, 3, 3, 2)), "y_train": np.zeros(4)}, "x_train must be"),
    ],
)
def test_malformed_arrays_are_named(tmp_path, arrays, fragment):
    full = {"x_test": np.zeros((2, 3, 3)), "y_test": np.array([0, 1]), **arrays}
    with pytest.raises(DataError) as info:
        load_dataset(write_npz(tmp_path / "b.npz", **full))
    assert fragment in str(info.value)


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(DataError, match="digits, npz, tfds"):
        load_dataset("hf:mnist")


def test_search_split_halves_are_disjoint_and_cover_the_training_set():
    a, b = search_split(101, 0.5, seed=3)
    assert len(a) == 50 or len(a) == 51
    assert set(a).isdisjoint(b) and set(a) | set(b) == set(range(101))


def test_batches_drop_the_remainder_and_eval_batches_mask_padding():
    x, y = np.arange(10)[:, None, None, None], np.arange(10)
    got = list(batches(x, y, np.arange(10), 4))
    assert len(got) == 2 and all(len(b["label"]) == 4 for b in got)
    evals = list(eval_batches(x, y, 4))
    assert [int(b["mask"].sum()) for b in evals] == [4, 4, 2]
    assert sorted(np.concatenate([b["label"][b["mask"]] for b in evals])) == list(range(10))
    # The padding repeats real examples; masked out, they change no sum.
    assert list(evals[-1]["label"]) == [8, 9, 8, 9]


def test_evaluation_visits_a_class_sorted_set_in_mixed_batches():
    from nasax.loop.data import shuffled_order

    y = np.repeat(np.arange(10), 20)  # stored class by class, as the shared CIFAR-10 is
    x = y[:, None, None, None].astype(np.uint8)
    order = shuffled_order(len(y))
    evals = list(eval_batches(x, y, 32, order))
    assert sorted(np.concatenate([b["label"][b["mask"]] for b in evals])) == sorted(y)
    assert all(len(set(b["label"])) >= 5 for b in evals)
    assert np.array_equal(shuffled_order(len(y)), order)  # the same order every time


def test_random_crop_shifts_within_the_padding_and_flip_mirrors():
    images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
    cropped = random_crop(jax.random.PRNGKey(0), images, 2)
    assert cropped.shape == images.shape
    assert np.array_equal(random_crop(jax.random.PRNGKey(0), images, 0), images)
    flipped = random_flip(jax.random.PRNGKey(1), images)
    for i in range(2):
        assert np.array_equal(flipped[i], images[i]) or np.array_equal(
            flipped[i], images[i, :, ::-1]
        )
    many = random_flip(jax.random.PRNGKey(2), jnp.tile(images[:1], (64, 1, 1, 1)))
    n_flipped = sum(not np.array_equal(m, images[0]) for m in many)
    assert 10 < n_flipped < 54


def test_preprocess_normalises_per_channel():
    pre = make_preprocess(np.array([10.0, 20.0]), np.array([2.0, 4.0]))
    x = jnp.stack([jnp.full((3, 3), 10.0), jnp.full((3, 3), 28.0)], -1)[None]
    out = pre(x, jax.random.PRNGKey(0), False)
    np.testing.assert_array_equal(out[0, 0, 0], [0.0, 2.0])  # (10 - 10) / 2, (28 - 20) / 4: exact


def test_digits_read_from_the_bundled_csv_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from nasax.loop.data import digits_arrays

    pixels, labels = digits_arrays()
    digits = load_digits()
    np.testing.assert_array_equal(pixels, digits.images)
    np.testing.assert_array_equal(labels, digits.target)
    assert labels.dtype.kind == "i" and pixels.shape == (1797, 8, 8)


def test_arrays_in_memory_are_checked_and_their_name_cannot_be_loaded():
    """`dataset_from_arrays` checks arrays like any source; the `arrays:NAME` a config
    records for them names nothing a process can load, and says what to do instead."""
    from nasax.loop.data import dataset_from_arrays, load_dataset

    images = np.zeros((4, 3, 3), np.uint8)
    data = dataset_from_arrays(
        "mine", x_train=images, y_train=[0, 1, 0, 1], x_test=images, y_test=[1, 0, 1, 0]
    )
    assert data.name == "arrays:mine" and data.num_classes == 2
    assert data.x_train.shape == (4, 3, 3, 1)
    with pytest.raises(DataError, match=r"labels out of range"):
        dataset_from_arrays(
            "bad",
            x_train=images,
            y_train=[0, 1, 0, 3],
            x_test=images,
            y_test=[0] * 4,
            num_classes=2,
        )
    with pytest.raises(DataError, match=r"numpy.savez and use npz:PATH"):
        load_dataset("arrays:mine")
