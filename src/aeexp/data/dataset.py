"""A dataset as aeexp trains on it: a source of images (:class:`ImageDataset`) and its train/val/test splits.

A source knows its name, image shape and class names when it is made, before any file is read, so that a config is
checked against them first; ``read`` then gives the train and test arrays, and :func:`load` holds out a seeded
validation share of the training split and makes uint8 tensors of it all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from aeexp.data.sampling import sample_indices
from aeexp.errors import DataError, require

if TYPE_CHECKING:
    import torch
# torch itself is imported where tensors are made: the CLI starts reading a dataset's files before its slow imports.


@dataclass
class Arrays:
    """What a source reads: uint8 images ``(N, C, H, W)`` and integer labels ``(N,)`` of its train and test splits;
    the labels of both are None for unlabelled images (a flat folder, an ``.npz`` without ``y_train``)."""

    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None


class ImageDataset:
    """The base of every dataset source: ``name``, ``val_fraction``, and what subclasses declare in ``__init__``
    without reading a file, ``image_shape`` (C, H, W) and ``class_names`` (empty for unlabelled images); ``read()``
    gives the :class:`Arrays`.

    Optional: ``read_ahead()``, called by the command line before its slow imports, may start reading the files.
    """

    image_shape: tuple[int, int, int]
    class_names: list[str]

    def __init__(self, name: str, val_fraction: float = 0.1, train_size: int | None = None,
                 test_size: int | None = None) -> None:
        require(bool(str(name).strip()), "name", name, "give the dataset a name")
        require(0.0 < val_fraction < 1.0, "val_fraction", val_fraction, "it must lie strictly between 0 and 1")
        require(train_size is None or train_size >= 2, "train_size", train_size, "it must be at least 2 (or null)")
        require(test_size is None or test_size >= 1, "test_size", test_size, "it must be positive (or null)")
        self.name = str(name)
        self.val_fraction = float(val_fraction)
        self.train_size, self.test_size = train_size, test_size

    def read(self) -> Arrays:
        """The train and test images and labels."""
        raise NotImplementedError

    def read_ahead(self) -> None:
        """Start reading the files in the background (optional; nothing by default)."""


@dataclass
class Split:
    """Images as uint8 ``(N, C, H, W)`` and integer labels ``(N,)`` (None: unlabelled images)."""

    images: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), None if self.labels is None else self.labels.to(device))


@dataclass
class Dataset:
    """The three splits of one dataset, its class names and image shape."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    digest: str = ""  # of the decoded arrays its splits came from (aeexp.data.digest)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def labelled(self) -> bool:
        """Whether the images have labels (what kNN accuracies and colours by class need)."""
        return self.train.labels is not None

    @property
    def input_dim(self) -> int:
        return math.prod(self.image_shape)

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.name, self.train.to(device), self.val.to(device), self.test.to(device), self.class_names,
                       self.digest)


def _as_split(images: np.ndarray, labels: np.ndarray | None) -> Split:
    import torch

    return Split(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                 None if labels is None else torch.from_numpy(np.asarray(labels).astype(np.int64)))


def _check(source: ImageDataset, arrays: Arrays) -> None:
    """The arrays a source read agree with what it declared; DataError otherwise (a bug in the source)."""
    if (arrays.train_labels is None) != (arrays.test_labels is None):
        raise DataError(f"dataset {source.name}: labels for one split but not the other; give both or neither")
    for split in ("train", "test"):
        images, labels = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(source.image_shape):
            raise DataError(f"dataset {source.name}: its {split} images are {images.shape}, not (N, "
                            f"{', '.join(str(s) for s in source.image_shape)}) as it declares")
        if labels is not None and len(labels) != len(images):
            raise DataError(f"dataset {source.name}: {len(images)} {split} images but {len(labels)} labels")


def _subset(images: np.ndarray, labels: np.ndarray | None, size: int | None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """A sample of ``size`` rows (all of them when None or not fewer; stratified when labelled), in file order, the
    same for every run: a data size, not part of a run's randomness."""
    if size is None or size >= len(images):
        return images, labels
    chosen = sample_indices(None if labels is None else np.asarray(labels), len(images), size, seed=0)
    return images[chosen], None if labels is None else labels[chosen]


def load(source: ImageDataset, seed: int = 0) -> Dataset:
    """Read ``source``, keep ``train_size``/``test_size`` of its splits (stratified, fixed), and hold out a seeded
    ``source.val_fraction`` of the training split for validation."""
    import torch

    from aeexp.data.digest import arrays_digest

    arrays = source.read()
    _check(source, arrays)
    arrays.train_images, arrays.train_labels = _subset(arrays.train_images, arrays.train_labels, source.train_size)
    arrays.test_images, arrays.test_labels = _subset(arrays.test_images, arrays.test_labels, source.test_size)
    n = len(arrays.train_images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_val = max(1, round(n * source.val_fraction))
    if n - n_val < 1:
        raise DataError(f"dataset {source.name}: holding out {n_val} of its {n} training images for validation "
                        f"(val_fraction={source.val_fraction}) leaves none to train on; give more images or a smaller "
                        "dataset.val_fraction")
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    labels = arrays.train_labels
    return Dataset(
        name=source.name,
        train=_as_split(arrays.train_images[train_idx], None if labels is None else labels[train_idx]),
        val=_as_split(arrays.train_images[val_idx], None if labels is None else labels[val_idx]),
        test=_as_split(arrays.test_images, arrays.test_labels),
        class_names=list(source.class_names),
        digest=arrays_digest(arrays),
    )
