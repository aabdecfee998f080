"""The baseline every autoencoder must beat: PCA with as many components as the bottleneck, its codes measured by the
same metric list as the model's (``pca_<name>``), and its test MSE (``pca_test_mse``)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aeexp import files
from aeexp.data.cache import cache_dir
from aeexp.evaluation import guard
from aeexp.evaluation.lists import Component

log = logging.getLogger(__name__)

CHUNK = 8192  # images converted to float at a time ...
CHUNK_VALUES = 1 << 25  # ... and at most this many pixel values (128 MiB of float32): large images, fewer at a time
CACHE_VERSION = "pca-baseline-4"  # part of every cache key: change it when the baseline computes anything new
LONG_FIT_VALUES = 20_000_000  # pixel values above which fitting the PCA takes seconds: the log says so first
# Images of at most this many values (64 x 64 grey, 32 x 32 colour) get the exact PCA of their covariance (float64:
# 128 MiB at this size, and a copy for LAPACK); larger ones a randomized PCA that never holds a values x values matrix.
EXACT_MAX_VALUES = 4096
OVERSAMPLING = 10  # the randomized PCA's extra directions beyond n_components ...
POWER_ITERATIONS = 4  # ... and its passes of subspace iteration over the training images
MSE = "test_mse"  # the cache's name of pca_test_mse


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


def _chunks(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """``images`` flattened, as float32 in [0, 1], a chunk of rows at a time (:data:`CHUNK`, :data:`CHUNK_VALUES`)."""
    n, rows = len(images), max(1, min(CHUNK, CHUNK_VALUES // max(1, int(np.prod(images.shape[1:])))))
    for start in range(0, n, rows):
        yield _flat_float(images, start, min(n, start + rows))


def memory_needed(image_shape: Sequence[int], n_components: int) -> int:
    """Bytes the PCA baseline of images of ``image_shape`` takes beyond the images themselves, but for (randomized,
    above :data:`EXACT_MAX_VALUES`) ``(n_components + OVERSAMPLING) x 8`` bytes per training image, a small share of
    the image's own bytes at those sizes: the preflight's check of it."""
    dim = int(np.prod(image_shape))
    chunks = 3 * 4 * min(CHUNK_VALUES, CHUNK * dim)  # a chunk of float pixels, centred, and a product's temporary
    if dim <= EXACT_MAX_VALUES:
        return chunks + 3 * 8 * dim * dim  # the covariance, its copy handed to LAPACK and LAPACK's own
    return chunks + 4 * 8 * dim * (n_components + OVERSAMPLING)  # the basis, its update and their QR factors


def fit_pca(images: torch.Tensor, n_components: int, exact_max_values: int = EXACT_MAX_VALUES) -> PCA:
    """PCA of uint8 ``images`` (N, ...) in [0, 1] pixel units: the mean, then the ``n_components`` principal axes:
    exactly from the covariance for images of at most ``exact_max_values`` values, else by a randomized PCA
    (:func:`_randomized_axes`) in memory that grows with the image size, not with its square."""
    dim = int(np.prod(images.shape[1:]))
    total = torch.zeros(dim, dtype=torch.float64)
    for chunk in _chunks(images):
        total += chunk.sum(0, dtype=torch.float64)
    mean = (total / len(images)).float()
    if dim > exact_max_values:
        return PCA(mean, _randomized_axes(images, mean, n_components))
    return PCA(mean, _exact_axes(images, mean, n_components))


def _exact_axes(images: torch.Tensor, mean: torch.Tensor, n_components: int) -> torch.Tensor:
    """The covariance of the centred images (float32 products, float64 sums and eigendecomposition) and its
    ``n_components`` largest eigenvectors (LAPACK's ``syevr`` through scipy): for 3x32x32 colour images (a 3072 x
    3072 covariance) 8 s on one core, where all of them (``torch.linalg.eigh``) take 24 s; the same values to
    1e-15."""
    import scipy.linalg

    dim = mean.numel()
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for chunk in _chunks(images):
        centred = chunk - mean
        covariance += (centred.T @ centred).double()
    _, vectors = scipy.linalg.eigh((covariance / len(images)).numpy(), subset_by_index=[dim - n_components, dim - 1])
    return torch.from_numpy(vectors[:, ::-1].T.copy()).float().contiguous()  # largest eigenvalue first


def _randomized_axes(images: torch.Tensor, mean: torch.Tensor, n_components: int) -> torch.Tensor:
    """The ``n_components`` leading right singular vectors of the centred images by randomized subspace iteration
    (Halko, Martinsson and Tropp 2011, algorithm 4.4, seeded): ``n_components + OVERSAMPLING`` directions refined
    over :data:`POWER_ITERATIONS` passes over the images in chunks, in float64; at most values x directions floats
    are held, never values x values."""
    dim, n = mean.numel(), len(images)
    width = min(n_components + OVERSAMPLING, dim, n)
    basis = torch.randn(dim, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(POWER_ITERATIONS):
        left, _ = torch.linalg.qr(_times(images, mean, basis))  # N x width
        basis = torch.zeros(dim, width, dtype=torch.float64)
        offset = 0
        for chunk in _chunks(images):
            basis += (chunk - mean).double().T @ left[offset:offset + len(chunk)]
            offset += len(chunk)
        basis, _ = torch.linalg.qr(basis)
    _, _, right = torch.linalg.svd(_times(images, mean, basis), full_matrices=False)  # (X B) = U S W^T: X ~ U S (B W)^T
    return (basis @ right.T)[:, :n_components].T.float().contiguous()


def _times(images: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The centred images (N x values) times ``basis`` (values x k), in float64, a chunk at a time."""
    return torch.cat([(chunk - mean).double() @ basis for chunk in _chunks(images)])


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


class _Cache:
    """The baseline's values on one data and size: a small JSON file per metric (and one for the MSE) under
    :func:`cache_dir`; a missing, unreadable or unwritable file only means computing it again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def read(self, key: str | None) -> dict[str, float] | None:
        if key is None:
            return None
        try:
            values = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(values, dict) or not all(isinstance(v, int | float) for v in values.values()):
            return None
        return {str(name): float(value) for name, value in values.items()}

    def write(self, key: str | None, values: dict[str, float]) -> None:
        if key is None:
            return
        text = json.dumps(values)
        try:
            files.write_atomically([(self.folder / f"{key}.json", lambda file: file.write(text.encode("utf-8")))])
        except OSError as err:
            log.debug("could not cache the PCA baseline in %s: %s", self.folder, err)


def metric_key(metric: Component) -> str | None:
    """What a metric's cached values depend on besides the data: its function (name and source code), its settings
    and its inputs; None for one whose source cannot be read (a class's instance, a built-in): computed every time."""
    compute = metric.compute
    if not isinstance(compute, functools.partial):
        return None
    try:
        source = inspect.getsource(compute.func)
    except (OSError, TypeError):
        return None
    settings = json.dumps(compute.keywords, sort_keys=True, default=repr)
    name = f"{getattr(compute.func, '__module__', '')}.{getattr(compute.func, '__qualname__', '')}"
    return hashlib.blake2b(f"{name}|{settings}|{metric.needs}|{source}".encode(), digest_size=16).hexdigest()


def _fit(train_images: torch.Tensor, n_components: int) -> PCA:
    values = train_images.numel()
    if values > LONG_FIT_VALUES:
        log.info("PCA baseline: fitting %d components to %d training images of %d values each (seconds; kept in "
                 "the cache for the next run on this data)", n_components, len(train_images),
                 values // max(1, len(train_images)))
    return fit_pca(train_images, n_components)


def pca_mse(pca: PCA, images: torch.Tensor) -> float:
    """Mean squared error per pixel of PCA's reconstructions of uint8 ``images``."""
    squared_error = 0.0
    for x in _chunks(images):
        squared_error += float((pca.decode(pca.encode(x)) - x).square().sum(dtype=torch.float64))
    return squared_error / (len(images) * int(np.prod(images.shape[1:])))


def _codes(pca: PCA, images: torch.Tensor) -> np.ndarray:
    return torch.cat([pca.encode(chunk) for chunk in _chunks(images)]).numpy()


def pca_metrics(train_images: torch.Tensor, train_labels: np.ndarray | None, test_images: torch.Tensor,
                test_labels: np.ndarray | None, n_components: int, metrics: Mapping[str, Component],
                skips: guard.Skips) -> dict[str, float]:
    """``pca_test_mse`` (per pixel, test split) and ``pca_<name>`` of each of ``metrics`` (seed 0) on the codes of a
    PCA fit on the training split (all channels): the model's ``test_*`` side by side.

    Each is computed once per data, size and metric: a sweep's runs share the same data and often the same
    bottleneck, and the baseline (a covariance and a 5-NN over the whole training split) costs seconds; the PCA is
    fit only when something is missing. What cannot be computed is skipped (``pca_<metric>``, or ``pca_baseline``
    when the PCA cannot be fit) and not cached."""
    cache = _Cache(cache_dir() / "pca" / _fingerprint(n_components, train_images, train_labels, test_images,
                                                      test_labels))
    keys = {MSE: MSE, **{name: metric_key(metric) for name, metric in metrics.items()}}
    found = {name: cache.read(key) for name, key in keys.items()}
    missing = [name for name, values in found.items() if values is None]
    pca = skips.attempt("pca_baseline", lambda: _fit(train_images, n_components)) if missing else None
    if pca is not None:
        inputs = {"train_codes": _codes(pca, train_images), "test_codes": _codes(pca, test_images),
                  "train_labels": train_labels, "test_labels": test_labels, "seed": 0} if missing != [MSE] else {}
        for name in missing:
            before = len(skips.reasons)
            found[name] = ({"pca_test_mse": pca_mse(pca, test_images)} if name == MSE
                           else guard.measure({name: metrics[name]}, inputs, "pca", skips))
            if len(skips.reasons) == before:
                cache.write(keys[name], found[name])
    return {key: value for values in found.values() if values for key, value in values.items()}
