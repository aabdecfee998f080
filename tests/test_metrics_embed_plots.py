"""Code-quality metrics, the 2-D embedding and the figures, on small real arrays."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from aeexp.data import sampling
from aeexp.evaluation import baseline, guard, lists, metrics, views
from aeexp.evaluation import figures as plots

SHIPPED = lists.shipped()


@pytest.fixture
def blobs():
    x, y = make_blobs(n_samples=300, centers=5, n_features=16, cluster_std=1.0, random_state=0)
    return x.astype(np.float32), y


def test_knn_accuracy_on_separable_and_random_labels(blobs):
    x, y = blobs
    assert metrics.knn_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    shuffled = np.random.default_rng(0).permutation(y)
    assert metrics.knn_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:]) < 0.5


def test_cv_knn_accuracy(blobs):
    x, y = blobs
    assert metrics.cv_knn_accuracy(x, y) > 0.95


def test_cv_knn_accuracy_is_scikit_learns_5_fold_cross_validation(blobs):
    """The README's ``embed_knn_acc``: 5-NN accuracy over a stratified 5-fold split (shuffled, seeded), whatever the
    labels are called; a class too small for 5 folds gives as many folds as it has members."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x, y = blobs
    noisy = x + np.random.default_rng(1).normal(scale=12.0, size=x.shape).astype(np.float32)  # folds matter
    for labels in (y, y * 2 + 3):  # 0..4, and 3, 5, ..., 11
        expected = cross_val_score(KNeighborsClassifier(n_neighbors=5), noisy, labels,
                                   cv=StratifiedKFold(n_splits=5, shuffle=True, random_state=4)).mean()
        two_folds = cross_val_score(KNeighborsClassifier(n_neighbors=5), noisy, labels,
                                    cv=StratifiedKFold(n_splits=2, shuffle=True, random_state=4)).mean()
        assert abs(expected - two_folds) > 0.01
        assert metrics.cv_knn_accuracy(noisy, labels, seed=4) == pytest.approx(expected, abs=1e-12)
    few = y.copy()
    few[np.flatnonzero(y == 0)[3:]] = 1  # class 0 keeps 3 members: 3 folds
    expected = cross_val_score(KNeighborsClassifier(n_neighbors=5), noisy, few,
                               cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=4)).mean()
    assert metrics.cv_knn_accuracy(noisy, few, seed=4) == pytest.approx(expected, abs=1e-12)


def test_cv_knn_accuracy_of_a_class_of_two_or_one_and_its_default_seed(blobs):
    """A class of 2 members: 2 folds; of 1: 2 folds all the same (scikit-learn warns that the class cannot be in
    both); the seed, when not given, is 0; a fold too small for k neighbours is an error, not a NaN."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x, y = blobs
    noisy = x + np.random.default_rng(1).normal(scale=12.0, size=x.shape).astype(np.float32)

    def reference(labels, folds, seed):
        return cross_val_score(KNeighborsClassifier(n_neighbors=5), noisy, labels,
                               cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)).mean()

    assert metrics.cv_knn_accuracy(noisy, y) == pytest.approx(reference(y, 5, 0), abs=1e-12)
    assert abs(reference(y, 5, 0) - reference(y, 5, 1)) > 1e-3  # (the seed matters on these points)
    for members in (2, 1):
        few = y.copy()
        few[np.flatnonzero(y == 0)[members:]] = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scikit-learn's: the class of 1 is in one fold only
            expected = reference(few, 2, 4)
            assert abs(expected - reference(few, 3, 4)) > 1e-3
            assert metrics.cv_knn_accuracy(noisy, few, seed=4) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        metrics.cv_knn_accuracy(noisy[:6], np.array([0, 0, 0, 1, 1, 1]), k=5)  # 3 points to fit per fold


def test_trustworthiness_of_identity_and_noise(blobs):
    x, _ = blobs
    assert metrics.trustworthiness(x, x) == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(size=(len(x), 2))
    assert metrics.trustworthiness(x, noise) < 0.7


def test_knn_accuracy_with_a_label_no_training_point_has(blobs):
    x, y = blobs
    test_y = y[200:].copy()
    test_y[:10] = 99
    assert metrics.knn_accuracy(x[:200], y[:200], x[200:], test_y) == pytest.approx(
        metrics.knn_accuracy(x[:200], y[:200], x[200:], y[200:]) - 10 / len(test_y))


@pytest.mark.parametrize(("n_points", "n_queries", "k"), [
    (5, 3, 5),  # as many points as neighbours: one point per group
    (1000, 300, 5),  # a partial last group and a partial block of queries
    (3000, 600, 7),  # several slices of points and blocks of queries
    (3000, 300, 20),  # a larger k: smaller groups (KNN_CANDIDATES // k points each)
    (3000, 200, 100),  # the smallest groups (KNN_MIN_GROUP points)
])
def test_nearest_neighbours_are_scikit_learns(monkeypatch, n_points, n_queries, k):
    from sklearn.neighbors import NearestNeighbors

    monkeypatch.setattr(metrics, "KNN_SLICE", 512)  # several slices without a large test set
    monkeypatch.setattr(metrics, "KNN_BLOCK", 128)
    rng = np.random.default_rng(n_points)
    centres = rng.normal(scale=5.0, size=(8, 16)) + 40.0  # far from the origin: float32 cancellation matters
    points = (centres[rng.integers(0, 8, n_points)] + rng.normal(size=(n_points, 16))).astype(np.float32)
    queries = (centres[rng.integers(0, 8, n_queries)] + rng.normal(size=(n_queries, 16))).astype(np.float32)
    expected = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(queries, return_distance=False)
    found = metrics.nearest_neighbours(queries, points, k).numpy()
    assert found.shape == (n_queries, k)
    assert [set(row) for row in found] == [set(row) for row in expected]
    distances = np.linalg.norm(points[found].astype(np.float64) - queries[:, None, :], axis=2)
    assert np.all(np.diff(distances, axis=1) >= -1e-4)  # nearest first, up to float32 rounding of near ties


def test_nearest_neighbours_refuses_more_neighbours_than_points():
    with pytest.raises(ValueError, match="cannot find 5 nearest neighbours among 4 points"):
        metrics.nearest_neighbours(np.zeros((2, 3)), np.zeros((4, 3)), 5)


def test_knn_accuracy_is_scikit_learns(monkeypatch):
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    monkeypatch.setattr(metrics, "KNN_SLICE", 256)
    x, y = load_digits(return_X_y=True)
    y = y * 3 + 7  # labels need not be 0..n-1
    x_train, y_train, x_test, y_test = x[:1200], y[:1200], x[1200:], y[1200:]
    for k in (1, 5, 8):  # an even k has ties, which go to the smallest label as in scikit-learn
        expected = KNeighborsClassifier(n_neighbors=k).fit(x_train, y_train).score(x_test, y_test)
        assert metrics.knn_accuracy(x_train, y_train, x_test, y_test, k=k) == pytest.approx(expected, abs=1e-12)
    assert metrics.knn_accuracy(x[:3], y[:3], x_test, y_test) == pytest.approx(
        KNeighborsClassifier(n_neighbors=3).fit(x[:3], y[:3]).score(x_test, y_test))  # k clamped to the points


@pytest.mark.parametrize("n", [13, 120, 700])  # 13: k clamped to 6 (its value unlike k=4's); 700: several blocks
def test_trustworthiness_is_scikit_learns(n):
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(n)
    high = rng.normal(size=(n, 12))
    low = high[:, :2] + rng.normal(scale=0.7, size=(n, 2))
    expected = trustworthiness(high, low, n_neighbors=min(10, (n - 1) // 2))  # the README's k, as a literal
    assert 0.5 < expected < 0.99
    assert metrics.trustworthiness(high, low) == pytest.approx(expected, abs=1e-12)


def test_trustworthiness_needs_three_points():
    from sklearn.manifold import trustworthiness

    with pytest.raises(ValueError, match=r"at least 3 points, not 2$"):
        metrics.trustworthiness(np.zeros((2, 4)), np.zeros((2, 2)))
    high, low = np.array([[0.0, 0], [1, 0], [3, 0]]), np.array([[0.0], [2], [1]])
    assert metrics.trustworthiness(high, low) == pytest.approx(trustworthiness(high, low, n_neighbors=1), abs=1e-12)


def test_stratified_sample_keeps_class_proportions():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    chosen = sampling.stratified_sample(labels, 100, seed=0)
    assert len(chosen) == 100 and len(set(chosen)) == 100
    assert list(np.bincount(labels[chosen])) == [50, 25, 15, 10]
    assert list(sampling.stratified_sample(labels, 1000)) == list(range(200))


def test_tsne_keeps_clusters_apart(blobs):
    x, y = blobs
    points = SHIPPED.views["tsne"](codes=x, seed=0)
    assert points.shape == (300, 2) and points.dtype == np.float32
    assert metrics.cv_knn_accuracy(points, y) > 0.95
    assert metrics.trustworthiness(x, points) > 0.9


def test_tsne_clamps_perplexity_for_few_points(blobs):
    x, _ = blobs
    assert views.tsne(x[:12], 0, perplexity=30, early_exaggeration_iter=125, n_iter=250).shape == (12, 2)


def test_reconstruction_grid_layout():
    originals = np.random.default_rng(0).random((6, 1, 8, 8))
    fig = plots.reconstruction_grid(originals, originals * 0.5, [f"class {i}" for i in range(6)])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"class {i}" for i in range(6)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input", "output"]
    mosaic = ax.get_images()[0].get_array()
    assert mosaic.shape == (2 * 8 + 1, 6 * 8 + 5)  # two rows of six 8x8 images, 1-pixel gaps
    np.testing.assert_allclose(mosaic[:8, 9:17], originals[1, 0])  # row "input", column 1
    np.testing.assert_allclose(mosaic[9:, 9:17], originals[1, 0] * 0.5)  # its reconstruction below it
    assert (mosaic[8] == 1).all()  # the white gap between the rows


def test_denoising_grid_has_noisy_output_and_clean_rows():
    originals = np.random.default_rng(0).random((3, 1, 28, 28))
    fig = plots.reconstruction_grid(originals, originals * 0.5, ["a", "b", "c"], noisy=originals * 0.1)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["noisy input", "output", "clean target"]
    mosaic = ax.get_images()[0].get_array()
    np.testing.assert_allclose(mosaic[:28, :28], originals[0, 0] * 0.1)
    np.testing.assert_allclose(mosaic[58:, 58:], originals[2, 0])


def test_image_grid_labels_its_rows():
    images = np.random.default_rng(1).random((4, 9, 1, 8, 8))
    fig = plots.image_grid(images, "interpolations", ["0 -> 1", "2 -> 3", "4 -> 5", "6 -> 7"])
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0 -> 1", "2 -> 3", "4 -> 5", "6 -> 7"]
    assert fig.get_suptitle() == "interpolations"
    np.testing.assert_allclose(ax.get_images()[0].get_array()[27:35, 36:44], images[3, 4, 0])


def test_embedding_scatter_has_a_legend_of_class_names():
    points = np.random.default_rng(0).random((40, 2))
    labels = np.arange(40) % 4
    fig = plots.embedding_scatter(points, labels, ["T-shirt", "Trouser", "Pullover", "Dress"], "t-SNE")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["T-shirt", "Trouser", "Pullover", "Dress"]


def test_loss_curves_plot_both_series():
    fig = plots.loss_curves([0.5, 0.4, 0.3], [0.55, 0.45, 0.4], "bce")
    lines = fig.axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [[0.5, 0.4, 0.3], [0.55, 0.45, 0.4]]
    assert fig.axes[0].get_ylabel() == "bce loss"


def test_pick_one_per_class_goes_round_the_classes():
    labels = np.array([0, 0, 1, 2, 1, 0])
    assert list(plots.pick_one_per_class(labels, 5)) == [0, 2, 3, 1, 4]


def test_pca_baseline_matches_scikit_learn():
    import torch
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 64))
    images = np.clip(rng.normal(size=(500, 6)) @ basis * 20 + 128 + rng.normal(size=(500, 64)) * 5, 0, 255)
    images = images.astype(np.uint8).reshape(500, 1, 8, 8)
    labels = (images.reshape(500, -1)[:, :6].argmax(1)).astype(np.int64)
    train, test = torch.as_tensor(images[:400]), torch.as_tensor(images[400:])
    flat_train, flat_test = images[:400].reshape(400, -1) / 255.0, images[400:].reshape(100, -1) / 255.0

    reference = PCA(n_components=4).fit(flat_train)
    expected_mse = np.mean((reference.inverse_transform(reference.transform(flat_test)) - flat_test) ** 2)
    expected_knn = metrics.knn_accuracy(reference.transform(flat_train), labels[:400],
                                        reference.transform(flat_test), labels[400:])
    got = baseline.pca_metrics(train, labels[:400], test, labels[400:], 4, SHIPPED.metrics, guard.Skips())
    assert got["pca_test_mse"] == pytest.approx(expected_mse, rel=1e-6)
    assert got["pca_knn_acc"] == pytest.approx(expected_knn, abs=0.02)
    more = baseline.pca_metrics(train, labels[:400], test, labels[400:], 12, SHIPPED.metrics, guard.Skips())
    assert more["pca_test_mse"] < got["pca_test_mse"]  # more components, less error


@pytest.mark.parametrize(("n", "shape"), [(12, (3, 8, 8)), (100, (3, 2, 2))], ids=["12-images", "12-values"])
def test_the_randomized_pca_of_fewer_images_or_values_than_its_directions(n, shape):
    """The randomized PCA (test_baseline_memory) with its 5 + OVERSAMPLING directions clamped to the 12 images there
    are, or to the 12 values of each: scikit-learn's axes all the same, and the same axes on every fit (seeded)."""
    import torch
    from sklearn.decomposition import PCA as sklearn_pca

    rng = np.random.default_rng(2)
    values = int(np.prod(shape))
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    train = torch.as_tensor(images)
    reference = sklearn_pca(n_components=5).fit(images.reshape(n, -1) / 255.0)
    pca = baseline.fit_pca(train, 5, exact_max_values=0)
    assert tuple(pca.components.shape) == (5, values)
    cosines = np.linalg.svd(reference.components_ @ pca.components.double().numpy().T, compute_uv=False)
    assert cosines.min() > 1 - 1e-6
    assert torch.equal(baseline.fit_pca(train, 5, exact_max_values=0).components, pca.components)


@pytest.fixture
def fitted(tmp_path, monkeypatch) -> list[int]:
    """The sizes of the PCAs the baseline fits from here on (a list that grows with each fit), with its cache in the
    test's temp dir."""
    monkeypatch.setenv("AEEXP_CACHE_DIR", str(tmp_path / "cache"))
    sizes: list[int] = []
    fit = baseline.fit_pca
    monkeypatch.setattr(baseline, "fit_pca", lambda images, n: (sizes.append(n), fit(images, n))[1])
    return sizes


def test_the_pca_baseline_is_cached_by_every_split_and_its_labels(tmp_path, fitted):
    """Another split's pixels, other labels or none (on either side) is another baseline; a cache file that holds
    something else than the metric's numbers is computed again."""
    import torch

    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (120, 1, 4, 4), dtype=np.uint8))
    labels = rng.integers(0, 3, 120)
    shipped = {"knn": SHIPPED.metrics["knn"]}

    def fits(train, train_labels, test, test_labels) -> int:
        before = len(fitted)
        baseline.pca_metrics(train, train_labels, test, test_labels, 3, shipped, guard.Skips())
        return len(fitted) - before

    other_test = images[80:].clone()
    other_test[0, 0, 0, 0] ^= 1
    splits = (images[:80], labels[:80], images[80:], labels[80:])
    assert fits(*splits) == 1 and fits(*splits) == 0
    assert fits(images[:80], labels[:80][::-1].copy(), images[80:], labels[80:]) == 1
    assert fits(images[:80], labels[:80], images[80:], labels[80:][::-1].copy()) == 1
    assert fits(images[:80], labels[:80], images[80:], torch.from_numpy(labels[80:])) == 0  # the same labels
    assert fits(images[:80], None, images[80:], None) == 1 and fits(images[:80], None, images[80:], None) == 0
    assert fits(images[:80], None, other_test, None) == 1  # (after a split without labels, the rest still counts)
    for content in ("[1, 2]", '{"pca_test_mse": "x"}', "7"):
        for stored in (tmp_path / "cache" / "pca").rglob("*.json"):
            stored.write_text(content)
        assert fits(*splits) == 1


def test_a_metrics_cache_key_is_its_function_settings_and_inputs():
    import functools

    def key(compute, needs=("codes",)):
        return baseline.metric_key(lists.Component("m", compute, tuple(needs)))

    base = key(functools.partial(metrics.knn_accuracy, k=5))
    assert base is not None and len(base) == 32
    assert key(functools.partial(metrics.knn_accuracy, k=5)) == base
    assert key(functools.partial(metrics.knn_accuracy, k=6)) != base
    assert key(functools.partial(metrics.knn_accuracy, k=5), needs=("codes", "labels")) != base
    assert key(functools.partial(metrics.trustworthiness, k=5)) != base
    assert key(functools.partial(metrics.knn_accuracy, k={1, 2})) is not None  # a setting JSON cannot hold: its repr
    assert key(functools.partial(metrics.knn_accuracy, a=1, b=2)) == key(functools.partial(metrics.knn_accuracy, b=2,
                                                                                            a=1))
    assert key(metrics.knn_accuracy) is None and key(functools.partial(len)) is None  # not a partial; no source


def test_pca_baseline_is_computed_once_per_data_size_and_metric(tmp_path, monkeypatch, fitted):
    import torch

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8))
    labels = rng.integers(0, 3, 300)
    splits = [images[:200], labels[:200], images[200:], labels[200:]]

    def cached(*arrays, n=4, metrics=SHIPPED.metrics):
        return baseline.pca_metrics(*arrays, n, metrics, guard.Skips())

    first = cached(*splits)
    assert list(first) == ["pca_test_mse", "pca_knn1_acc", "pca_knn_acc", "pca_knn20_acc", "pca_probe_acc",
                           "pca_kmeans_nmi", "pca_kmeans_ari"] and fitted == [4]
    stored = sorted((tmp_path / "cache" / "pca").rglob("*.json"))
    assert len(stored) == 4  # the MSE and one file per metric
    assert cached(*splits) == first and fitted == [4]  # from the cache: no PCA fit
    cached(*splits, n=5)
    assert fitted == [4, 5]  # another size is another baseline
    changed = images.clone()
    changed[7, 0, 3, 3] ^= 1
    cached(changed[:200], labels[:200], changed[200:], labels[200:])
    assert fitted == [4, 5, 4]  # one pixel of other data is other data
    other = lists.build_metrics(lists.compose(["metrics.knn.ks=[3]"]).metrics)
    assert set(cached(*splits, metrics=other)) == {"pca_test_mse", "pca_knn3_acc", "pca_probe_acc", "pca_kmeans_nmi",
                                                   "pca_kmeans_ari"} and fitted == [4, 5, 4, 4]  # a new setting

    stored[0].write_text('{"pca_test_mse": 0.')  # a file cut short: computed again and rewritten
    assert cached(*splits) == first and fitted == [4, 5, 4, 4, 4]
    assert json.loads(stored[0].read_text())
    assert not list(stored[0].parent.glob("*.tmp"))

    monkeypatch.setenv("AEEXP_CACHE_DIR", "/proc/aeexp-cache")  # cannot be created, also for root
    assert cached(*splits) == first
