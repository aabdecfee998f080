"""Images in an ``.npz`` file as a dataset (``dataset=arrays dataset.path=FILE.npz``).

Keys: ``x_train`` and ``x_test`` (images ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with C 1 or 3; uint8
or other integers 0..255, or floats in [0, 1]), optionally ``y_train`` and ``y_test`` (integer labels 0..K-1, both or
neither) and ``class_names`` (K strings). Making the source reads the images' array headers and the labels, not the
images: their shapes and the labels are checked first; ``read`` loads the images and checks their values.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from aeexp.data.dataset import Arrays, ImageDataset
from aeexp.data.pixels import as_uint8
from aeexp.errors import DataError, require

SAVE_HINT = "numpy.savez(path, x_train=..., x_test=..., y_train=..., y_test=...)"
_FORMATS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 (grey) or 3 (colour)"


# A compressed member that inflates more than this many times (and past LARGE_MEMBER bytes) is refused before it is
# read: a decompression bomb (or data too uniform to train on). Apache POI's limit for zip entries; images compress
# a few times (MNIST's IDX files about 5x).
MAX_INFLATE_RATIO = 100
LARGE_MEMBER = 64 * 2**20


def _size(n_bytes: int) -> str:
    """``3.0 GiB``, ``12.5 MiB``, ``298.7 KiB``, ``800 bytes``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def _npy_header(member: Any, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``.npy`` stream ``member``, from its header (the data is not read)."""
    from numpy.lib import format as npy

    version = npy.read_magic(member)
    read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
    if read is None:  # format 3.0: only for field names in UTF-8, which no image or label array has
        raise DataError(f"{where} is a .npy of format {version[0]}.{version[1]} (a structured array); save images "
                        f"and labels as plain arrays with {SAVE_HINT}")
    shape, _, dtype = read(member)
    return tuple(int(s) for s in shape), dtype


def _checked_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """A member's shape and dtype, after checking what its header declares against what the archive says the member
    holds, and how far it inflates: nothing of its data is read, so a lying header or a decompression bomb costs
    nothing."""
    where = f"{info.filename.removesuffix('.npy')} in {path}"
    with archive.open(info) as member:
        shape, dtype = _npy_header(member, where)
        header_end = member.tell()
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (dtype {dtype}), which aeexp never unpickles; save it as "
                        "numbers (images: integers 0..255 or floats in [0, 1]; labels: integers)")
    declared = math.prod(shape) * dtype.itemsize
    if header_end + declared != info.file_size:
        raise DataError(f"{where}: its header declares {shape} {dtype} ({_size(declared)}) but the archive holds "
                        f"{_size(max(0, info.file_size - header_end))} of it: the file is damaged or not numpy's; "
                        f"save it again with {SAVE_HINT}")
    if (info.compress_type != zipfile.ZIP_STORED and info.file_size > LARGE_MEMBER
            and info.file_size > MAX_INFLATE_RATIO * max(1, info.compress_size)):
        raise DataError(f"{where} inflates from {_size(info.compress_size)} to {_size(info.file_size)} (more than "
                        f"{MAX_INFLATE_RATIO}x): refused as a decompression bomb; if these are your images, save them "
                        "uncompressed with numpy.savez")
    return shape, dtype


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The arrays in the ``.npz`` file ``path`` by key: their shape and dtype, read from their headers and checked
    against what the archive holds (:func:`_checked_member`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {info.filename.removesuffix(".npy"): _checked_member(archive, info, path)
                    for info in archive.infolist() if info.filename.endswith(".npy")}
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not an .npz archive; save the images with {SAVE_HINT}") from None
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path} as an .npz archive ({err}); save it again with {SAVE_HINT}") from None


def image_layout(shape: tuple[int, ...], where: str) -> tuple[str, tuple[int, int, int]]:
    """How images of ``shape`` are laid out (``NHW``, ``NHWC`` or ``NCHW``) and their shape (C, H, W)."""
    if len(shape) == 3 and min(shape) > 0:
        return "NHW", (1, shape[1], shape[2])
    if len(shape) == 4 and min(shape) > 0:
        if shape[3] in (1, 3):
            return "NHWC", (shape[3], shape[1], shape[2])
        if shape[1] in (1, 3):
            return "NCHW", (shape[1], shape[2], shape[3])
    raise DataError(f"{where} has shape {shape}; give images {_FORMATS}")


def to_nchw(images: np.ndarray, layout: str) -> np.ndarray:
    """Images in ``layout`` as ``(N, C, H, W)``."""
    if layout == "NHW":
        return images[:, None]
    return images.transpose(0, 3, 1, 2) if layout == "NHWC" else images


class ArraysDataset(ImageDataset):
    """The images (and labels) of the ``.npz`` file ``path``; see the module's docstring for its keys."""

    def __init__(self, path: str | None = None, name: str = "arrays", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        require(path is not None and bool(str(path).strip()), "path", path,
                "give the .npz file of images: dataset.path=FILE.npz")
        self.path = Path(str(path)).expanduser()
        require(self.path.exists(), "path", str(path), f"there is no such file; give an .npz made by {SAVE_HINT}")
        require(not self.path.is_dir(), "path", str(path), "it is a folder; give an .npz file (or use dataset=folder)")
        require(self.path.is_file(), "path", str(path), "it is not a regular file (a device or a pipe); give an .npz "
                "file")
        headers = npz_headers(self.path)
        for key in ("x_train", "x_test"):
            if key not in headers:
                raise DataError(f"{self.path} holds no {key} (it holds: {', '.join(sorted(headers)) or 'nothing'}); "
                                f"save the images with {SAVE_HINT}")
        self.layouts = {key: image_layout(headers[key][0], f"{key} in {self.path}") for key in ("x_train", "x_test")}
        (_, train_shape), (_, test_shape) = self.layouts["x_train"], self.layouts["x_test"]
        if train_shape != test_shape:
            raise DataError(f"{self.path}: x_train holds {'x'.join(map(str, train_shape))} images but x_test "
                            f"{'x'.join(map(str, test_shape))}; give both the same image shape (C x H x W)")
        self.image_shape = train_shape
        self.labels = self._labels(headers)
        self.class_names = self._class_names() if self.labels is not None else []

    def _labels(self, headers: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray] | None:
        """``y_train`` and ``y_test`` as int64, each checked against its images' count; None when neither is given."""
        given = [key for key in ("y_train", "y_test") if key in headers]
        if not given:
            return None
        if len(given) == 1:
            missing = "y_test" if given == ["y_train"] else "y_train"
            raise DataError(f"{self.path} holds {given[0]} but no {missing}; give the labels of both splits, or none")
        labels = {}
        with np.load(self.path, allow_pickle=False) as archive:
            for split in ("train", "test"):
                values = np.asarray(archive[f"y_{split}"])
                values = values.reshape(-1) if values.ndim == 2 and 1 in values.shape else values
                n_images = headers[f"x_{split}"][0][0]
                where = f"y_{split} in {self.path}"
                if values.ndim != 1 or values.dtype.kind not in "iu":
                    raise DataError(f"{where} is {values.dtype} of shape {values.shape}; labels must be integers "
                                    "(N,), 0 to the number of classes - 1")
                if len(values) != n_images:
                    raise DataError(f"{where} holds {len(values)} labels but x_{split} {n_images} images; give one "
                                    "label per image")
                if values.size and values.min() < 0:
                    raise DataError(f"{where} holds label {values.min()}; labels must be 0 or more")
                labels[split] = values.astype(np.int64)
        return labels

    def _class_names(self) -> list[str]:
        """``class_names`` from the file, else the label values as names (``0``, ``1``, ...)."""
        assert self.labels is not None
        n_classes = int(max((int(v.max()) + 1 for v in self.labels.values() if v.size), default=0))
        with np.load(self.path, allow_pickle=False) as archive:
            if "class_names" not in archive.files:
                return [str(c) for c in range(n_classes)]
            try:
                names = np.asarray(archive["class_names"])
            except ValueError:  # an object array: it would need pickle
                names = np.asarray(None)
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"class_names in {self.path} must be a 1-d array of strings, e.g. "
                            "numpy.array(['cat', 'dog'])")
        if len(names) < n_classes:
            raise DataError(f"{self.path} holds label {n_classes - 1} but only {len(names)} class_names")
        return [str(n.decode() if isinstance(n, bytes) else n) for n in names]

    def read(self) -> Arrays:
        with np.load(self.path, allow_pickle=False) as archive:
            images = {}
            for key, (layout, _) in self.layouts.items():
                try:
                    stored = archive[key]
                except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                    raise DataError(f"cannot read {key} from {self.path} ({err}); save it again") from None
                images[key] = np.ascontiguousarray(to_nchw(as_uint8(stored, f"{key} in {self.path}"), layout))
        labels = self.labels or {}
        return Arrays(images["x_train"], labels.get("train"), images["x_test"], labels.get("test"))
