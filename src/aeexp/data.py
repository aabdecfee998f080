"""Datasets by name -> train/val/test uint8 image tensors, labels and class names (IDX files, sklearn digits)."""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aeexp.config import DATASET_IMAGE_SHAPES
from aeexp.errors import DataError

if TYPE_CHECKING:
    import torch
# torch itself is imported where tensors are made: the CLI finds and reads a dataset's files (read_ahead) before
# its slow imports, which it would otherwise wait for.

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# torchvision class name (its folder under root), class names, where to get the files by hand.
IDX_DATASETS: dict[str, tuple[str, list[str], str]] = {
    "mnist": ("MNIST", [str(d) for d in range(10)], "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion_mnist": (
        "FashionMNIST",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"],
        "https://github.com/zalandoresearch/fashion-mnist (or: apt-get install dataset-fashion-mnist)",
    ),
    "kmnist": (
        "KMNIST",
        ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
        "https://github.com/rois-codh/kmnist",
    ),
}


DIGITS_TEST_FRACTION = 0.2

MAX_IDX_DIMS = 32  # numpy 1.x's limit; real IDX files have 1 to 4
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxFormatError(DataError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


@dataclass
class Split:
    """Images as uint8 ``(N, C, H, W)`` and integer labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    """The three splits of one dataset, its class names and image shape."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.image_shape))

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.name, self.train.to(device), self.val.to(device), self.test.to(device),
                       self.class_names)


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


def read_ahead(name: str, root: str | Path) -> None:
    """Start reading a dataset's IDX files in a background thread, for the next :func:`load` of it.

    For the command line, which calls it before importing torch, MLflow and the rest (5-6 s on one core while
    the other idles; gunzipping, most of reading, lets go of Python's lock): a Fashion-MNIST run then finds its
    files read, their 0.3-0.5 s done meanwhile. Best effort: files it cannot find or read are left for ``load``
    to report.
    """
    global _read_ahead
    if name not in IDX_DATASETS:
        return
    try:
        files = find_idx_files(name, Path(root).expanduser())
    except OSError:
        return
    if files:
        _read_ahead = _ReadAhead(sorted(files.values()))


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


def _idx_candidates(name: str, root: Path) -> list[Path]:
    folder, _, _ = IDX_DATASETS[name]
    dirs = [root / folder / "raw", root / folder, root / name / "raw", root / name, root]
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


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


def find_idx_files(name: str, root: Path) -> dict[str, Path] | None:
    """The four IDX files of a dataset from the first folder that holds all of them, else None."""
    for directory in _idx_candidates(name, root):
        found = _find_in(directory)
        if found:
            return found
    return None


def _download(name: str, root: Path) -> str | None:
    """Fetch the files with torchvision; return why it failed, or None."""
    from aeexp.tv import torchvision

    folder, _, _ = IDX_DATASETS[name]
    dataset_class = getattr(torchvision().datasets, folder)
    try:
        dataset_class(str(root), train=True, download=True)
        dataset_class(str(root), train=False, download=True)
    except Exception as err:  # network errors come in many types; all mean "not downloaded"
        return f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return None


def _missing_message(name: str, root: Path, download: bool, why: str | None) -> str:
    _, _, source = IDX_DATASETS[name]
    files = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    places = ", ".join(str(d) for d in _idx_candidates(name, root))
    tried = f"download failed ({why}). " if download else "download is off (dataset.download=false). "
    return (
        f"dataset {name}: files not found. Expected {files} in one of: {places}. {tried}"
        f"Put the files in {root} (from {source}), or point dataset.root at a folder that holds them."
    )


def _load_idx_dataset(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    if root.exists() and not root.is_dir():
        raise DataError(f"dataset.root={str(root)!r} is a file, not a folder; point it at a folder")
    files = find_idx_files(name, root)
    if files is None and download:
        why = _download(name, root)
        files = find_idx_files(name, root)
        if files is None:
            raise DataError(_missing_message(name, root, True, why))
    if files is None:
        raise DataError(_missing_message(name, root, False, None))
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise IdxFormatError(
                f"{files[f'{split}_images']} / {files[f'{split}_labels']}: expected images (N, H, W) and "
                f"labels (N,), got {images.shape} and {labels.shape}"
            )
        if images.shape[0] != labels.shape[0]:
            raise IdxFormatError(
                f"{files[f'{split}_images']} holds {images.shape[0]} images but "
                f"{files[f'{split}_labels']} holds {labels.shape[0]} labels; the files do not belong together"
            )
        for key in (f"{split}_images", f"{split}_labels"):
            if arrays[key].dtype != np.uint8:
                raise IdxFormatError(f"{files[key]} holds {arrays[key].dtype} values; expected unsigned bytes")
        if labels.size and labels.max() >= len(IDX_DATASETS[name][1]):
            raise IdxFormatError(f"{files[f'{split}_labels']} holds label {labels.max()}; {name} has "
                                 f"{len(IDX_DATASETS[name][1])} classes")
        if images.shape[1:] != DATASET_IMAGE_SHAPES[name][1:]:
            raise IdxFormatError(f"{files[f'{split}_images']} holds {images.shape[1:]} images, "
                                 f"expected {DATASET_IMAGE_SHAPES[name][1:]} for {name}")
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    # A fixed test split (independent of the run's seed) so that runs compare on the same images.
    return tuple(train_test_split(images, digits.target, test_size=DIGITS_TEST_FRACTION,
                                  stratify=digits.target, random_state=0))


def _as_split(images: np.ndarray, labels: np.ndarray) -> Split:
    import torch

    return Split(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).unsqueeze(1),
                 torch.from_numpy(labels.astype(np.int64)))


def load(name: str, root: str | Path = "./data", download: bool = True, val_fraction: float = 0.1,
         seed: int = 0) -> Dataset:
    """Load a dataset by name; hold out a seeded ``val_fraction`` of the training split for validation."""
    import torch

    if name == "digits":
        train_x, test_x, train_y, test_y = _load_digits()
        class_names = [str(d) for d in range(10)]
    elif name in IDX_DATASETS:
        train_x, train_y, test_x, test_y = _load_idx_dataset(name, Path(root).expanduser(), download)
        class_names = IDX_DATASETS[name][1]
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of: digits, {', '.join(IDX_DATASETS)}")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = max(1, round(len(train_y) * val_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return Dataset(
        name=name,
        train=_as_split(train_x[train_idx], train_y[train_idx]),
        val=_as_split(train_x[val_idx], train_y[val_idx]),
        test=_as_split(test_x, test_y),
        class_names=class_names,
    )
