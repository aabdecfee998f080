"""The shipped 2-D views of the codes, listed in ``conf/embed/{tsne,pca,umap}.yaml``: t-SNE (openTSNE, tuned for a
few seconds), PCA and UMAP.

A view is a function from codes ``(n, d)`` to points ``(n, 2)``; it says what it needs by its parameter names (see
:mod:`aeexp.evaluation.lists`): ``codes``, ``seed``, ``labels``. Its settings come from its YAML entry.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated

import numpy as np

from aeexp import threads
from aeexp.evaluation.bounds import AtLeast, NonNegative, NonNegativeInt, Positive, PositiveInt

log = logging.getLogger(__name__)

# Measured on 10,000 Fashion-MNIST test codes (32-d), 2 cores: see BENCHMARKS.md and scripts/bench.py.
EXACT_NEIGHBORS_MAX = 20_000  # exact kNN (1 s at 10k points) beats Annoy (6 s) below this size
FFT_MIN_POINTS = 1_000  # below: Barnes-Hut; above: FFT-interpolated repulsion (2 s vs 4 s at 3,000 points)
FFT_INTS_IN_INTERVAL = 2  # coarser FFT grid than openTSNE's 1: ~3x faster, same trustworthiness and 5-NN
FFT_MIN_INTERVALS = 20  # openTSNE's 50 makes the grid finer than that while the embedding is still small
EARLY_EXAGGERATION = 12.0
UMAP_SPECTRAL_MIN_POINTS = 16  # UMAP's spectral initialisation fails on 3 points; below this, PCA's


def max_perplexity(n_points: int) -> float:
    """The largest perplexity t-SNE accepts for ``n_points`` (it must stay below the point count)."""
    return max(1.0, (n_points - 1) / 3.0)


def tsne(codes: np.ndarray, seed: int, *, perplexity: Positive, early_exaggeration_iter: NonNegativeInt,
         n_iter: PositiveInt) -> np.ndarray:
    """t-SNE of ``codes`` (float32 ``(n, 2)``), seeded: the same ``seed`` gives the same points.

    PCA initialisation, ``early_exaggeration_iter`` iterations at exaggeration 12 (learning rate n/12), then
    ``n_iter`` at exaggeration 1 (learning rate n): 125 + 250 in all (the shipped settings), against
    scikit-learn's 1,000, for the same trustworthiness and 5-NN accuracy on the benchmark's codes. ``perplexity``
    is lowered to what ``n`` points allow (:func:`max_perplexity`).
    """
    from openTSNE import TSNEEmbedding, affinity, initialization, nearest_neighbors

    x = np.ascontiguousarray(codes, dtype=np.float64)
    n = len(x)
    n_jobs = threads.current()  # the job's share of the cores (trainer.threads)
    perplexity = min(perplexity, max_perplexity(n))
    # The neighbour index made here, as openTSNE would make it for method="exact"/"annoy": left to choose, it
    # first imports pynndescent (and numba, ~1 s) only to see whether it is installed.
    index = nearest_neighbors.Sklearn if n <= EXACT_NEIGHBORS_MAX else nearest_neighbors.Annoy
    neighbours = index(x, k=min(n - 1, int(3 * perplexity)), metric="euclidean", n_jobs=n_jobs, random_state=seed)
    logging.getLogger("openTSNE.affinity").setLevel(logging.WARNING)  # not "KNN index provided" in every run
    affinities = affinity.PerplexityBasedNN(perplexity=perplexity, knn_index=neighbours, n_jobs=n_jobs)
    start = initialization.pca(x, random_state=seed)
    if n >= FFT_MIN_POINTS:
        gradient = {"negative_gradient_method": "fft", "ints_in_interval": FFT_INTS_IN_INTERVAL,
                    "min_num_intervals": FFT_MIN_INTERVALS}
    else:
        gradient = {"negative_gradient_method": "bh"}
    embedding = TSNEEmbedding(start, affinities, n_jobs=n_jobs, random_state=seed, **gradient)
    if early_exaggeration_iter > 0:
        embedding = embedding.optimize(n_iter=early_exaggeration_iter, exaggeration=EARLY_EXAGGERATION,
                                       momentum=0.8, learning_rate=max(1.0, n / EARLY_EXAGGERATION))
    if n_iter > 0:
        embedding = embedding.optimize(n_iter=n_iter, momentum=0.8, learning_rate=float(n))
    return np.asarray(embedding, dtype=np.float32)


def pca(codes: np.ndarray) -> np.ndarray:
    """Projection of ``codes`` on their first two principal axes (float32 ``(n, 2)``; zeros where fewer exist).

    An exact SVD of the centred codes, signs fixed as scikit-learn's ``PCA`` fixes them (the largest loading of
    each axis positive), so it gives scikit-learn's points and the same points on every call.
    """
    x = np.asarray(codes, dtype=np.float64).reshape(len(codes), -1)
    points = np.zeros((len(x), 2), dtype=np.float64)
    if len(x) < 2 or x.shape[1] == 0:
        return points.astype(np.float32)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(len(axes)), np.argmax(np.abs(axes), axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    points[:, : len(axes)] = x @ axes.T
    return points.astype(np.float32)


def umap(codes: np.ndarray, seed: int, *, n_neighbors: Annotated[int, AtLeast(2)], min_dist: NonNegative,
         n_epochs: PositiveInt | None) -> np.ndarray:
    """UMAP of ``codes`` (float32 ``(n, 2)``), seeded: the same ``seed`` gives the same points.

    umap-learn is imported here, not at the top: its import and numba's compilation on the first call cost
    seconds that a run without UMAP should not pay. A seed makes UMAP optimise on one thread. The neighbours
    are exact ones from scikit-learn up to ``EXACT_NEIGHBORS_MAX`` points (umap-learn's own exact path below
    4,096 points calls a Python distance function per pair: 20 s at 3,000 points). ``n_neighbors`` is clamped
    to the point count; below 3 points there is no neighbour graph and the points are PCA's; below
    ``UMAP_SPECTRAL_MIN_POINTS`` UMAP starts from PCA instead of its spectral initialisation. ``n_epochs`` None
    is UMAP's default: 500 up to 10,000 points, 200 above (200 at 3,000 points: 2.4x faster, trustworthiness
    0.961 instead of 0.963).
    """
    x = np.ascontiguousarray(codes, dtype=np.float32).reshape(len(codes), -1)
    n = len(x)
    if n < 3:
        return pca(x)
    if "umap" not in sys.modules:
        log.info("UMAP: importing umap-learn, whose first call in a process compiles with numba (10-30 s)")
    import umap as umap_learn

    k = max(2, min(n_neighbors, n - 1))
    knn: tuple = (None, None, None)
    if n <= EXACT_NEIGHBORS_MAX:
        from sklearn.neighbors import NearestNeighbors

        distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)  # each point first, at 0
        knn = (indices, distances.astype(np.float32), None)
    init = "spectral" if n >= UMAP_SPECTRAL_MIN_POINTS else "pca"
    model = umap_learn.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, n_epochs=n_epochs, init=init,
                      random_state=seed, n_jobs=1, precomputed_knn=knn)
    with warnings.catch_warnings():
        # expected here: no search index with our neighbours (UMAP.transform is not used); separate clusters
        # are separate graph components, laid out by a spectral embedding of their centres
        warnings.filterwarnings("ignore", message=r".*precomputed_knn\[2\].*")
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        points = model.fit_transform(x)
    return np.asarray(points, dtype=np.float32)
