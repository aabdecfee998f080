"""Writers of tiny image sets in real formats for the tests: PNG/JPEG folders, .npz arrays, CIFAR-10's python
batches, SVHN's .mat files and EMNIST's gzipped IDX files in torchvision's layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from idx import synthetic_images, write_idx
from PIL import Image

# A colour per class: the classes differ in hue as well as in where their square is.
HUES = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2], [1.0, 0.2, 1.0],
                 [0.2, 1.0, 1.0], [1.0, 0.6, 0.2], [0.6, 0.2, 1.0], [0.2, 0.6, 0.2], [1.0, 0.4, 0.6]])


def colour_images(n: int, seed: int, size: int = 32, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 colour images ``(N, H, W, 3)``: the grey synthetic images tinted by their class's hue."""
    grey, labels = synthetic_images(n, seed, size, classes)
    tinted = grey[..., None].astype(np.float32) * HUES[labels % len(HUES)][:, None, None, :]
    return np.clip(tinted, 0, 255).astype(np.uint8), labels


def shows_colour(png: bytes) -> bool:
    """Whether an image file shows colour: some pixel whose red, green and blue differ clearly."""
    import io

    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    return bool((np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2]) > 30).any())


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """``pixels`` (``(H, W)`` grey or ``(H, W, 3)`` colour) as a PNG or JPEG, by the path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else \
        Image.fromarray(pixels).save(path)
    return path


def write_class_folders(root: Path, n: int = 60, seed: int = 0, size: int = 16, colour: bool = True,
                        classes: int = 3, suffix: str = ".png") -> tuple[np.ndarray, np.ndarray]:
    """``root/class<c>/<i>.png``: ``n`` images of ``classes`` classes; returns the images (as written) and labels."""
    images, labels = colour_images(n, seed, size, classes) if colour else synthetic_images(n, seed, size, classes)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        write_image(root / f"class{label}" / f"{i:04d}{suffix}", pixels)
    return images, labels


def write_flat_folder(root: Path, n: int = 40, seed: int = 0, size: int = 16, colour: bool = False) -> np.ndarray:
    """``root/<i>.png``: ``n`` unlabelled images; returns them."""
    images = colour_images(n, seed, size)[0] if colour else synthetic_images(n, seed, size)[0]
    for i, pixels in enumerate(images):
        write_image(root / f"{i:04d}.png", pixels)
    return images


def write_cifar10(root: Path, n_per_batch: int = 40, seed: int = 0) -> Path:
    """CIFAR-10's python batches (pickles of dicts, as the real files) in ``root/cifar-10-batches-py``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*(f"data_batch_{b}" for b in range(1, 6)), "test_batch"]):
        images, labels = colour_images(n_per_batch, seed + i, size=32)
        batch = {"batch_label": f"batch {i}", "labels": [int(v) for v in labels],
                 "data": images.transpose(0, 3, 1, 2).reshape(n_per_batch, -1).copy(),
                 "filenames": [f"{name}_{j}.png" for j in range(n_per_batch)]}
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return folder


def write_svhn(root: Path, n_train: int = 120, n_test: int = 60, seed: int = 0) -> None:
    """SVHN's ``train_32x32.mat`` and ``test_32x32.mat`` in ``root``: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    import scipy.io

    root.mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = colour_images(n, seed + offset, size=32)
        y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})


def write_emnist(root: Path, split: str = "balanced", n_train: int = 150, n_test: int = 60, seed: int = 0,
                 classes: int = 10, first_label: int = 0) -> dict[str, Path]:
    """EMNIST's four gzipped IDX files of ``split`` in ``root/EMNIST/raw``, images stored transposed as in the real
    files; returns the paths by key."""
    folder = root / "EMNIST" / "raw"
    paths = {}
    for part, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_images(n, seed + offset, 28, classes)
        stem = f"emnist-{split}-{part}"
        paths[f"{part}_images"] = write_idx(folder / f"{stem}-images-idx3-ubyte", images.transpose(0, 2, 1), gz=True)
        paths[f"{part}_labels"] = write_idx(folder / f"{stem}-labels-idx1-ubyte", labels + first_label, gz=True)
    return paths
