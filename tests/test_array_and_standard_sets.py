"""``dataset=arrays`` on real .npz files, and CIFAR-10, SVHN and EMNIST on small files in their real formats
(CIFAR-10's pickled python batches, SVHN's .mat files, EMNIST's gzipped IDX files in torchvision's layout)."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from idx import synthetic_images
from image_sets import colour_images, write_cifar10, write_emnist, write_svhn
from numpy.lib import format as npy

from aeexp import data
from aeexp.data import Cifar10, Emnist, Svhn
from aeexp.errors import ConfigError, DataError


def _all_images(ds: data.Dataset) -> np.ndarray:
    return np.concatenate([ds.train.images.numpy(), ds.val.images.numpy()])


def _sorted_rows(images: np.ndarray) -> list[bytes]:
    return sorted(row.tobytes() for row in images.reshape(len(images), -1))


# --------------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "NHWC-1"])
def test_npz_layouts_give_the_same_images(tmp_path, layout):
    colour = layout in ("NHWC", "NCHW")
    images, labels = colour_images(50, 0, 12) if colour else synthetic_images(50, 0, 12)
    stored = {"NCHW": images.transpose(0, 3, 1, 2) if colour else images, "NHWC-1": images[..., None]}.get(layout,
                                                                                                        images)
    np.savez(tmp_path / "x.npz", x_train=stored[:40], x_test=stored[40:], y_train=labels[:40], y_test=labels[40:])
    ds = data.load(data.preset("arrays", path=str(tmp_path / "x.npz")))
    expected = images.transpose(0, 3, 1, 2) if colour else images[:, None]
    assert ds.image_shape == expected.shape[1:]
    assert np.array_equal(ds.test.images.numpy(), expected[40:]) and ds.test.labels.tolist() == labels[40:].tolist()
    assert _sorted_rows(_all_images(ds)) == _sorted_rows(expected[:40])
    assert ds.class_names == [str(c) for c in range(10)]


def test_npz_floats_unlabelled_and_class_names(tmp_path):
    images = colour_images(30, 1, 8)[0]
    np.savez_compressed(tmp_path / "f.npz", x_train=images[:20] / 255.0, x_test=(images[20:] / 255.0).astype("f4"))
    ds = data.load(data.preset("arrays", path=str(tmp_path / "f.npz")))
    assert not ds.labelled and ds.class_names == []
    assert np.array_equal(ds.test.images.numpy(), images[20:].transpose(0, 3, 1, 2))  # x 255, rounded: exact
    labels = np.arange(30) % 2
    np.savez(tmp_path / "n.npz", x_train=images[:20], x_test=images[20:], y_train=labels[:20], y_test=labels[20:],
             class_names=np.array(["cat", "dog"]))
    assert data.preset("arrays", path=str(tmp_path / "n.npz")).class_names == ["cat", "dog"]


def _npz(**arrays: np.ndarray):
    return lambda path: np.savez(path, **arrays)


GOOD = np.zeros((20, 8, 8), dtype=np.uint8)
LABELS = np.arange(20) % 2
BAD_NPZ = [
    ("no x_train", _npz(images=GOOD), "holds no x_train (it holds: images); save the images with numpy.savez"),
    ("labels count", _npz(x_train=GOOD, x_test=GOOD, y_train=LABELS[:15], y_test=LABELS),
     "y_train in {path} holds 15 labels but x_train 20 images; give one label per image"),
    ("one split labelled", _npz(x_train=GOOD, x_test=GOOD, y_train=LABELS), "holds y_train but no y_test"),
    ("float labels", _npz(x_train=GOOD, x_test=GOOD, y_train=LABELS * 1.0, y_test=LABELS), "labels must be integers"),
    ("bad shape", _npz(x_train=np.zeros((20, 8, 8, 5)), x_test=GOOD), "x_train in {path} has shape (20, 8, 8, 5); "
                                                                       "give images (N, H, W), (N, H, W, C) or"),
    ("shapes differ", _npz(x_train=GOOD, x_test=np.zeros((5, 9, 8))), "x_train holds 1x8x8 images but x_test 1x9x8"),
    ("few class names", _npz(x_train=GOOD, x_test=GOOD, y_train=LABELS, y_test=LABELS, class_names=np.array(["a"])),
     "holds label 1 but only 1 class_names"),
    ("not npz", lambda path: path.write_bytes(b"plain bytes"), "is not an .npz archive"),
]
READ_ERRORS = [  # found when the images are read (still before any run is created)
    ("floats above 1", _npz(x_train=GOOD + 2.0, x_test=GOOD * 1.0),
     "x_train in {path} holds float values from 2 to 2; float pixels must lie in [0, 1]"),
    ("NaN", _npz(x_train=GOOD * 1.0, x_test=GOOD + np.nan), "x_test in {path} holds NaN or infinite values"),
    ("int 300", _npz(x_train=GOOD.astype(np.int16) + 300, x_test=GOOD), "holds integer values from 300 to 300"),
]


@pytest.mark.parametrize(("case", "write", "message"), BAD_NPZ + READ_ERRORS,
                         ids=[case for case, _, _ in BAD_NPZ + READ_ERRORS])
def test_a_bad_npz_is_one_message(tmp_path, case, write, message):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(DataError) as info:
        data.load(data.preset("arrays", path=str(path)))
    assert message.format(path=path) in str(info.value) and "\n" not in str(info.value), str(info.value)


def _member(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], data: Iterable[bytes]) -> None:
    """A member ``<name>.npy`` whose header declares ``shape`` (uint8), followed by ``data``, written in chunks (and
    compressed as the archive compresses)."""
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    info = zipfile.ZipInfo(f"{name}.npy")
    info.compress_type = archive.compression
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(header.getvalue())
        for chunk in data:
            member.write(chunk)


def _lying_header(path: Path) -> None:
    """x_train's header declares (10^9, 8, 8) images (64 GB); the archive holds 20 of them."""
    with zipfile.ZipFile(path, "w") as archive:
        _member(archive, "x_train", (10**9, 8, 8), [GOOD.tobytes()])
        _member(archive, "x_test", GOOD.shape, [GOOD.tobytes()])


def _deflate_bomb(path: Path) -> None:
    """x_train: 300 MiB of zeros deflated to ~300 KiB, honest about its size (a bomb of the issue's kind, smaller)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        zeros = bytes(2**20)
        _member(archive, "x_train", (300, 1024, 1024), (zeros for _ in range(300)))
        _member(archive, "x_test", GOOD.shape, [GOOD.tobytes()])


@pytest.mark.parametrize(("case", "write", "message"), [
    ("lying header", _lying_header, "x_train in {path}: its header declares (1000000000, 8, 8) uint8 (59.6 GiB) but "
                                    "the archive holds 1.2 KiB of it: the file is damaged or not numpy's"),
    ("deflate bomb", _deflate_bomb, "x_train in {path} inflates from ... KiB to 300.0 MiB (more than 100x): refused "
                                    "as a decompression bomb; if these are your images, save them uncompressed"),
    ("object labels", _npz(x_train=GOOD, x_test=GOOD, y_train=np.array([object()] * 20), y_test=LABELS),
     "y_train in {path} holds Python objects (dtype object), which aeexp never unpickles; save it as numbers"),
], ids=["lying header", "deflate bomb", "object labels"])
def test_what_an_npz_declares_is_checked_before_anything_is_read(tmp_path, case, write, message):
    """The sizes each member declares (its header; the archive's inflated size) against what the archive holds and
    how far it inflates, before the data is read: no MemoryError, no gigabytes inflated; an object array is never
    unpickled. One line naming the file and the key."""
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(DataError) as info:
        data.preset("arrays", path=str(path))
    assert "\n" not in str(info.value)
    assert all(part in str(info.value) for part in message.format(path=path).split("...")), str(info.value)


def test_an_npz_path_that_is_a_device_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"^dataset.path='/dev/zero' is invalid: it is not a regular file \(a "
                                          r"device or a pipe\); give an .npz file"):
        data.preset("arrays", path="/dev/zero")


def test_an_npz_path_that_does_not_exist_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^dataset.path='.*/none.npz' is invalid: there is no such file"):
        data.preset("arrays", path=str(tmp_path / "none.npz"))


# --------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_from_its_python_batches(tmp_path):
    folder = write_cifar10(tmp_path / "data", n_per_batch=20)
    ds = data.load(data.preset("cifar10", root=str(tmp_path / "data"), download=False))
    assert ds.image_shape == (3, 32, 32) and ds.class_names[:2] == ["airplane", "automobile"]
    test_images, test_labels = colour_images(20, 5, 32)  # the test batch was written with seed 0 + 5
    assert np.array_equal(ds.test.images.numpy(), test_images.transpose(0, 3, 1, 2))
    assert ds.test.labels.tolist() == test_labels.tolist()
    assert len(ds.train) + len(ds.val) == 100
    assert (folder / "data_batch_1").is_file()


def test_a_cifar_batch_that_would_run_code_is_refused_without_running_it(tmp_path):
    folder = write_cifar10(tmp_path / "data", n_per_batch=20)
    witness = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {witness}",)

    with (folder / "data_batch_3").open("wb") as handle:
        pickle.dump({"data": Payload(), "labels": [0]}, handle, protocol=2)
    with pytest.raises(DataError, match=r"data_batch_3 as a CIFAR-10 batch \(UnpicklingError: it names posix.system"):
        data.load(data.preset("cifar10", root=str(tmp_path / "data"), download=False))
    assert not witness.exists()


def test_missing_cifar10_files_offline_name_the_files_and_folders(tmp_path):
    with pytest.raises(DataError) as info:
        data.load(data.preset("cifar10", root=str(tmp_path), download=False))
    message = str(info.value)
    assert message.startswith("dataset cifar10: files not found. Expected data_batch_1, data_batch_2, ")
    assert f"{tmp_path}/cifar-10-batches-py" in message and "download is off (dataset.download=false)" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


# --------------------------------------------------------------------------------------------- SVHN


def test_svhn_from_its_mat_files(tmp_path):
    write_svhn(tmp_path, n_train=30, n_test=20)
    ds = data.load(data.preset("svhn", root=str(tmp_path), download=False))
    images, labels = colour_images(20, 1, 32)
    assert np.array_equal(ds.test.images.numpy(), images.transpose(0, 3, 1, 2))
    assert ds.test.labels.tolist() == labels.tolist()  # the files' 10 is a 0
    assert ds.class_names == [str(d) for d in range(10)]


def test_a_corrupt_svhn_file_is_named(tmp_path):
    write_svhn(tmp_path, n_train=30, n_test=20)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 50)
    with pytest.raises(DataError, match=r"cannot read .*test_32x32.mat as an SVHN .mat file"):
        data.load(data.preset("svhn", root=str(tmp_path), download=False))


# --------------------------------------------------------------------------------------------- EMNIST


def test_emnist_balanced_upright_from_gzipped_idx(tmp_path):
    write_emnist(tmp_path, "balanced", n_train=40, n_test=20)
    source = data.preset("emnist", root=str(tmp_path), download=False)
    assert isinstance(source, Emnist) and len(source.class_names) == 47 and source.class_names[10] == "A"
    ds = data.load(source)
    images, labels = synthetic_images(20, 1, 28)
    assert np.array_equal(ds.test.images.numpy()[:, 0], images)  # the files hold them transposed
    assert ds.test.labels.tolist() == labels.tolist()


def test_emnist_letters_are_26_classes_from_label_1(tmp_path):
    write_emnist(tmp_path, "letters", n_train=60, n_test=30, classes=26, first_label=1)
    ds = data.load(data.preset("emnist", root=str(tmp_path), download=False, split="letters"))
    assert ds.class_names[0] == "a" and len(ds.class_names) == 26
    assert ds.test.labels.tolist() == synthetic_images(30, 1, 28, 26)[1].tolist()  # 'a' is 0 here, 1 in the files


def test_an_unknown_emnist_split_names_the_choices():
    with pytest.raises(ConfigError) as info:
        data.preset("emnist", split="greek")
    assert str(info.value) == ("dataset.split='greek' is invalid: choose one of balanced, byclass, bymerge, digits, "
                               "letters, mnist.")


def test_missing_emnist_files_name_the_split_files(tmp_path):
    write_emnist(tmp_path, "digits", n_train=20, n_test=10)  # another split's files do not count
    with pytest.raises(DataError, match="emnist-balanced-train-images-idx3-ubyte"):
        data.load(data.preset("emnist", root=str(tmp_path), download=False))


def test_the_sources_know_their_shapes_before_reading(tmp_path):
    assert Cifar10(root=str(tmp_path)).image_shape == Svhn(root=str(tmp_path)).image_shape == (3, 32, 32)
    assert Emnist("letters", root=str(tmp_path)).image_shape == (1, 28, 28)
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing made
