"""Codes -> 2-D points for a picture of the latent space."""

from __future__ import annotations

import numpy as np
from sklearn.manifold import TSNE


def max_perplexity(n_points: int) -> float:
    """The largest perplexity t-SNE accepts for ``n_points`` (it must stay below the point count)."""
    return max(1.0, (n_points - 1) / 3.0)


def embed_2d(codes: np.ndarray, method: str = "tsne", perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D embedding of ``codes`` (float32 array ``(n, 2)``)."""
    if method != "tsne":
        raise ValueError(f"unknown embedding method {method!r}")
    tsne = TSNE(n_components=2, perplexity=min(perplexity, max_perplexity(len(codes))), init="pca",
                learning_rate="auto", random_state=seed)
    return tsne.fit_transform(np.asarray(codes, dtype=np.float32)).astype(np.float32)
