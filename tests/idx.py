"""Writers of real IDX files (the MNIST format) and tiny class-structured image sets for the tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from aeexp.data import IDX_FILES


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzipped, with a ``.gz`` suffix, when ``gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def synthetic_images(n: int, seed: int, size: int = 28, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images where class c is a bright square at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, size, size)).astype(np.float32)
    block = size // 4
    for i, c in enumerate(labels):
        row, col = divmod(int(c), 4)
        top, left = row * block + rng.integers(0, 2), col * block + rng.integers(0, 2)
        images[i, top:top + block, left:left + block] += 200
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(directory: Path, n_train: int = 300, n_test: int = 100, gz: dict[str, bool] | None = None,
                  seed: int = 0) -> dict[str, Path]:
    """The four IDX files of a tiny MNIST-like dataset in ``directory``; returns their paths."""
    gz = gz or {}
    train_x, train_y = synthetic_images(n_train, seed)
    test_x, test_y = synthetic_images(n_test, seed + 1)
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    return {key: write_idx(directory / IDX_FILES[key], arrays[key], gz.get(key, False)) for key in IDX_FILES}
