"""Whether new images look like a run's training data: each image's reconstruction error (the mean squared error per
pixel of the model's output) and where it falls among the errors of the run's own test images, which every run
logs as ``test_errors.npy``. An image above the :data:`FLAG_PERCENTILE` of them looks unlike the training data."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TEST_ERRORS = "test_errors.npy"  # the artifact: each test image's reconstruction error, float32
FLAG_PERCENTILE = 99.0  # an image whose error is above this percentile of the run's test images' errors is flagged


def image_errors(images: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """The mean squared error per pixel of each of ``reconstructions`` against ``images`` (both in [0, 1])."""
    difference = reconstructions.reshape(len(images), -1).astype(np.float64) - images.reshape(len(images), -1)
    return np.square(difference).mean(axis=1).astype(np.float32)


def percentiles(errors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each of ``errors``, the percentage of ``reference`` errors at or below it (0 to 100)."""
    ranked = np.sort(np.asarray(reference, dtype=np.float64))
    return (100.0 * np.searchsorted(ranked, errors, side="right") / len(ranked)).astype(np.float32)


def read_reference(path: Path) -> np.ndarray:
    """A ``test_errors.npy`` read as data (no pickles): a non-empty 1-D array of finite errors >= 0, else ValueError."""
    errors = np.load(path, allow_pickle=False)
    if errors.ndim != 1 or not len(errors) or errors.dtype.kind != "f" or not np.isfinite(errors).all() \
            or (errors < 0).any():
        raise ValueError(f"{path.name} is not a list of reconstruction errors ({errors.dtype}, shape {errors.shape})")
    return errors


def reference_beside(model_folder: Path) -> np.ndarray | None:
    """The test errors next to a local ``model_folder`` (a run's artifact folder holds both); None when there are none
    (a run logged before them) or they cannot be read."""
    path = model_folder.parent / TEST_ERRORS
    return read_or_none(path) if path.is_file() else None


def read_or_none(path: Path) -> np.ndarray | None:
    """:func:`read_reference`, or None when ``path`` cannot be read or holds no errors."""
    try:
        return read_reference(path)
    except (OSError, ValueError):
        return None


def table(errors: np.ndarray, ranks: np.ndarray | None, names: Sequence[str] | None) -> bytes:
    """The CSV written next to the codes: a row per image (its file, when read from PNGs), its error, its percentile
    among the run's test images and whether it looks unlike the training data (1) or not (0)."""
    lines = io.StringIO()
    lines.write(("file," if names is not None else "") + "index,error,percentile,unlike_training\n")
    for i, error in enumerate(errors):
        name = f"{names[i]}," if names is not None else ""
        rank = f"{ranks[i]:.2f},{int(ranks[i] > FLAG_PERCENTILE)}" if ranks is not None else ","
        lines.write(f"{name}{i},{error:.6g},{rank}\n")
    return lines.getvalue().encode()


def summary(ranks: np.ndarray | None) -> str:
    """One line: how many images look unlike the training data, or why that could not be said."""
    if ranks is None:
        return ("unlike the training data: not known, the model's run logged no test errors (an older run, or a model "
                "outside a run's folder)")
    flagged = int((ranks > FLAG_PERCENTILE).sum())
    return (f"{flagged} of {len(ranks)} images look unlike the training data (reconstruction error above the "
            f"{FLAG_PERCENTILE:g}th percentile of the run's test images)")
