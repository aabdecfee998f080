"""Codes -> 2-D points for a picture of the latent space (t-SNE by openTSNE, tuned for a few seconds)."""

from __future__ import annotations

import os

import numpy as np

# Measured on 10,000 Fashion-MNIST test codes (32-d), 2 cores: see BENCHMARKS.md and scripts/bench.py.
EXACT_NEIGHBORS_MAX = 20_000  # exact kNN (1 s at 10k points) beats Annoy (6 s) below this size
FFT_MIN_POINTS = 1_000  # below: Barnes-Hut; above: FFT-interpolated repulsion (2 s vs 4 s at 3,000 points)
FFT_INTS_IN_INTERVAL = 2  # coarser FFT grid than openTSNE's 1: ~3x faster, same trustworthiness and 5-NN
FFT_MIN_INTERVALS = 20  # openTSNE's 50 makes the grid finer than that while the embedding is still small
EARLY_EXAGGERATION = 12.0


def max_perplexity(n_points: int) -> float:
    """The largest perplexity t-SNE accepts for ``n_points`` (it must stay below the point count)."""
    return max(1.0, (n_points - 1) / 3.0)


def _n_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def embed_2d(codes: np.ndarray, method: str = "tsne", perplexity: float = 30.0, seed: int = 0, *,
             n_iter: int = 250, early_exaggeration_iter: int = 125) -> np.ndarray:
    """2-D embedding of ``codes`` (float32 array ``(n, 2)``).

    t-SNE with PCA initialisation, ``early_exaggeration_iter`` iterations at exaggeration 12 (learning rate
    n/12), then ``n_iter`` at exaggeration 1 (learning rate n): 375 in all, against scikit-learn's 1,000, for
    the same trustworthiness and 5-NN accuracy on the benchmark's codes.
    """
    if method != "tsne":
        raise ValueError(f"unknown embedding method {method!r}")
    from openTSNE import TSNEEmbedding, affinity, initialization

    x = np.ascontiguousarray(codes, dtype=np.float64)
    n = len(x)
    n_jobs = _n_jobs()
    affinities = affinity.PerplexityBasedNN(
        x, perplexity=min(perplexity, max_perplexity(n)), method="exact" if n <= EXACT_NEIGHBORS_MAX else "annoy",
        n_jobs=n_jobs, random_state=seed)
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
