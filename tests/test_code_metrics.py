"""The metrics of codes a run logs (k-NN at k = 1, 5, 20, the linear probe, k-means against the classes), each
against scikit-learn's own computation of it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from aeexp.evaluation import guard, lists, metrics

SHIPPED = lists.shipped().metrics  # conf/metrics/default.yaml, as a run builds it
PROBE = {"c": 1.0, "max_iter": 50}  # the shipped probe's settings


@pytest.fixture(scope="module")
def digits_split():
    """sklearn's digits (64 features, 10 classes) as train and test codes, labels relabelled to 3..12 so that a
    lookup by position would fail."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order] + 3
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_knn_accuracies_at_several_k_are_scikit_learns(digits_split):
    train_x, train_y, test_x, test_y = digits_split
    ours = metrics.knn_accuracies(train_x, train_y, test_x, test_y, ks=(1, 5, 8, 20))
    for k, value in ours.items():
        expected = KNeighborsClassifier(n_neighbors=k).fit(train_x, train_y).score(test_x, test_y)
        assert value == pytest.approx(expected, abs=1e-12), k
    assert metrics.knn_accuracy(train_x, train_y, test_x, test_y, k=20) == ours[20]
    assert len(set(ours.values())) > 1  # the k's give different accuracies: each is computed, not copied


def test_linear_probe_is_scikit_learns_logistic_regression(digits_split):
    """The same objective (C=1 on standardised features), so the same predictions once both have converged."""
    train_x, train_y, test_x, test_y = digits_split
    scaler = StandardScaler().fit(train_x)
    reference = LogisticRegression(C=1.0, max_iter=5000, tol=1e-8).fit(scaler.transform(train_x), train_y)
    expected = reference.score(scaler.transform(test_x), test_y)
    ours = metrics.linear_probe_accuracy(train_x, train_y, test_x, test_y, c=1.0, max_iter=500)
    assert ours == pytest.approx(expected, abs=1 / len(test_y) + 1e-12)  # at most one prediction apart
    quick = metrics.linear_probe_accuracy(train_x, train_y, test_x, test_y, **PROBE)  # the shipped iterations
    assert quick == pytest.approx(expected, abs=0.005)
    weak = metrics.linear_probe_accuracy(train_x, train_y, test_x, test_y, c=1e-2, max_iter=50)  # more penalty
    reference_weak = LogisticRegression(C=1e-2, max_iter=5000).fit(scaler.transform(train_x), train_y)
    assert weak == pytest.approx(reference_weak.score(scaler.transform(test_x), test_y), abs=1 / len(test_y) + 1e-12)
    assert weak < ours


def test_linear_probe_of_two_classes_at_any_feature_scale_is_scikit_learns(digits_split):
    """Two classes (5s against 9s, labelled 8 and 12) in features scaled by 1e-3 and 1e3: standardised, so
    scikit-learn's accuracy at every scale, and a penalty that weighs (C=1e-3) as it weighs there."""
    train_x, train_y, test_x, test_y = digits_split
    keep, keep_test = np.isin(train_y, (8, 12)), np.isin(test_y, (8, 12))
    x, y, tx, ty = train_x[keep], train_y[keep], test_x[keep_test], test_y[keep_test]
    scaler = StandardScaler().fit(x)
    for c in (1.0, 1e-3):
        reference = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(scaler.transform(x), y)
        expected = reference.score(scaler.transform(tx), ty)
        assert expected < 1.0
        for scale in (1e-3, 1.0, 1e3):
            ours = metrics.linear_probe_accuracy(x * scale, y, tx * scale, ty, c=c, max_iter=500)
            assert ours == pytest.approx(expected, abs=1 / len(ty) + 1e-12), (c, scale)


def test_probe_of_constant_features_and_one_class():
    x = np.zeros((20, 3), dtype=np.float32)
    y = np.array([0, 1] * 10)
    assert metrics.linear_probe_accuracy(x, y, x, y, **PROBE) == pytest.approx(0.5)  # nothing to learn: a coin
    assert metrics.linear_probe_accuracy(x, np.full(20, 7), x, np.full(20, 7), **PROBE) == 1.0


def test_kmeans_agreement_is_scikit_learns():
    x, y = make_blobs(n_samples=600, centers=5, n_features=8, cluster_std=3.0, random_state=2)
    nmi, ari = metrics.kmeans_agreement(x, y, seed=4)
    clusters = KMeans(n_clusters=5, n_init=1, random_state=4).fit_predict(x)
    assert nmi == pytest.approx(normalized_mutual_info_score(y, clusters), abs=1e-12)
    assert ari == pytest.approx(adjusted_rand_score(y, clusters), abs=1e-12)
    assert 0.3 < ari < 1.0  # overlapping blobs: informative, not trivial
    noise = np.random.default_rng(0).normal(size=(600, 8))
    assert metrics.kmeans_agreement(noise, y)[0] < 0.05  # codes that know nothing of the classes


def _measured(train_x, train_y, test_x, test_y, seed: int = 0) -> dict[str, float]:
    inputs = {"train_codes": train_x, "train_labels": train_y, "test_codes": test_x, "test_labels": test_y,
              "seed": seed}
    return guard.measure(SHIPPED, inputs, "test", guard.Skips())


def test_the_shipped_metric_list_names_and_order(digits_split):
    train_x, train_y, test_x, test_y = digits_split
    assert list(SHIPPED) == ["knn", "probe", "kmeans"]
    values = _measured(train_x, train_y, test_x, test_y)
    names = ["knn1_acc", "knn_acc", "knn20_acc", "probe_acc", "kmeans_nmi", "kmeans_ari"]
    assert list(values) == [f"test_{name}" for name in names]
    assert values["test_knn_acc"] == metrics.knn_accuracy(train_x, train_y, test_x, test_y)
    assert values["test_probe_acc"] == metrics.linear_probe_accuracy(train_x, train_y, test_x, test_y, **PROBE)
    assert (values["test_kmeans_nmi"], values["test_kmeans_ari"]) == metrics.kmeans_agreement(test_x, test_y, 0)
    assert all(0 <= v <= 1 for v in values.values())
    # better codes score higher: the digits' pixels against the same pixels with most of their signal drowned
    rng = np.random.default_rng(0)
    noisy = [a + rng.normal(scale=12.0, size=a.shape) for a in (train_x, test_x)]
    worse = _measured(noisy[0], train_y, noisy[1], test_y)
    assert all(worse[name] < values[name] for name in values)


def test_the_shipped_metrics_fit_on_the_training_codes_and_score_the_test_codes(digits_split):
    """Each value of the shipped metric list under its own name against scikit-learn: k-NN fit on the training codes
    and scored on the test codes (not the test codes scored against themselves, nor the training codes), k-means on
    the test codes, NMI and ARI each where it belongs, on codes where all of these differ."""
    train_x, train_y, test_x, test_y = digits_split
    rng = np.random.default_rng(1)
    train_x, test_x = (a + rng.normal(scale=8.0, size=a.shape).astype(np.float32) for a in (train_x, test_x))
    measured = _measured(train_x, train_y, test_x, test_y, seed=3)  # through the shipped list
    values = {name.removeprefix("test_"): value for name, value in measured.items()}
    ks = {"knn1_acc": 1, "knn_acc": 5, "knn20_acc": 20}

    def knn(fit_x, fit_y, score_x, score_y):
        return {name: KNeighborsClassifier(n_neighbors=k).fit(fit_x, fit_y).score(score_x, score_y)
                for name, k in ks.items()}

    expected = knn(train_x, train_y, test_x, test_y)
    for wrong in (knn(test_x, test_y, test_x, test_y), knn(train_x, train_y, train_x, train_y)):
        assert max(abs(wrong[name] - expected[name]) for name in ks) > 0.05  # leave-one-in, scored on training
    for name in ks:
        assert values[name] == pytest.approx(expected[name], abs=1e-12), name
    clusters = KMeans(n_clusters=10, n_init=1, random_state=3).fit_predict(test_x.astype(np.float64))
    nmi, ari = normalized_mutual_info_score(test_y, clusters), adjusted_rand_score(test_y, clusters)
    assert abs(nmi - ari) > 0.05
    assert values["kmeans_nmi"] == pytest.approx(nmi, abs=1e-12)
    assert values["kmeans_ari"] == pytest.approx(ari, abs=1e-12)
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(train_x), train_y)
    assert values["probe_acc"] == pytest.approx(probe.score(scaler.transform(test_x), test_y), abs=0.005)


def test_knn_accuracies_of_one_test_code_and_of_none(digits_split):
    """One test code is scored (right or wrong: 1 or 0); none is refused in one line."""
    train_x, train_y, test_x, test_y = digits_split
    one = metrics.knn_accuracies(train_x, train_y, test_x[:1], test_y[:1])
    expected = KNeighborsClassifier(n_neighbors=5).fit(train_x, train_y).score(test_x[:1], test_y[:1])
    assert one[5] == expected and set(one.values()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="at least one test point"):
        metrics.knn_accuracies(train_x, train_y, test_x[:0], test_y[:0])
