"""Quality of codes and embeddings: kNN accuracy, trustworthiness, stratified samples."""

from __future__ import annotations

import numpy as np

# scikit-learn is imported inside the functions that use it: importing it costs ~2 s, which a process that
# only validates a config, prints one or trains without measuring should not pay.

KNN_K = 5
TRUST_K = 10


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = KNN_K) -> float:
    """Accuracy of a k-NN classifier fit on ``train_x`` and scored on ``test_x``."""
    from sklearn.neighbors import KNeighborsClassifier

    classifier = KNeighborsClassifier(n_neighbors=min(k, len(train_x)))
    return float(classifier.fit(train_x, train_y).score(test_x, test_y))


def cv_knn_accuracy(x: np.ndarray, y: np.ndarray, k: int = KNN_K, folds: int = 5, seed: int = 0) -> float:
    """Mean k-NN accuracy over stratified ``folds``-fold cross-validation inside ``x``."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    smallest_class = int(np.bincount(y).min(initial=0) if y.size else 0)
    folds = max(2, min(folds, smallest_class)) if smallest_class >= 2 else 2
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), x, y, cv=splitter)
    return float(np.mean(scores))


def trustworthiness(high: np.ndarray, low: np.ndarray, k: int = TRUST_K) -> float:
    """How well the ``k`` nearest neighbours in ``low`` were neighbours in ``high`` (1 = perfectly)."""
    from sklearn.manifold import trustworthiness as _trustworthiness

    k = min(k, (len(high) - 1) // 2)
    return float(_trustworthiness(high, low, n_neighbors=k))


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``n`` items drawn with the class proportions of ``labels``."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and n >= np.count_nonzero(counts) else None
    chosen, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=stratify, random_state=seed)
    return np.sort(chosen)
