"""The baseline every autoencoder must beat: PCA with as many components as the bottleneck."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aeexp import files, metrics
from aeexp.data.cache import cache_dir

log = logging.getLogger(__name__)

CHUNK = 8192  # images converted to float at a time
CACHE_VERSION = "pca-metrics-2"  # part of every cache key: change it when pca_metrics computes anything new
METRIC_NAMES = ("pca_test_mse", *(f"pca_{name}" for name in metrics.CODE_METRICS))


@dataclass
class PCA:
    """Principal axes (rows of ``components``) and the mean of the data they were fit on."""

    mean: torch.Tensor
    components: torch.Tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.components + self.mean


def _flat_float(images: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return images[start:stop].reshape(stop - start, -1).cpu().to(torch.float32) / 255.0


def fit_pca(images: torch.Tensor, n_components: int) -> PCA:
    """PCA of uint8 ``images`` (N, ...) in [0, 1] pixel units: the mean, then the covariance of the centred
    images (float32 products, float64 sums and eigendecomposition).

    Only the ``n_components`` largest eigenpairs are computed (LAPACK's ``syevr`` through scipy): for 3x32x32 colour
    images (a 3072 x 3072 covariance) 8 s on one core, where all of them (``torch.linalg.eigh``) take 24 s; the same
    values to 1e-15."""
    n = images.shape[0]
    dim = int(np.prod(images.shape[1:]))
    total = torch.zeros(dim, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        total += _flat_float(images, start, min(n, start + CHUNK)).sum(0, dtype=torch.float64)
    mean = (total / n).float()
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        centred = _flat_float(images, start, min(n, start + CHUNK)) - mean
        covariance += (centred.T @ centred).double()
    import scipy.linalg

    _, vectors = scipy.linalg.eigh((covariance / n).numpy(), subset_by_index=[dim - n_components, dim - 1])
    components = torch.from_numpy(vectors[:, ::-1].T.copy()).float().contiguous()  # largest eigenvalue first
    return PCA(mean, components)


def pca_metrics(train_images: torch.Tensor, train_labels: np.ndarray | None, test_images: torch.Tensor,
                test_labels: np.ndarray | None, n_components: int) -> dict[str, float]:
    """``pca_test_mse`` (per pixel, test split) and, with labels, the metrics of :func:`aeexp.metrics.code_metrics`
    on the PCA codes (``pca_knn_acc``, ``pca_knn1_acc``, ``pca_knn20_acc``, ``pca_probe_acc``, ``pca_kmeans_nmi``,
    ``pca_kmeans_ari``; k-means seeded with 0) of a PCA fit on the training split (all channels): the autoencoder's
    ``test_*`` side by side."""
    pca = fit_pca(train_images, n_components)

    def codes_of(images: torch.Tensor) -> np.ndarray:
        return torch.cat([pca.encode(_flat_float(images, s, min(len(images), s + CHUNK)))
                          for s in range(0, len(images), CHUNK)]).numpy()

    squared_error = 0.0
    for start in range(0, len(test_images), CHUNK):
        x = _flat_float(test_images, start, min(len(test_images), start + CHUNK))
        squared_error += float((pca.decode(pca.encode(x)) - x).square().sum(dtype=torch.float64))
    pixels = len(test_images) * int(np.prod(test_images.shape[1:]))
    results = {"pca_test_mse": squared_error / pixels}
    if train_labels is not None and test_labels is not None:
        codes = metrics.code_metrics(codes_of(train_images), train_labels, codes_of(test_images), test_labels, seed=0)
        results.update({f"pca_{name}": value for name, value in codes.items()})
    return results


def _fingerprint(n_components: int, *arrays: torch.Tensor | np.ndarray | None) -> str:
    """A hash of everything :func:`pca_metrics` depends on: the splits' pixels and labels (None: none), the number
    of components and :data:`CACHE_VERSION`."""
    digest = hashlib.blake2b(f"{CACHE_VERSION}/{n_components}".encode(), digest_size=20)
    for array in arrays:
        if array is None:
            digest.update(b"|none|")
            continue
        values = array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        values = np.ascontiguousarray(values)
        digest.update(f"|{values.dtype.str}{values.shape}|".encode())
        digest.update(memoryview(values).cast("B"))
    return digest.hexdigest()


def cached_pca_metrics(train_images: torch.Tensor, train_labels: np.ndarray | None, test_images: torch.Tensor,
                       test_labels: np.ndarray | None, n_components: int) -> dict[str, float]:
    """:func:`pca_metrics`, computed once per data and size: the runs of a sweep share the same training split
    and often the same bottleneck, and the baseline (a covariance and a 5-NN over the whole training split) costs
    seconds. Kept as small JSON files under :func:`cache_dir`; a missing, unreadable or unwritable cache only
    means computing it again."""
    key = _fingerprint(n_components, train_images, train_labels, test_images, test_labels)
    path = cache_dir() / "pca" / f"{key}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        expected = set(METRIC_NAMES) if train_labels is not None else {"pca_test_mse"}
        if isinstance(cached, dict) and set(cached) == expected:
            return {key: float(value) for key, value in cached.items()}
    except (OSError, ValueError):
        pass
    results = pca_metrics(train_images, train_labels, test_images, test_labels, n_components)
    _write_cache(path, json.dumps(results))
    return results


def _write_cache(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all; a cache that cannot be written is only noted in the debug log."""
    try:
        files.write_atomically([(path, lambda file: file.write(text.encode("utf-8")))])
    except OSError as err:
        log.debug("could not cache the PCA baseline in %s: %s", path.parent, err)
