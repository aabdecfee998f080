"""The shipped metrics of the codes (:func:`knn`, :func:`linear_probe`, :func:`kmeans`, listed in
``conf/metrics/default.yaml``) and the numeric kernels behind them and the views' metrics: an exact k-NN search,
k-NN accuracies, a logistic-regression probe, k-means against the classes, cross-validated k-NN accuracy,
trustworthiness.

A metric is a function returning ``{name: value}``; it says what it needs by its parameter names (see
:mod:`aeexp.evaluation.lists`): ``train_codes``, ``test_codes``, ``train_labels``, ``test_labels``, ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from aeexp.evaluation.bounds import Positive, PositiveInt

# scikit-learn is imported inside the functions that use it: importing it costs ~2 s, which a process that
# only validates a config, prints one or trains without measuring should not pay.

KNN_K = 5  # the headline k: its accuracy is logged as knn_acc, the other k's as knn<k>_acc
PROBE_TOLERANCE = 1e-5  # on the gradient of the mean objective: the accuracy no longer moves (see tests)
TRUST_K = 10
TRUST_BLOCK = 256  # rows of the distance matrices held at once by trustworthiness
KNN_BLOCK = 256  # queries per block in nearest_neighbours (a block's scores: 256 x points floats)
KNN_GROUP = 64  # at most this many points per group in nearest_neighbours' first stage
KNN_CANDIDATES = 640  # about this many candidates per query in its second stage: groups shrink as k grows
KNN_MIN_GROUP = 8  # ... but not below this many points (a large k)
KNN_SLICE = 2048  # points per slice in nearest_neighbours' first stage (a slice's scores stay in cache)
_INFINITY = torch.tensor(float("inf"), dtype=torch.float64)


def nearest_neighbours(queries: np.ndarray, points: np.ndarray, k: int) -> torch.Tensor:
    """Indices of the ``k`` points nearest (Euclidean) to each query, ``(len(queries), k)``, nearest first.

    Exact, by brute force in two stages per block of queries. First, matrix products over slices of the points
    give every ``|x|^2 - 2 q.x`` (the squared distance less ``|q|^2``, which does not change the order; both
    sets centred on the points' mean, for accuracy in float32) and, while the slice is in cache, the minimum of
    each group of points (``KNN_CANDIDATES // k`` of them, between ``KNN_MIN_GROUP`` and ``KNN_GROUP``). Only the
    ``k`` groups with the smallest minima can hold the ``k`` nearest points (any other group's minimum is beaten by
    ``k`` points), so the second stage scores just their ``k`` groups' points. About half the time of
    scikit-learn's brute-force search (median 0.58 s against 1.07 s for the 5 nearest of 10,000 queries among
    54,000 32-d codes on 2 cores), the same neighbours up to ties.
    """
    x = torch.as_tensor(np.asarray(points, dtype=np.float32).reshape(len(points), -1))
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32).reshape(len(queries), -1))
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"cannot find {k} nearest neighbours among {n} points")
    centre = x.mean(0)
    x, q = x - centre, q - centre
    # k groups' points are scored in the second stage: smaller groups for a larger k keep that gather small
    # (for the 20-NN on Fashion-MNIST it took 0.34 s with 32-point groups against 1.2 s with 64).
    group = max(1, min(KNN_GROUP, max(KNN_MIN_GROUP, KNN_CANDIDATES // k), n // k))  # at least k groups
    padded = n + -n % group
    # |x|^2 - 2 q.x as one product: [q, 1] . [-2 x, |x|^2]; padding rows score +inf, so are never a neighbour.
    weighted = torch.full((padded, x.shape[1] + 1), float("inf"))
    weighted[:, :-1] = 0.0
    weighted[:n, :-1] = x * -2.0
    weighted[:n, -1] = (x * x).sum(1)
    weighted_t = weighted.t().contiguous()
    queries_1 = torch.cat([q, q.new_ones(len(q), 1)], 1)
    slice_width = max(group, KNN_SLICE // group * group)
    scores = torch.empty(KNN_BLOCK, min(slice_width, padded))
    minima = torch.empty(KNN_BLOCK, padded // group)
    offsets = torch.arange(group)
    found = []
    for start in range(0, len(q), KNN_BLOCK):
        block = queries_1[start:start + KNN_BLOCK]
        rows = len(block)
        for first in range(0, padded, slice_width):
            width = min(slice_width, padded - first)
            score = torch.mm(block, weighted_t[:, first:first + width], out=scores[:rows, :width])
            torch.amin(score.view(rows, -1, group), 2, out=minima[:rows, first // group:(first + width) // group])
        best_groups = minima[:rows].topk(k, 1, largest=False).indices
        candidates = (best_groups[:, :, None] * group + offsets).reshape(rows, -1)
        candidate_scores = torch.bmm(weighted[candidates], block[:, :, None]).squeeze(2)
        nearest = candidate_scores.topk(k, 1, largest=False, sorted=True).indices
        found.append(candidates.gather(1, nearest))
    return torch.cat(found)  # (no queries: NumPy refuses to reshape them above)


def knn_accuracies(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   ks: Sequence[int] = (KNN_K,)) -> dict[int, float]:
    """Accuracy of a k-NN classifier fit on ``train_x`` and scored on ``test_x``, for each ``k`` of ``ks``:
    scikit-learn's ``KNeighborsClassifier(k).fit(train_x, train_y).score(test_x, test_y)`` (a majority vote of the
    ``k`` nearest, a tie going to the smallest label), from one search of :func:`nearest_neighbours` for the
    largest ``k`` (the nearest first, so the first ``k`` of them are the ``k`` nearest)."""
    if len(test_x) == 0:
        raise ValueError("knn_accuracy needs at least one test point")
    classes, train_class = np.unique(np.asarray(train_y), return_inverse=True)
    neighbours = nearest_neighbours(test_x, train_x, min(max(ks), len(train_x)))
    neighbour_class = torch.as_tensor(train_class.astype(np.int64))[neighbours]
    accuracies = {}
    for k in ks:
        nearest = neighbour_class[:, :min(k, len(train_x))]
        votes = torch.zeros(len(nearest), len(classes)).scatter_add_(1, nearest, torch.ones(nearest.shape))
        accuracies[k] = float(np.mean(classes[votes.argmax(1).numpy()] == np.asarray(test_y)))
    return accuracies


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = KNN_K) -> float:
    """:func:`knn_accuracies` for one ``k``."""
    return knn_accuracies(train_x, train_y, test_x, test_y, (k,))[k]


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          c: float, max_iter: int) -> float:
    """Test accuracy of a multinomial logistic regression fit on the standardised ``train_x``: scikit-learn's
    ``LogisticRegression(C=c)`` after a ``StandardScaler`` (the same objective, mean cross-entropy plus
    ``|W|^2 / (2 c n)``, intercepts unpenalised), minimised by torch's L-BFGS from the ridge-regression solution
    of the one-hot targets, which leaves it a few dozen iterations (scikit-learn's lbfgs from zero took ~90 and
    ~10 s on 54,000 Fashion-MNIST codes on 2 cores)."""
    x = torch.as_tensor(np.asarray(train_x, dtype=np.float32).reshape(len(train_x), -1))
    test = torch.as_tensor(np.asarray(test_x, dtype=np.float32).reshape(len(test_x), -1))
    mean, std = x.mean(0), x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x, test = (x - mean) / std, (test - mean) / std
    classes, target = np.unique(np.asarray(train_y), return_inverse=True)
    if len(classes) < 2:
        return float(np.mean(np.asarray(test_y) == classes[0]))
    target = torch.as_tensor(target.astype(np.int64))
    n = len(x)
    penalty = 1.0 / (2.0 * c * n)
    weights, bias = _ridge_start(x, target, len(classes), 2.0 * penalty * n)
    solver = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=max_iter, tolerance_grad=PROBE_TOLERANCE,
                               tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(x @ weights + bias, target) + penalty * weights.square().sum()
        loss.backward()
        return loss

    solver.step(objective)
    with torch.no_grad():
        predicted = classes[(test @ weights + bias).argmax(1).numpy()]
    return float(np.mean(predicted == np.asarray(test_y)))


def _ridge_start(x: torch.Tensor, target: torch.Tensor, n_classes: int, ridge: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares weights and bias from centred features to centred one-hot targets: a start close to the
    logistic regression's optimum in direction, so that L-BFGS needs few iterations."""
    one_hot = F.one_hot(target, n_classes).to(x.dtype)
    centred = one_hot - one_hot.mean(0)
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ centred)
    bias = torch.log(one_hot.mean(0).clamp_min(1e-12))
    return weights.contiguous().requires_grad_(), bias.requires_grad_()


def kmeans_agreement(codes: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """How well k-means on ``codes``, with k = the number of classes, recovers the classes: the normalised mutual
    information and the adjusted Rand index of its clusters against ``labels`` (scikit-learn's ``KMeans`` with
    k-means++ and one start, seeded)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    k = len(np.unique(labels))
    clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(
        np.asarray(codes, dtype=np.float64).reshape(len(codes), -1))
    return float(normalized_mutual_info_score(labels, clusters)), float(adjusted_rand_score(labels, clusters))


def cv_knn_accuracy(x: np.ndarray, y: np.ndarray, k: int = KNN_K, folds: int = 5, seed: int = 0) -> float:
    """Mean k-NN accuracy over stratified ``folds``-fold cross-validation inside ``x``."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    counts = np.unique(y, return_counts=True)[1]  # of the labels present (bincount's min was 0: always 2 folds)
    smallest_class = int(counts.min()) if counts.size else 0
    folds = max(2, min(folds, smallest_class)) if smallest_class >= 2 else 2
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # error_score="raise": a fold that cannot be fit is an error, not a NaN score and a warning holding a traceback
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=k), x, y, cv=splitter, error_score="raise")
    return float(np.mean(scores))


def trustworthiness(high: np.ndarray, low: np.ndarray, k: int = TRUST_K) -> float:
    """How well the ``k`` nearest neighbours in ``low`` were neighbours in ``high`` (1 = perfectly).

    scikit-learn's ``trustworthiness`` (Venna and Kaski), ``k`` clamped below half the points, computed by
    counting rather than sorting: a neighbour's rank in ``high`` is one more than the number of points closer
    than it. Rows go in blocks, so memory grows with the points, not with their square. 0.1-0.15 s for 3,000
    Fashion-MNIST codes and their t-SNE on 2 cores, where scikit-learn's full sort of every row takes 0.7 s.
    """
    n = len(high)
    k = min(k, (n - 1) // 2)
    if k < 1:
        raise ValueError(f"trustworthiness needs at least 3 points, not {n}")
    high_points = torch.as_tensor(np.asarray(high, dtype=np.float64).reshape(n, -1))
    low_points = torch.as_tensor(np.asarray(low, dtype=np.float64).reshape(n, -1))
    excess = 0
    for start in range(0, n, TRUST_BLOCK):
        rows = torch.arange(start, min(start + TRUST_BLOCK, n))
        mine = (torch.arange(len(rows)), rows)  # each point's own column, kept out of its neighbours
        low_distances = torch.cdist(low_points[rows], low_points).index_put_(mine, _INFINITY)
        neighbours = low_distances.topk(k, dim=1, largest=False).indices
        high_distances = torch.cdist(high_points[rows], high_points).index_put_(mine, _INFINITY)
        reach = high_distances.gather(1, neighbours)
        # Counted in int32: a sum of booleans into the default int64 first copies them all to int64 (5x slower).
        ranks = (high_distances[:, None, :] < reach[:, :, None]).sum(-1, dtype=torch.int32) + 1
        excess += int((ranks - k).clamp_min(0).sum())
    return 1.0 - excess * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))


# --- the shipped metrics (conf/metrics/default.yaml) ---------------------------------------------------------------


def knn(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray, *,
        ks: Sequence[PositiveInt]) -> dict[str, float]:
    """Accuracy of a k-NN classifier fit on the training codes and scored on the test codes, for each ``k`` of
    ``ks`` (:func:`knn_accuracies`): ``knn_acc`` for k = 5, ``knn<k>_acc`` for the others."""
    accuracies = knn_accuracies(train_codes, train_labels, test_codes, test_labels, ks)
    return {("knn_acc" if k == KNN_K else f"knn{k}_acc"): accuracies[k] for k in ks}


def linear_probe(train_codes: np.ndarray, train_labels: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray,
                 *, c: Positive, max_iter: PositiveInt) -> dict[str, float]:
    """``probe_acc``: :func:`linear_probe_accuracy` (C = ``c``) of the test codes."""
    return {"probe_acc": linear_probe_accuracy(train_codes, train_labels, test_codes, test_labels, c, max_iter)}


def kmeans(test_codes: np.ndarray, test_labels: np.ndarray, seed: int) -> dict[str, float]:
    """``kmeans_nmi`` and ``kmeans_ari``: :func:`kmeans_agreement` of the test codes with their classes."""
    nmi, ari = kmeans_agreement(test_codes, test_labels, seed)
    return {"kmeans_nmi": nmi, "kmeans_ari": ari}
