"""How alike the codes of two runs are on the same test images: linear CKA and the overlap of 10-NN neighbourhoods,
and the small artifact each run logs for it (``stability_codes.npz``: the codes of a fixed subset of test images).

The subset is the same for every run of a dataset: the test split does not depend on a run's seed (it is the
source's test split, cut to ``dataset.test_size`` by a sample fixed at seed 0, in file order), and the rows kept here
are drawn at seed 0 too. Only the validation share depends on the seed. The rows are stored with the codes, so two
runs whose rows differ (another dataset or ``test_size``) are never compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

from aeexp.data.sampling import sample_indices

CODES_ARTIFACT = "stability_codes.npz"
N_IMAGES = 500  # test images whose codes a run logs: float16, 500 x 32 codes is ~32 kB
NEIGHBOURS = 10  # k of the neighbourhood overlap
MEASURES = ("code_cka", f"code_knn{NEIGHBOURS}_overlap")  # the by-setting table's columns (<name>_mean, _std)


def fixed_rows(n_test: int, labels: np.ndarray | None) -> np.ndarray:
    """The test rows whose codes a run logs: at most :data:`N_IMAGES`, stratified by ``labels``, drawn at seed 0
    (the same rows for every run of the same test split)."""
    return sample_indices(labels, n_test, min(N_IMAGES, n_test), seed=0)


def write_codes(codes: np.ndarray, labels: np.ndarray | None, folder: Path) -> Path:
    """``stability_codes.npz`` in ``folder``: the codes of :func:`fixed_rows` as float16, and those rows."""
    rows = fixed_rows(len(codes), labels)
    path = folder / CODES_ARTIFACT
    np.savez_compressed(path, codes=np.asarray(codes[rows], dtype=np.float16), rows=rows.astype(np.int64))
    return path


def read_codes(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The codes (float64) and rows a run logged, or None when the file is not a well-formed codes file (it is read
    as data: no pickles, shapes checked)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            codes, rows = arrays["codes"], arrays["rows"]
    except (OSError, ValueError, KeyError):
        return None
    if codes.ndim != 2 or rows.ndim != 1 or len(codes) != len(rows) or codes.dtype.kind != "f" or rows.dtype.kind \
            not in "iu":
        return None
    return codes.astype(np.float64), rows


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two code matrices of the same images (rows): 1 when one is a rotation
    and uniform scaling of the other, near 0 when unrelated; NaN when either has no variance (a collapsed code)."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    scale = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if not scale > 0:
        return math.nan
    return float(min(1.0, np.linalg.norm(x.T @ y) ** 2 / scale))


def _neighbours(codes: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows (Euclidean; ties broken by row order)."""
    squared = (codes ** 2).sum(axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * codes @ codes.T
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def knn_overlap(x: np.ndarray, y: np.ndarray, k: int = NEIGHBOURS) -> float:
    """The mean share of each image's ``k`` nearest neighbours that the two code matrices agree on (in [0, 1])."""
    k = min(k, len(x) - 1)
    if k < 1:
        return math.nan
    ours, theirs = _neighbours(x, k), _neighbours(y, k)
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(ours, theirs, strict=True)]
    return float(np.mean(shared) / k)


def across_runs(codes: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[float, float, int]]:
    """Each of :data:`MEASURES` over every pair of runs' ``(codes, rows)`` with the same rows: mean, standard
    deviation (n - 1 in the denominator; 0 for one pair) and number of pairs; a measure with no finite pair is left
    out."""
    values: dict[str, list[float]] = {name: [] for name in MEASURES}
    for (x, x_rows), (y, y_rows) in combinations(codes, 2):
        if x_rows.shape != y_rows.shape or not np.array_equal(x_rows, y_rows) or not (
                np.isfinite(x).all() and np.isfinite(y).all()):
            continue
        for name, value in zip(MEASURES, (linear_cka(x, y), knn_overlap(x, y)), strict=True):
            if math.isfinite(value):
                values[name].append(value)
    return {name: (float(np.mean(found)), float(np.std(found, ddof=1)) if len(found) > 1 else 0.0, len(found))
            for name, found in values.items() if found}
