"""Fixed samples of a split's rows: stratified by class when labelled, uniform otherwise, the same for a seed."""

from __future__ import annotations

import numpy as np

# scikit-learn is imported inside stratified_sample: importing it costs ~2 s, which reading a dataset whole
# should not pay.


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``n`` items drawn with the class proportions of ``labels``."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and n >= np.count_nonzero(counts) else None
    chosen, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=stratify, random_state=seed)
    return np.sort(chosen)


def sample_indices(labels: np.ndarray | None, n_items: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``n`` of ``n_items`` items: stratified by ``labels``, else uniform."""
    if labels is not None:
        return stratified_sample(labels, n, seed)
    if n >= n_items:
        return np.arange(n_items)
    return np.sort(np.random.default_rng(seed).choice(n_items, n, replace=False))
