"""aeexp.data on real IDX files written to tmp dirs (plain and gzipped), sklearn digits, the Debian Fashion-MNIST
and a dataset class of a user's own, built from a ``_target_`` config."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from idx import idx_bytes, synthetic_images, write_dataset, write_idx

from aeexp import data
from aeexp.data import IDX_FILES, Dataset, IdxDataset, IdxFormatError, read_idx
from aeexp.data import idx as idx_module
from aeexp.data.idx import _IDX_DTYPES
from aeexp.errors import AeexpError, ConfigError, DataError

N_TRAIN, N_TEST = 60, 20
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
KMNIST_NAMES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
CLASS_NAMES = {"mnist": [str(d) for d in range(10)], "fashion_mnist": FASHION_NAMES, "kmnist": KMNIST_NAMES}
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def source(name: str, root: str | Path, download: bool = False, val_fraction: float = 0.1) -> IdxDataset:
    """The shipped config of IDX dataset ``name`` (``dataset=<name>``) with the test's root and settings."""
    built = data.preset(name, root=str(root), download=download, val_fraction=val_fraction)
    assert isinstance(built, IdxDataset)
    return built


def load(name: str, root: str | Path, download: bool = False, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """Read the shipped IDX dataset ``name`` from ``root``, as a run with ``dataset=<name> dataset.root=...``."""
    return data.load(source(name, root, download, val_fraction), seed)


def _idx_header(code: int, dims: tuple[int, ...] | list[int]) -> bytes:
    return struct.pack(">BBBB", 0, 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def _rows(split) -> Counter:
    """A split as a multiset of (image bytes, label), to compare splits regardless of order."""
    images = split.images.numpy().reshape(len(split), -1)
    return Counter((img.tobytes(), int(lab)) for img, lab in zip(images, split.labels.numpy(), strict=True))


def _original_rows(n: int, seed: int) -> Counter:
    images, labels = synthetic_images(n, seed)
    return Counter((img.tobytes(), int(lab)) for img, lab in zip(images.reshape(n, -1), labels, strict=True))


# --------------------------------------------------------------------------------------------- read_idx


def test_read_idx_plain_returns_the_exact_array(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "a-idx3-ubyte", array)
    assert path.name == "a-idx3-ubyte"
    got = read_idx(path)
    assert got.shape == (5, 7, 3)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, array)
    labels = np.array([0, 9, 255, 3], dtype=np.uint8)
    got_labels = read_idx(write_idx(tmp_path / "l-idx1-ubyte", labels))
    assert got_labels.shape == (4,) and got_labels.dtype == np.uint8
    np.testing.assert_array_equal(got_labels, labels)


def test_read_idx_gzip_is_detected_by_content_not_by_name(tmp_path):
    array = np.random.default_rng(2).integers(0, 256, size=(4, 6, 6), dtype=np.uint8)
    gz_path = write_idx(tmp_path / "g-idx3-ubyte", array, gz=True)
    assert gz_path.name.endswith(".gz") and gz_path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(gz_path), array)

    no_suffix = tmp_path / "gzipped-without-suffix"  # gzip content, plain name
    shutil.copy(gz_path, no_suffix)
    got = read_idx(no_suffix)
    assert got.dtype == np.uint8 and got.shape == (4, 6, 6)
    np.testing.assert_array_equal(got, array)

    plain_named_gz = tmp_path / "plain-idx3-ubyte.gz"  # plain content, .gz name
    plain_named_gz.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)


@pytest.mark.parametrize("code", sorted(_IDX_DTYPES))
def test_read_idx_reads_every_idx_dtype_big_endian_into_native_values(tmp_path, code):
    big = np.dtype(_IDX_DTYPES[code])
    values = np.array([[0, 1, -1 if big.kind in "if" else 2], [7, 100, 3]]).astype(big)
    path = tmp_path / "typed"
    path.write_bytes(_idx_header(code, values.shape) + values.tobytes())
    got = read_idx(path)
    assert got.shape == (2, 3)
    assert got.dtype == big.newbyteorder("=")
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, values)


def test_read_idx_missing_path_is_data_error_not_format_error(tmp_path):
    with pytest.raises(DataError, match="cannot read") as info:
        read_idx(tmp_path / "nope")
    assert not isinstance(info.value, IdxFormatError)
    assert str(tmp_path / "nope") in str(info.value)


def test_read_idx_huge_header_on_tiny_file_fails_fast_without_allocating(tmp_path):
    path = tmp_path / "huge"
    path.write_bytes(_idx_header(0x08, [2**32 - 1] * 3) + b"\x00" * 16)
    start = time.perf_counter()
    with pytest.raises(IdxFormatError, match="truncated") as info:
        read_idx(path)
    assert time.perf_counter() - start < 1.0
    assert "file has 16" in str(info.value)


def test_idx_format_error_is_a_data_error():
    assert issubclass(IdxFormatError, DataError) and issubclass(DataError, AeexpError)


def test_read_idx_zero_dim_beside_huge_dims_is_idx_format_error(tmp_path):
    path = tmp_path / "zero-by-huge"
    path.write_bytes(_idx_header(0x08, [0, 2**32 - 1, 2**32 - 1]))
    with pytest.raises(IdxFormatError):
        read_idx(path)


def test_read_idx_more_dims_than_numpy_supports_is_idx_format_error(tmp_path):
    path = tmp_path / "many-dims"
    path.write_bytes(_idx_header(0x08, [1] * 70) + b"\x2a")
    with pytest.raises(IdxFormatError):
        read_idx(path)


# --------------------------------------------------------------------------------------------- load: layouts

LAYOUTS = {
    "torchvision raw": lambda root, name: root / TORCHVISION_FOLDER[name] / "raw",
    "torchvision folder": lambda root, name: root / TORCHVISION_FOLDER[name],
    "name raw": lambda root, name: root / name / "raw",
    "name folder": lambda root, name: root / name,
    "flat": lambda root, name: root,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_load_idx_dataset_from_each_layout(tmp_path, name, layout):
    root = tmp_path / "data"
    write_dataset(LAYOUTS[layout](root, name), n_train=N_TRAIN, n_test=N_TEST, seed=5)
    ds = load(name, root, download=False, val_fraction=0.1, seed=0)
    assert isinstance(ds, Dataset) and ds.name == name
    assert len(ds.train) + len(ds.val) == N_TRAIN  # the tiny files, not the Debian Fashion-MNIST
    assert len(ds.val) == 6 and len(ds.train) == 54
    assert len(ds.test) == N_TEST
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert tuple(split.images.shape[1:]) == (1, 28, 28)
        assert split.images.shape[0] == split.labels.shape[0]
    assert ds.image_shape == (1, 28, 28) == source(name, root).image_shape == data.known_image_shapes()[name]
    assert ds.input_dim == 784
    assert ds.class_names == CLASS_NAMES[name]
    test_x, test_y = synthetic_images(N_TEST, 6)  # write_dataset's test set uses seed + 1
    np.testing.assert_array_equal(ds.test.images[:, 0].numpy(), test_x)
    np.testing.assert_array_equal(ds.test.labels.numpy(), test_y)


def test_class_names_of_fashion_mnist_and_kmnist(tmp_path):
    write_dataset(tmp_path / "FashionMNIST" / "raw", n_train=20, n_test=10)
    write_dataset(tmp_path / "KMNIST" / "raw", n_train=20, n_test=10)
    fashion = load("fashion_mnist", tmp_path, download=False)
    kmnist = load("kmnist", tmp_path, download=False)
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    assert fashion.class_names == FASHION_NAMES
    assert kmnist.class_names[:4] == ["o", "ki", "su", "tsu"] and kmnist.class_names[-1] == "wo"
    assert len(fashion.class_names) == len(kmnist.class_names) == 10


@pytest.mark.parametrize("gz", [
    {"train_images": True, "test_labels": True},
    {"train_labels": True, "test_images": True},
    dict.fromkeys(IDX_FILES, True),
])
def test_load_mixed_gzip_and_plain_files(tmp_path, gz):
    paths = write_dataset(tmp_path / "MNIST" / "raw", n_train=N_TRAIN, n_test=N_TEST, gz=gz, seed=3)
    assert {k for k, p in paths.items() if p.suffix == ".gz"} == {k for k, v in gz.items() if v}
    ds = load("mnist", tmp_path, download=False, seed=0)
    assert len(ds.train) + len(ds.val) == N_TRAIN and len(ds.test) == N_TEST
    assert _rows(ds.train) + _rows(ds.val) == _original_rows(N_TRAIN, 3)
    assert _rows(ds.test) == _original_rows(N_TEST, 4)


# ------------------------------------------------------------------------------------------- read_ahead


@pytest.fixture
def fresh_read_ahead(monkeypatch):
    """No files read ahead by an earlier test; the test's own ``read_ahead`` finished before it goes on."""
    monkeypatch.setattr(idx_module, "_read_ahead", None)

    def read_ahead_and_wait(name, root):
        source(name, root).read_ahead()
        idx_module._read_ahead.thread.join()
    return read_ahead_and_wait


def _same_dataset(a: Dataset, b: Dataset) -> bool:
    return all(torch.equal(getattr(a, s).images, getattr(b, s).images)
               and torch.equal(getattr(a, s).labels, getattr(b, s).labels) for s in ("train", "val", "test"))


def test_load_takes_the_files_read_ahead_without_reading_them_again(tmp_path, monkeypatch, fresh_read_ahead):
    write_dataset(tmp_path / "MNIST" / "raw", n_train=N_TRAIN, n_test=N_TEST, gz={"train_images": True}, seed=3)
    expected = load("mnist", tmp_path, download=False, seed=1)
    fresh_read_ahead("mnist", tmp_path)

    def read_again(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(idx_module, "_file_bytes", read_again)
    assert _same_dataset(load("mnist", tmp_path, download=False, seed=1), expected)
    assert idx_module._read_ahead.done == {}  # handed over, not kept for the rest of the process
    with pytest.raises(AssertionError, match="read again"):  # a second load reads the files itself
        load("mnist", tmp_path, download=False, seed=1)


def test_a_file_changed_after_reading_ahead_is_read_again(tmp_path, fresh_read_ahead):
    paths = write_dataset(tmp_path, n_train=N_TRAIN, n_test=N_TEST, seed=3)
    fresh_read_ahead("mnist", tmp_path)
    write_dataset(tmp_path, n_train=N_TRAIN, n_test=N_TEST, seed=8)  # same sizes, other images
    for path in paths.values():  # a whole second later: the clock may not have ticked since the first write
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    ds = load("mnist", tmp_path, download=False, seed=0)
    assert _rows(ds.train) + _rows(ds.val) == _original_rows(N_TRAIN, 8)
    assert _rows(ds.test) == _original_rows(N_TEST, 9)


def test_a_corrupt_file_read_ahead_is_still_reported_by_load(tmp_path, fresh_read_ahead):
    path = write_dataset(tmp_path, n_train=N_TRAIN, n_test=N_TEST, gz={"test_images": True})["test_images"]
    corrupt = bytearray(path.read_bytes())
    corrupt[-8] ^= 0xFF  # CRC32 in the gzip trailer
    path.write_bytes(bytes(corrupt))
    fresh_read_ahead("mnist", tmp_path)
    with pytest.raises(IdxFormatError, match="corrupt or truncated gzip"):
        load("mnist", tmp_path, download=False)


def test_read_ahead_of_what_it_cannot_find_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(idx_module, "_read_ahead", None)
    data.preset("digits").read_ahead()  # not from files
    source("mnist", tmp_path / "nothing here").read_ahead()
    write_dataset(tmp_path / "MNIST" / "raw", n_train=20, n_test=10)["test_labels"].unlink()
    source("mnist", tmp_path).read_ahead()  # three of the four files: nothing to read ahead
    idx_module.read_ahead([])
    assert idx_module._read_ahead is None


def test_read_ahead_of_paths_reads_them_for_read_idx(tmp_path, monkeypatch):
    monkeypatch.setattr(idx_module, "_read_ahead", None)
    paths = write_dataset(tmp_path, n_train=N_TRAIN, n_test=N_TEST, gz={"test_images": True}, seed=3)
    idx_module.read_ahead([paths["test_images"], paths["train_labels"]])
    idx_module._read_ahead.thread.join()
    monkeypatch.setattr(idx_module, "_file_bytes", lambda path: pytest.fail(f"{path} was read again"))
    np.testing.assert_array_equal(read_idx(paths["test_images"]), synthetic_images(N_TEST, 4)[0])
    np.testing.assert_array_equal(read_idx(paths["train_labels"]), synthetic_images(N_TRAIN, 3)[1])
    with pytest.raises(pytest.fail.Exception, match="was read again"):  # not read ahead: read now
        read_idx(paths["train_images"])


def test_load_prefers_torchvision_raw_folder_over_flat_root(tmp_path):
    write_dataset(tmp_path, n_train=40, n_test=10)
    write_dataset(tmp_path / "MNIST" / "raw", n_train=N_TRAIN, n_test=N_TEST)
    ds = load("mnist", tmp_path, download=False)
    assert len(ds.train) + len(ds.val) == N_TRAIN and len(ds.test) == N_TEST


def test_load_skips_a_folder_with_only_some_of_the_files(tmp_path):
    partial = write_dataset(tmp_path / "MNIST" / "raw", n_train=40, n_test=10)
    partial["test_labels"].unlink()
    write_dataset(tmp_path / "mnist", n_train=N_TRAIN, n_test=N_TEST)
    ds = load("mnist", tmp_path, download=False)
    assert len(ds.train) + len(ds.val) == N_TRAIN and len(ds.test) == N_TEST


def test_load_accepts_str_root_with_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_dataset(tmp_path / "datasets" / "KMNIST" / "raw", n_train=N_TRAIN, n_test=N_TEST)
    ds = load("kmnist", "~/datasets", download=False)
    assert len(ds.test) == N_TEST and ds.class_names == KMNIST_NAMES


def test_dataset_to_cpu_keeps_everything(mnist_root):
    ds = load("mnist", mnist_root, download=False)
    moved = ds.to("cpu")
    assert moved.name == ds.name and moved.class_names == ds.class_names
    for a, b in ((ds.train, moved.train), (ds.val, moved.val), (ds.test, moved.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


# --------------------------------------------------------------------------------------------- load: val split


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "MNIST" / "raw", n_train=200, n_test=N_TEST, seed=11)
    return tmp_path


def test_val_split_same_seed_is_identical(split_root):
    a = load("mnist", split_root, download=False, seed=7)
    b = load("mnist", split_root, download=False, seed=7)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)


def test_val_split_different_seed_is_different(split_root):
    a = load("mnist", split_root, download=False, seed=0)
    b = load("mnist", split_root, download=False, seed=1)
    assert len(a.val) == len(b.val)
    assert _rows(a.val) != _rows(b.val)
    assert torch.equal(a.test.images, b.test.images)  # the test split never depends on the seed


@pytest.mark.parametrize(("val_fraction", "n_val"), [(0.1, 20), (0.25, 50), (0.5, 100), (0.001, 1)])
def test_val_split_is_disjoint_and_together_the_training_set(split_root, val_fraction, n_val):
    ds = load("mnist", split_root, download=False, val_fraction=val_fraction, seed=3)
    assert len(ds.val) == n_val and len(ds.train) == 200 - n_val
    train, val = _rows(ds.train), _rows(ds.val)
    assert not set(train) & set(val)
    assert train + val == _original_rows(200, 11)
    originals_y = synthetic_images(200, 11)[1]
    counts = np.bincount(ds.train.labels.numpy(), minlength=10) + np.bincount(ds.val.labels.numpy(), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(originals_y, minlength=10))


def test_val_and_train_keep_the_file_order(split_root):
    images, _ = synthetic_images(200, 11)
    index = {img.tobytes(): i for i, img in enumerate(images.reshape(200, -1))}
    ds = load("mnist", split_root, download=False, seed=4)
    for split in (ds.train, ds.val):
        positions = [index[img.tobytes()] for img in split.images.numpy().reshape(len(split), -1)]
        assert positions == sorted(positions)


# --------------------------------------------------------------------------------------------- digits


def test_digits_sizes_shape_and_range(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = data.load(data.preset("digits", val_fraction=0.1), seed=0)
    assert not any(tmp_path.iterdir())  # embedded in the package: no ./data folder, no download
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert len(ds.test) == 360
    assert len(ds.val) == round(1437 * 0.1) and len(ds.train) == 1437 - len(ds.val)
    assert ds.image_shape == (1, 8, 8) == data.Digits().image_shape and ds.input_dim == 64
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape[1:]) == (1, 8, 8)
    all_images = torch.cat([ds.train.images, ds.val.images, ds.test.images])
    assert int(all_images.min()) == 0 and int(all_images.max()) == 255
    assert ds.class_names == [str(d) for d in range(10)]
    assert set(ds.test.labels.tolist()) == set(range(10))


def test_digits_test_split_is_fixed_regardless_of_seed():
    a = data.load(data.Digits(), seed=0)
    b = data.load(data.preset("digits"), seed=123)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert _rows(a.train) + _rows(a.val) == _rows(b.train) + _rows(b.val)
    assert _rows(a.val) != _rows(b.val)


@pytest.mark.parametrize(("target", "expected"), [
    ("aeexp.data.Cifar", "dataset._target_='aeexp.data.Cifar' is invalid: aeexp.data has no class or function Cifar"),
    ("aeexp_no_such_package.Cifar", "dataset._target_='aeexp_no_such_package.Cifar' cannot be imported (No module "
                                    "named 'aeexp_no_such_package'); put its module on PYTHONPATH"),
    ("aeexp.models.DenseAutoencoder", "dataset._target_=aeexp.models.DenseAutoencoder is invalid: it must be a "
                                      "subclass of aeexp.data.dataset.ImageDataset"),
    ("aeexp.data.dataset.Arrays", "dataset._target_=aeexp.data.dataset.Arrays is invalid: it must be a subclass of "
                                  "aeexp.data.dataset.ImageDataset"),
    ("aeexp.data.load", "dataset._target_=aeexp.data.load is invalid: it must be a subclass of "
                        "aeexp.data.dataset.ImageDataset"),
])
def test_a_dataset_target_that_is_no_image_dataset_is_one_config_error(target, expected):
    with pytest.raises(ConfigError) as info:
        data.build({"_target_": target, "name": "cifar"})
    assert str(info.value) == expected


def test_a_preset_that_is_not_shipped_lists_the_shipped_ones():
    with pytest.raises(KeyError, match="no dataset config 'cifar'; shipped: arrays, cifar10, digits, emnist, "
                                       "fashion_mnist, folder, kmnist, mnist, svhn"):
        data.preset("cifar")


def test_known_image_shapes_come_from_the_shipped_configs():
    shapes = data.known_image_shapes()
    assert shapes == {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                      "kmnist": (1, 28, 28), "emnist": (1, 28, 28), "cifar10": (3, 32, 32), "svhn": (3, 32, 32)}
    # The order messages list them in; folder and arrays know their shape only from their files.
    assert list(shapes) == ["digits", "mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "svhn"]


def test_preset_is_the_shipped_config_with_overrides(tmp_path):
    default = data.preset("fashion_mnist")
    assert isinstance(default, IdxDataset) and default.name == "fashion_mnist" and default.folder == "FashionMNIST"
    assert default.root == Path("data") and default.download is True and default.val_fraction == 0.1
    assert default.also_in == [DEBIAN_FASHION_MNIST] and default.class_names == FASHION_NAMES
    assert default.image_shape == (1, 28, 28)
    changed = data.preset("fashion_mnist", root=str(tmp_path), download=False, val_fraction=0.25,
                          image_size=[20, 24], also_in=[])
    assert (changed.root, changed.download, changed.val_fraction) == (tmp_path, False, 0.25)
    assert changed.image_shape == (1, 20, 24) and changed.also_in == []
    assert data.preset("kmnist").also_in == [] and data.preset("kmnist").class_names == KMNIST_NAMES
    assert data.preset("digits", name="my digits").name == "my digits"
    with pytest.raises(ConfigError, match=r"^dataset\.root is not a parameter of aeexp\.data\.digits\.Digits"):
        data.preset("digits", root=str(tmp_path))


@pytest.mark.parametrize("value", [1.5, 0, 1, -0.1])
def test_val_fraction_outside_zero_and_one_is_refused_when_built(value):
    for config in ({"_target_": "aeexp.data.Digits"}, {"_target_": "aeexp.data.IdxDataset", "name": "mnist",
                                                       "folder": "MNIST", "class_names": ["a", "b"]}):
        with pytest.raises(ConfigError) as info:
            data.build({**config, "val_fraction": value})
        assert str(info.value) == f"dataset.val_fraction={value!r} is invalid: it must lie strictly between 0 and 1."


@pytest.mark.parametrize(("overrides", "message"), [
    ({"image_size": [28]}, "dataset.image_size=[28] is invalid: give [height, width]."),
    ({"image_size": [0, 28]}, "dataset.image_size=[0, 28] is invalid: give [height, width]."),
    ({"image_size": ["a", 28]}, "dataset.image_size=['a', 28] is invalid: expected a list, each item an integer."),
    ({"class_names": []}, "dataset.class_names=[] is invalid: give the name of each class."),
    ({"download": "yes"}, "dataset.download='yes' is invalid: expected true or false."),
    ({"name": " "}, "dataset.name=' ' is invalid: give the dataset a name."),
    ({"colour": "red"}, "dataset.colour is not a parameter of aeexp.data.idx.IdxDataset"),
])
def test_bad_idx_dataset_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        data.preset("mnist", **overrides)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["mnist", "kmnist"])
def test_missing_files_without_download_names_files_and_folders(tmp_path, name):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError) as info:
        load(name, root, download=False)
    message = str(info.value)
    assert not isinstance(info.value, IdxFormatError)
    assert f"dataset {name}: files not found" in message
    for stem in IDX_FILES.values():
        assert f"{stem}[.gz]" in message
    folder = TORCHVISION_FOLDER[name]
    for searched in (root / folder / "raw", root / folder, root / name / "raw", root / name, root):
        assert str(searched) in message
    assert "download is off" in message
    assert not any(root.iterdir())  # nothing was downloaded


def test_missing_files_when_root_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="download is off"):
        load("mnist", tmp_path / "no" / "such" / "dir", download=False)
    assert not (tmp_path / "no").exists()


def test_a_folder_missing_one_file_counts_as_missing(tmp_path):
    write_dataset(tmp_path / "MNIST" / "raw", n_train=20, n_test=10)["train_labels"].unlink()
    with pytest.raises(DataError, match="files not found") as info:
        load("mnist", tmp_path, download=False)
    assert "train-labels-idx1-ubyte[.gz]" in str(info.value)


def test_root_that_is_a_file_is_data_error(tmp_path):
    not_a_dir = tmp_path / "data.txt"
    not_a_dir.write_text("hello")
    with pytest.raises(DataError, match="is a file, not a folder") as info:
        load("mnist", not_a_dir, download=True)  # refused before any download attempt
    assert str(not_a_dir) in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_image_file(tmp_path, gz):
    paths = write_dataset(tmp_path / "MNIST" / "raw", n_train=20, n_test=10, gz={"train_images": gz})
    path = paths["train_images"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxFormatError) as info:
        load("mnist", tmp_path, download=False)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message
    if gz:
        assert "gzip" in message
    else:
        assert "(20, 28, 28)" in message and "fetch it again" in message


def test_gzip_with_bad_checksum(tmp_path):
    path = write_idx(tmp_path / "x-idx1-ubyte", np.arange(50, dtype=np.uint8), gz=True)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # CRC32 in the gzip trailer
    path.write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_file_longer_than_its_header(tmp_path):
    path = write_dataset(tmp_path, n_train=20, n_test=10)["test_labels"]
    path.write_bytes(path.read_bytes() + b"\x00\x01")
    with pytest.raises(IdxFormatError, match="longer than its header says") as info:
        load("mnist", tmp_path, download=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_wrong_magic_number(tmp_path, gz):
    paths = write_dataset(tmp_path, n_train=20, n_test=10)
    path = paths["test_images"]
    payload = b"\x01\x02\x03\x04" + path.read_bytes()[4:]
    path.write_bytes(gzip.compress(payload) if gz else payload)  # gzip content under the plain name
    with pytest.raises(IdxFormatError, match="not an IDX file") as info:
        load("mnist", tmp_path, download=False)
    assert "bad magic number 01020304" in str(info.value)
    assert str(path) in str(info.value)


def test_png_is_not_an_idx_file(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(IdxFormatError, match="bad magic number 89504e47"):
        read_idx(path)


def test_image_and_label_count_mismatch_names_both_files(tmp_path):
    directory = tmp_path / "MNIST" / "raw"
    write_dataset(directory, n_train=20, n_test=10)
    images = write_idx(directory / IDX_FILES["train_images"], synthetic_images(21, 0)[0])
    with pytest.raises(IdxFormatError) as info:
        load("mnist", tmp_path, download=False)
    message = str(info.value)
    assert str(images) in message and str(directory / IDX_FILES["train_labels"]) in message
    assert "21 images" in message and "20 labels" in message
    assert "do not belong together" in message


def test_wrong_image_size_for_the_dataset(tmp_path):
    directory = tmp_path / "MNIST" / "raw"
    write_dataset(directory, n_train=20, n_test=10)
    small = write_idx(directory / IDX_FILES["test_images"], synthetic_images(10, 1, size=20)[0])
    with pytest.raises(IdxFormatError) as info:
        load("mnist", tmp_path, download=False)
    message = str(info.value)
    assert str(small) in message
    assert "(20, 20)" in message and "(28, 28)" in message and "mnist" in message


def test_labels_with_wrong_rank(tmp_path):
    directory = tmp_path / "KMNIST" / "raw"
    write_dataset(directory, n_train=20, n_test=10)
    labels = write_idx(directory / IDX_FILES["train_labels"], np.zeros((20, 2), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"expected images \(N, H, W\) and labels \(N,\)") as info:
        load("kmnist", tmp_path, download=False)
    assert str(labels) in str(info.value) and "(20, 2)" in str(info.value)


def test_empty_file(tmp_path):
    paths = write_dataset(tmp_path, n_train=20, n_test=10)
    paths["train_labels"].write_bytes(b"")
    with pytest.raises(IdxFormatError, match="not an IDX file") as info:
        load("mnist", tmp_path, download=False)
    assert "empty" in str(info.value) and str(paths["train_labels"]) in str(info.value)


def test_empty_gzip_file(tmp_path):
    path = tmp_path / "empty.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(IdxFormatError, match="empty"):
        read_idx(path)


def test_header_shorter_than_its_dims(tmp_path):
    path = tmp_path / "short-header"
    path.write_bytes(_idx_header(0x08, [3, 4, 5])[:10])
    with pytest.raises(IdxFormatError, match="header needs 16 bytes, has 10"):
        read_idx(path)


# --------------------------------------------------------------------------------------------- Debian Fashion-MNIST


def test_fashion_mnist_from_debian_folder_when_root_is_empty(tmp_path):
    assert DEBIAN_FASHION_MNIST in source("fashion_mnist", tmp_path).also_in  # from the shipped config's also_in
    if not DEBIAN_FASHION_MNIST.is_dir():
        reason = f"{DEBIAN_FASHION_MNIST} is missing (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the Debian Fashion-MNIST: {reason}")
        pytest.skip(reason)
    root = tmp_path / "empty"
    root.mkdir()
    ds = load("fashion_mnist", root, download=False, val_fraction=0.1, seed=0)
    assert not any(root.iterdir())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert ds.image_shape == (1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.class_names == FASHION_NAMES
    assert np.bincount(ds.test.labels.numpy(), minlength=10).tolist() == [1000] * 10
    train_counts = np.bincount(ds.train.labels.numpy(), minlength=10) + np.bincount(ds.val.labels.numpy(),
                                                                                    minlength=10)
    assert train_counts.tolist() == [6000] * 10
    # the Debian folder is for Fashion-MNIST only
    with pytest.raises(DataError, match="files not found") as info:
        load("mnist", root, download=False)
    assert str(DEBIAN_FASHION_MNIST) not in str(info.value)


def test_also_in_folders_are_searched_after_the_root(tmp_path):
    elsewhere = tmp_path / "shared" / "mnist-files"
    write_dataset(elsewhere, n_train=N_TRAIN, n_test=N_TEST, seed=2)
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError, match="files not found"):
        load("mnist", root)
    ds = data.load(data.preset("mnist", root=str(root), download=False, also_in=[str(elsewhere)]), seed=0)
    assert _rows(ds.train) + _rows(ds.val) == _original_rows(N_TRAIN, 2)
    write_dataset(root / "MNIST", n_train=30, n_test=10, seed=5)  # the root's files come first
    ds = data.load(data.preset("mnist", root=str(root), download=False, also_in=[str(elsewhere)]), seed=0)
    assert _rows(ds.test) == _original_rows(10, 6)
    mine = IdxDataset("mine", "MINE", ["a"], root=str(root), download=False, also_in=[str(elsewhere)])
    assert mine.candidates() == [root / "MINE" / "raw", root / "MINE", root / "mine" / "raw", root / "mine", root,
                                 elsewhere]


# --------------------------------------------------------------------------------------------- fuzzing read_idx


def _inner(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _header_size(data: bytes) -> int:
    raw = _inner(data)
    ndim = raw[3]
    return math.prod(struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]))


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


@st.composite
def random_files(draw) -> bytes:
    prefix = draw(st.sampled_from([b"", b"\x00\x00", b"\x00\x00\x08", b"\x00\x00\x0d\x01", b"\x00\x00\x08\x02",
                                   b"\x1f\x8b", b"\x1f\x8b\x08\x00"]))
    data = prefix + draw(st.binary(max_size=64))
    if draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
    return data


@st.composite
def mutated_idx_files(draw) -> tuple[bytes, str, tuple[int, ...], bytes]:
    """(file bytes, what was done, header shape, payload); the file is valid exactly when what == 'exact'."""
    code = draw(st.sampled_from(sorted(_IDX_DTYPES)))
    dims = tuple(draw(st.lists(st.integers(0, 8), min_size=1, max_size=4)))
    n_bytes = math.prod(dims) * np.dtype(_IDX_DTYPES[code]).itemsize
    payload = draw(st.binary(min_size=n_bytes, max_size=n_bytes))
    body = _idx_header(code, dims) + payload
    what = draw(st.sampled_from(["exact", "truncate", "extend"]))
    if what == "truncate":
        body = body[:draw(st.integers(0, len(body) - 1))]
    elif what == "extend":
        body += draw(st.binary(min_size=1, max_size=16))
    if draw(st.booleans()):
        body = gzip.compress(body, mtime=0)
        damage = draw(st.sampled_from(["none", "cut", "flip"]))
        if damage == "cut":
            body, what = body[:draw(st.integers(0, len(body) - 1))], "gzip cut"
        elif damage == "flip":
            at = draw(st.integers(0, len(body) - 1))
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
            what = "gzip flip"
    return body, what, dims, payload


FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=random_files(), name=st.sampled_from(["f", "f.gz", "f-idx3-ubyte"]))
def test_fuzz_read_idx_random_bytes(tmp_path_factory, data, name):
    path = _write(tmp_path_factory.mktemp("fuzz"), name, data)
    try:
        array = read_idx(path)
    except IdxFormatError:
        return
    assert isinstance(array, np.ndarray)
    assert array.size == _header_size(data)


@FUZZ
@given(case=mutated_idx_files(), name=st.sampled_from(["f", "f.gz", "t10k-images-idx3-ubyte"]))
def test_fuzz_read_idx_valid_headers_mutated(tmp_path_factory, case, name):
    data, what, dims, payload = case
    path = _write(tmp_path_factory.mktemp("fuzz"), name, data)
    if what == "exact":
        array = read_idx(path)
        assert array.shape == dims
        assert array.dtype.isnative
        assert array.astype(array.dtype.newbyteorder(">")).tobytes() == payload
    elif what == "gzip flip":  # a flipped bit in gzip's header (mtime, OS) may go unnoticed
        try:
            array = read_idx(path)
        except IdxFormatError:
            return
        assert array.size == _header_size(data)
    else:
        with pytest.raises(IdxFormatError):
            read_idx(path)


@FUZZ
@given(dims=st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=6), tail=st.binary(max_size=16),
       gz=st.booleans())
def test_fuzz_read_idx_huge_headers_on_tiny_files(tmp_path_factory, dims, tail, gz):
    data = _idx_header(0x08, dims) + tail
    data = gzip.compress(data, mtime=0) if gz else data
    path = _write(tmp_path_factory.mktemp("fuzz"), "f", data)
    start = time.perf_counter()
    try:
        array = read_idx(path)
    except IdxFormatError as err:
        assert "truncated" in str(err) or "longer than its header says" in str(err)
    else:
        assert array.size == math.prod(dims) == len(tail)
    assert time.perf_counter() - start < 1.0


def test_images_of_another_idx_dtype_are_refused(tmp_path):
    files = write_dataset(tmp_path / "MNIST" / "raw", n_train=20, n_test=10)
    wide = np.zeros((20, 28, 28), dtype=">i4")
    header = _idx_header(0x0C, list(wide.shape))
    files["train_images"].write_bytes(header + wide.tobytes())
    with pytest.raises(IdxFormatError, match="expected unsigned bytes"):
        load("mnist", root=tmp_path, download=False)


def test_labels_beyond_the_classes_are_refused(tmp_path):
    files = write_dataset(tmp_path / "MNIST" / "raw", n_train=20, n_test=10)
    write_idx(files["test_labels"], np.full(10, 200, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="label 200"):
        load("mnist", root=tmp_path, download=False)


# --------------------------------------------------------------------------------------------- IdxDataset


def test_idx_dataset_reads_images_with_a_channel_axis(tmp_path):
    write_dataset(tmp_path / "KMNIST" / "raw", n_train=N_TRAIN, n_test=N_TEST, gz={"test_images": True}, seed=3)
    arrays = source("kmnist", tmp_path).read()
    assert arrays.train_images.shape == (N_TRAIN, 1, 28, 28) and arrays.test_images.shape == (N_TEST, 1, 28, 28)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_labels.shape == (N_TRAIN,)
    np.testing.assert_array_equal(arrays.train_images[:, 0], synthetic_images(N_TRAIN, 3)[0])
    np.testing.assert_array_equal(arrays.test_images[:, 0], synthetic_images(N_TEST, 4)[0])
    np.testing.assert_array_equal(arrays.test_labels, synthetic_images(N_TEST, 4)[1])


def test_an_idx_dataset_of_another_image_size_and_class_count(tmp_path):
    """A dataset that is one YAML: IdxDataset with its own folder, classes and image size (here 20x20, 4 classes)."""
    folder = tmp_path / "Shapes" / "raw"
    train_x, train_y = synthetic_images(40, 1, size=20, classes=4)
    test_x, test_y = synthetic_images(12, 2, size=20, classes=4)
    for key, array in (("train_images", train_x), ("train_labels", train_y), ("test_images", test_x),
                       ("test_labels", test_y)):
        write_idx(folder / IDX_FILES[key], array, gz=key.endswith("images"))
    config = {"_target_": "aeexp.data.IdxDataset", "name": "shapes", "folder": "Shapes", "root": str(tmp_path),
              "download": False, "class_names": ["square", "circle", "star", "cross"], "image_size": [20, 20],
              "val_fraction": 0.25}
    shapes = data.build(config)
    assert isinstance(shapes, IdxDataset) and shapes.image_shape == (1, 20, 20)
    ds = data.load(shapes, seed=0)
    assert ds.name == "shapes" and ds.image_shape == (1, 20, 20) and ds.class_names == config["class_names"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 12)
    np.testing.assert_array_equal(ds.test.images[:, 0].numpy(), test_x)
    with pytest.raises(IdxFormatError, match="label 3; shapes has 3 classes"):
        data.load(data.build({**config, "class_names": ["square", "circle", "star"]}))
    with pytest.raises(IdxFormatError, match=r"holds \(20, 20\) images, expected \(28, 28\) for shapes"):
        data.load(data.build({**config, "image_size": [28, 28]}))


# --------------------------------------------------------------------------------------------- a dataset of your own

OWN = "aeexp_test_own_dataset"
OWN_SOURCE = '''
"""A user's dataset: an ImageDataset subclass in a module of their own, named by a YAML's _target_."""

from __future__ import annotations

from typing import Any

import numpy as np

from aeexp.data import Arrays, ImageDataset
from aeexp.errors import require


class Bars(ImageDataset):
    """Images of one bright bar, class = the bar's row; ``side`` x ``side``; ``lie`` makes read() disagree."""

    def __init__(self, name: str = "bars", side: int = 6, n_train: int = 30, n_test: int = 12,
                 lie: str = "", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        require(side >= 2, "side", side, "it must be at least 2")
        self.side, self.n_train, self.n_test, self.lie = side, n_train, n_test, lie
        self.image_shape = (1, side, side)
        self.class_names = [f"row {r}" for r in range(side)]

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % self.side
        images = np.zeros((n, 1, self.side, self.side), dtype=np.uint8)
        images[np.arange(n), 0, labels] = 255
        images[:, 0, :, 0] = np.arange(n)[:, None] % 256  # a column telling the images apart
        return images, labels

    def read(self) -> Arrays:
        train_x, train_y = self._split(self.n_train)
        test_x, test_y = self._split(self.n_test)
        if self.lie == "size":
            train_x = train_x[:, :, 1:, 1:]
        elif self.lie == "no channel":
            test_x = test_x[:, 0]
        elif self.lie == "labels":
            test_y = test_y[:-1]
        return Arrays(train_x, train_y, test_x, test_y)
'''


@pytest.fixture
def own_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The ``_target_`` of a dataset class in a module of the user's own, on sys.path for this test."""
    (tmp_path / f"{OWN}.py").write_text(OWN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, OWN, raising=False)
    yield f"{OWN}.Bars"
    sys.modules.pop(OWN, None)


def test_a_dataset_of_your_own_is_built_and_loaded_from_its_config(own_dataset):
    bars = data.build({"_target_": own_dataset, "side": 5, "val_fraction": 0.2})
    assert isinstance(bars, data.ImageDataset) and type(bars).__name__ == "Bars"
    assert bars.name == "bars" and bars.image_shape == (1, 5, 5) and bars.val_fraction == 0.2
    ds = data.load(bars, seed=0)
    assert ds.name == "bars" and ds.image_shape == (1, 5, 5) and ds.class_names == [f"row {r}" for r in range(5)]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 12)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        rows = split.images[:, 0, :, 1:].amax(dim=2).argmax(dim=1)  # the bright row, right of the id column
        assert torch.equal(rows, split.labels)
    ids = torch.cat([ds.train.images[:, 0, 0, 0], ds.val.images[:, 0, 0, 0]])
    assert sorted(ids.tolist()) == list(range(30))  # train and val together are the training split


def test_a_dataset_of_your_own_has_its_parameters_checked(own_dataset):
    def refused(**params) -> str:
        with pytest.raises(ConfigError) as info:
            data.build({"_target_": own_dataset, **params})
        assert "\n" not in str(info.value)
        return str(info.value)

    assert refused(side=1) == "dataset.side=1 is invalid: it must be at least 2."
    assert refused(side="big") == "dataset.side='big' is invalid: expected an integer."
    assert refused(val_fraction=1.5) == "dataset.val_fraction=1.5 is invalid: it must lie strictly between 0 and 1."
    assert refused(val_fraction="a") == "dataset.val_fraction='a' is invalid: expected a number."  # the base's hint
    assert refused(root="/data").startswith(f"dataset.root is not a parameter of {own_dataset} (its parameters: name, "
                                            "side, n_train, n_test, lie, val_fraction, train_size, test_size)")


@pytest.mark.parametrize(("lie", "message"), [
    ("size", r"dataset bars: its train images are \(30, 1, 5, 5\), not \(N, 1, 6, 6\) as it declares"),
    ("no channel", r"dataset bars: its test images are \(12, 6, 6\), not \(N, 1, 6, 6\) as it declares"),
    ("labels", "dataset bars: 12 test images but 11 labels"),
])
def test_what_a_dataset_reads_must_match_what_it_declares(own_dataset, lie, message):
    with pytest.raises(DataError, match=message):
        data.load(data.build({"_target_": own_dataset, "lie": lie}))
