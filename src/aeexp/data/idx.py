"""IDX files (the MNIST format, gzipped or not) and the datasets stored in them: MNIST, Fashion-MNIST, KMNIST.

An :class:`IdxDataset` is described by its config: the folder name torchvision uses for it, its class names, the
image size, where else to look and where to get the files; adding such a dataset is one YAML in ``conf/dataset``.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aeexp.data.dataset import Arrays, ImageDataset
from aeexp.errors import DataError, require

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

MAX_IDX_DIMS = 32  # numpy 1.x's limit; real IDX files have 1 to 4
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxFormatError(DataError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


def _file_bytes(path: Path) -> bytes:
    """The bytes of a file, gunzipped when they are gzip's (told apart by content, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(f"{path} is a corrupt or truncated gzip file ({err}); fetch it again") from None
    return raw


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
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 0 < raw[3] <= MAX_IDX_DIMS:
        raise IdxFormatError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise IdxFormatError(f"{path} is truncated: its header needs {header_end} bytes, has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    actual = len(raw) - header_end
    if actual != expected:
        problem = "truncated" if actual < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path} is {problem}: header {shape} needs {expected} data bytes, file has {actual}; "
            "fetch it again"
        )
    try:
        array = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    except ValueError as err:  # e.g. a zero dimension beside dimensions too large for numpy
        raise IdxFormatError(f"{path} has an impossible shape {shape} ({err})") from None
    return array.astype(dtype.newbyteorder("="))


def _find_in(directory: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


class IdxDataset(ImageDataset):
    """A dataset of four IDX files (train/test images/labels, gzipped or not) found under ``root``.

    ``folder``: the name torchvision gives it (``MNIST``), also the folder looked in; ``class_names``: the labels'
    names in order; ``image_size``: [height, width]; ``also_in``: other folders to look in (Debian's Fashion-MNIST);
    ``source``: where to get the files by hand. With ``download`` missing files are fetched by torchvision.
    """

    def __init__(self, name: str, folder: str, class_names: Sequence[str], image_size: Sequence[int] = (28, 28),
                 root: str = "./data", download: bool = True, also_in: Sequence[str] = (), source: str = "",
                 **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        require(len(image_size) == 2 and all(s > 0 for s in image_size), "image_size", list(image_size),
                "give [height, width]")
        require(len(class_names) >= 1, "class_names", list(class_names), "give the name of each class")
        self.folder, self.class_names = folder, [str(c) for c in class_names]
        self.image_shape = (1, int(image_size[0]), int(image_size[1]))
        self.root, self.download = Path(root).expanduser(), download
        self.also_in, self.source = [Path(p) for p in also_in], source

    def candidates(self) -> list[Path]:
        """The folders searched for the four files, in order."""
        root = self.root
        return [root / self.folder / "raw", root / self.folder, root / self.name / "raw", root / self.name, root,
                *self.also_in]

    def find_files(self) -> dict[str, Path] | None:
        """The four IDX files from the first folder that holds all of them, else None."""
        for directory in self.candidates():
            found = _find_in(directory)
            if found:
                return found
        return None

    def read_ahead(self) -> None:
        try:
            files = self.find_files()
        except OSError:
            return
        if files:
            read_ahead(list(files.values()))

    def _download(self) -> str | None:
        """Fetch the files with torchvision; return why it failed, or None."""
        from aeexp.tv import torchvision

        dataset_class = getattr(torchvision().datasets, self.folder, None)
        if dataset_class is None:
            return f"torchvision has no dataset {self.folder}"
        try:
            dataset_class(str(self.root), train=True, download=True)
            dataset_class(str(self.root), train=False, download=True)
        except Exception as err:  # network errors come in many types; all mean "not downloaded"
            return f"{type(err).__name__}: {err}".splitlines()[0][:300]
        return None

    def _missing_message(self, why: str | None) -> str:
        files = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
        places = ", ".join(str(d) for d in self.candidates())
        tried = f"download failed ({why}). " if self.download else "download is off (dataset.download=false). "
        source = f" (from {self.source})" if self.source else ""
        return (f"dataset {self.name}: files not found. Expected {files} in one of: {places}. {tried}"
                f"Put the files in {self.root}{source}, or point dataset.root at a folder that holds them.")

    def read(self) -> Arrays:
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"dataset.root={str(self.root)!r} is a file, not a folder; point it at a folder")
        files = self.find_files()
        if files is None and self.download:
            why = self._download()
            files = self.find_files()
            if files is None:
                raise DataError(self._missing_message(why))
        if files is None:
            raise DataError(self._missing_message(None))
        arrays = {key: read_idx(path) for key, path in files.items()}
        for split in ("train", "test"):
            self._check_split(files, arrays, split)
        return Arrays(arrays["train_images"][:, None], arrays["train_labels"], arrays["test_images"][:, None],
                      arrays["test_labels"])

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
        if labels.size and labels.max() >= len(self.class_names):
            raise IdxFormatError(f"{labels_file} holds label {labels.max()}; {self.name} has "
                                 f"{len(self.class_names)} classes")
        if images.shape[1:] != self.image_shape[1:]:
            raise IdxFormatError(f"{images_file} holds {images.shape[1:]} images, expected {self.image_shape[1:]} "
                                 f"for {self.name}")
