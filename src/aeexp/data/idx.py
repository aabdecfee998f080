"""IDX files (the MNIST format, gzipped or not) and the datasets stored in them: MNIST, Fashion-MNIST, KMNIST.

An :class:`IdxDataset` is described by its config: the folder name torchvision uses for it, its class names, the
image size, where else to look and where to get the files; adding such a dataset is one YAML in ``conf/dataset``.
"""

from __future__ import annotations

import gzip
import os
import stat
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

from aeexp.data.dataset import Arrays
from aeexp.data.downloads import StandardFiles
from aeexp.errors import DataError, require

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

MAX_IDX_DIMS = 32  # numpy 1.x's limit; real IDX files have 1 to 4
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Deflate's highest ratio: one 258-byte match per 2 bits is 1032:1; no gzip file inflates to more than this many
# times its size (plus its header), so a header that claims more is a lie, told without inflating anything.
MAX_INFLATE_RATIO = 1032
_READ_CHUNK = 1 << 24  # bytes per read: the inflated data is read into its final buffer a chunk at a time


class IdxFormatError(DataError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


def _header(raw: bytes | bytearray, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and header length an IDX file's first bytes declare; IdxFormatError when they are not an
    IDX header or stop before its end."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 0 < raw[3] <= MAX_IDX_DIMS:
        raise IdxFormatError(f"{path} is not an IDX file (bad magic number {bytes(raw[:4]).hex() or 'empty'})")
    header_end = 4 + 4 * raw[3]
    if len(raw) < header_end:
        raise IdxFormatError(f"{path} is truncated: its header needs {header_end} bytes, has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(bytes(raw[4:header_end]), dtype=">u4"))
    return shape, np.dtype(_IDX_DTYPES[raw[2]]), header_end


def _data_size(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.float64)) * dtype.itemsize


def _size_error(path: Path, shape: tuple[int, ...], expected: int, actual: str | int, longer: bool
                ) -> IdxFormatError:
    problem = "longer than its header says" if longer else "truncated"
    return IdxFormatError(f"{path} is {problem}: header {shape} needs {expected} data bytes, file has {actual}; "
                          "fetch it again")


def _read_declared(stream: IO[bytes], path: Path, available: int, compressed: bool) -> bytearray:
    """An IDX file's header, then exactly the data it declares, from ``stream`` (plain or inflating) that holds
    ``available`` bytes (for a gzip file: at most). A size that does not fit is refused before the data is read,
    and no more than the declared data (plus one byte) is read or inflated."""
    raw = bytearray(stream.read(4))
    if len(raw) == 4 and raw[0] == 0 and raw[1] == 0 and 0 < raw[3] <= MAX_IDX_DIMS:
        raw += stream.read(4 * raw[3])
    shape, dtype, header_end = _header(raw, path)
    expected = _data_size(shape, dtype)
    if compressed and header_end + expected > available:
        raise _size_error(path, shape, expected, f"gzip data that inflates to at most {available - header_end}",
                          longer=False)
    if not compressed and header_end + expected != available:
        raise _size_error(path, shape, expected, available - header_end, header_end + expected < available)
    buffer = bytearray(header_end + expected + (1 if compressed else 0))  # one more: is there more than declared?
    buffer[:header_end] = raw
    filled = header_end
    with memoryview(buffer) as view:
        while filled < len(buffer):
            got = stream.readinto(view[filled:filled + _READ_CHUNK])  # type: ignore[attr-defined]
            if not got:
                break
            filled += got
    if filled != header_end + expected:
        longer = filled > header_end + expected
        raise _size_error(path, shape, expected, "more" if longer else filled - header_end, longer)
    del buffer[filled:]
    return buffer


def _file_bytes(path: Path) -> bytes | bytearray:
    """An IDX file's bytes (header and data), gunzipped when they are gzip's (told apart by content, not by name).

    Only a regular file is read (not a device such as /dev/zero, nor a pipe), and only as much as its header
    declares, after checking that the file can hold that much: a lying header or a decompression bomb costs no
    more memory than the data it declares.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path} is not a regular file (a device, a pipe or a folder); give an IDX file")
        handle = path.open("rb")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    with handle:
        if handle.read(2) != b"\x1f\x8b":
            handle.seek(0)
            return _read_declared(handle, path, info.st_size, compressed=False)
        handle.seek(0)
        try:
            with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                return _read_declared(stream, path, MAX_INFLATE_RATIO * info.st_size + 1024, compressed=True)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(f"{path} is a corrupt or truncated gzip file ({err}); fetch it again") from None


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What tells whether a file changed: device, inode, size, modification time."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class _ReadAhead:
    """Files read (and gunzipped) by a background thread, each kept until ``take`` hands it over."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.done: dict[Path, tuple[tuple[int, int, int, int], bytes]] = {}
        self.thread = threading.Thread(target=self._read, name="aeexp-read-ahead", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for path in self.paths:
            try:
                identity = _identity(path)
                self.done[path] = identity, _file_bytes(path)
            except Exception:  # whatever went wrong, load reads the file again and says what
                continue

    def take(self, path: Path) -> bytes | None:
        """The bytes read ahead for ``path`` if the file has not changed since, else None."""
        if path not in self.paths:
            return None
        self.thread.join()
        identity, raw = self.done.pop(path, (None, b""))
        try:
            return raw if identity is not None and identity == _identity(path) else None
        except OSError:
            return None


_read_ahead: _ReadAhead | None = None


def read_ahead(paths: Sequence[Path]) -> None:
    """Start reading (and gunzipping) ``paths`` in a background thread, for the next :func:`read_idx` of them.

    For the command line, which calls it before importing torch, MLflow and the rest (5-6 s on one core while
    the other idles; gunzipping, most of reading, lets go of Python's lock): a Fashion-MNIST run then finds its
    files read, their 0.3-0.5 s done meanwhile. Best effort: a file it cannot read is left for ``read_idx`` to
    report.
    """
    global _read_ahead
    if paths:
        _read_ahead = _ReadAhead(sorted(paths))


def _read_ahead_bytes(path: Path) -> bytes | None:
    return _read_ahead.take(path) if _read_ahead is not None else None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, gzipped or not (told apart by content, not by name); raise IdxFormatError."""
    raw = _read_ahead_bytes(path)
    if raw is None:
        raw = _file_bytes(path)
    shape, dtype, header_end = _header(raw, path)
    expected, actual = _data_size(shape, dtype), len(raw) - header_end
    if actual != expected:
        raise _size_error(path, shape, expected, actual, actual > expected)
    try:
        array = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    except ValueError as err:  # e.g. a zero dimension beside dimensions too large for numpy
        raise IdxFormatError(f"{path} has an impossible shape {shape} ({err})") from None
    native = array.astype(dtype.newbyteorder("="), copy=False)  # a buffer read for it alone: no copy needed
    return native if native.flags.writeable else native.copy()


class IdxDataset(StandardFiles):
    """A dataset of four IDX files (train/test images/labels, gzipped or not) found under ``root``.

    ``folder``: the name torchvision gives it (``MNIST``), also the folder looked in; ``class_names``: the labels'
    names in order; ``image_size``: [height, width]; ``also_in``: other folders to look in (Debian's Fashion-MNIST);
    ``source``: where to get the files by hand. With ``download`` missing files are fetched by torchvision.
    """

    suffixes = ("", ".gz")
    label_offset = 0  # the smallest label in the files (EMNIST letters: 1), subtracted when read

    def __init__(self, name: str, folder: str, class_names: Sequence[str], image_size: Sequence[int] = (28, 28),
                 root: str = "./data", download: bool = True, also_in: Sequence[str] = (), source: str = "",
                 **kwargs: Any) -> None:
        super().__init__(name, root, download, also_in, source, **kwargs)
        require(len(image_size) == 2 and all(s > 0 for s in image_size), "image_size", list(image_size),
                "give [height, width]")
        require(len(class_names) >= 1, "class_names", list(class_names), "give the name of each class")
        self.folder, self.class_names = folder, [str(c) for c in class_names]
        self.image_shape = (1, int(image_size[0]), int(image_size[1]))

    def file_names(self) -> dict[str, str]:
        return dict(IDX_FILES)

    def read_ahead(self) -> None:
        try:
            files = self.find_files()
        except OSError:
            return
        if files:
            read_ahead(list(files.values()))

    def fetch(self, torchvision: ModuleType) -> None:
        dataset_class = getattr(torchvision.datasets, self.folder, None)
        if dataset_class is None:
            raise LookupError(f"torchvision has no dataset {self.folder}")
        dataset_class(str(self.root), train=True, download=True)
        dataset_class(str(self.root), train=False, download=True)

    def read(self) -> Arrays:
        files = self.locate()
        arrays = {key: read_idx(path) for key, path in files.items()}
        for split in ("train", "test"):
            self._check_split(files, arrays, split)
        offset = self.label_offset
        return Arrays(arrays["train_images"][:, None], arrays["train_labels"] - offset,
                      arrays["test_images"][:, None], arrays["test_labels"] - offset)

    def _check_split(self, files: dict[str, Path], arrays: dict[str, np.ndarray], split: str) -> None:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_file, labels_file = files[f"{split}_images"], files[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise IdxFormatError(f"{images_file} / {labels_file}: expected images (N, H, W) and labels (N,), got "
                                 f"{images.shape} and {labels.shape}")
        if images.shape[0] != labels.shape[0]:
            raise IdxFormatError(f"{images_file} holds {images.shape[0]} images but {labels_file} holds "
                                 f"{labels.shape[0]} labels; the files do not belong together")
        for path, array in ((images_file, images), (labels_file, labels)):
            if array.dtype != np.uint8:
                raise IdxFormatError(f"{path} holds {array.dtype} values; expected unsigned bytes")
        offset = self.label_offset
        if labels.size and (labels.max() >= len(self.class_names) + offset or labels.min() < offset):
            wrong = labels.max() if labels.max() >= len(self.class_names) + offset else labels.min()
            raise IdxFormatError(f"{labels_file} holds label {wrong}; {self.name} has "
                                 f"{len(self.class_names)} classes")
        if images.shape[1:] != self.image_shape[1:]:
            raise IdxFormatError(f"{images_file} holds {images.shape[1:]} images, expected {self.image_shape[1:]} "
                                 f"for {self.name}")
