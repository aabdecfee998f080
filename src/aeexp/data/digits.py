"""scikit-learn's 1,797 8x8 handwritten digits: embedded in the package, needs no file and no download.

Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``) without importing scikit-learn, whose
import brings SciPy (~1 s): the same arrays as ``sklearn.datasets.load_digits()``, and the same split as
``train_test_split(..., stratify=...)`` (its draw replicated with numpy's ``RandomState``).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np

from aeexp.data.dataset import Arrays, ImageDataset
from aeexp.errors import DataError

TEST_FRACTION = 0.2
SPLIT_SEED = 0


class Digits(ImageDataset):
    """``sklearn.datasets.load_digits`` as uint8 images (its 0..16 levels scaled to 0..255), with a fixed stratified
    20% test split (independent of the run's seed, so that runs compare on the same images)."""

    def __init__(self, name: str = "digits", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.image_shape = (1, 8, 8)
        self.class_names = [str(d) for d in range(10)]

    def read(self) -> Arrays:
        levels, labels = read_digits()
        images = np.round(levels * (255.0 / 16.0)).astype(np.uint8)[:, None]
        train, test = stratified_split(labels, math.ceil(TEST_FRACTION * len(labels)), SPLIT_SEED)
        return Arrays(images[train], labels[train], images[test], labels[test])


def digits_file() -> Path:
    """The digits' file inside the installed scikit-learn (found without importing it)."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise DataError("dataset=digits reads the digits scikit-learn ships, and no installed scikit-learn has them "
                    "(sklearn/datasets/data/digits.csv.gz); reinstall it: pip install scikit-learn")


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits()``'s ``images`` (float64 ``(1797, 8, 8)``, levels 0..16) and ``target`` (int), from its file."""
    with gzip.open(digits_file(), "rt") as file:
        values = np.loadtxt(file, delimiter=",")
    return values[:, :-1].reshape(-1, 8, 8), values[:, -1].astype(int)


def stratified_split(labels: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The train and test indices of ``train_test_split(..., test_size=n_test, stratify=labels, random_state=seed)``
    (scikit-learn's ``StratifiedShuffleSplit``: per class, the approximate mode of a hypergeometric draw, ties broken
    at random; each class's rows shuffled; both lists shuffled), drawn in the same order from the same ``RandomState``.
    """
    n_train = len(labels) - n_test
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _approximate_mode(counts, n_train, rng)
    test_counts = _approximate_mode(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, n, t in zip(by_class, train_counts, test_counts, strict=True):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:n])
        test.extend(shuffled[n:n + t])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``n_draws`` come from each class (scikit-learn's ``_approximate_mode``): the floor of each class's
    share, then one more to the classes with the largest remainders, ties drawn with ``rng``."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if need <= 0:
            break
        (tied,) = np.where(remainder == value)
        chosen = rng.choice(tied, size=min(len(tied), need), replace=False)
        floored[chosen] += 1
        need -= len(chosen)
    return floored.astype(int)
