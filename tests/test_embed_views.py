"""PCA and UMAP views of the codes, beside t-SNE, on a real clustered set (no mocks)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from aeexp.evaluation import lists, metrics, views

VIEWS = lists.shipped().views  # as a run makes them: their settings from conf/embed/*.yaml

# Measured on these 1,000 points (10 blobs in 32-d, std 3): 5-NN accuracy / trustworthiness (k=10) of
# t-SNE 1.000 / 0.980, UMAP 1.000 / 0.971, PCA 0.936 / 0.943; other make_blobs seeds: UMAP 0.971-0.972,
# PCA 0.83-0.94 / 0.89-0.94 (ten clusters do not all fit apart on two linear axes).
UMAP_MIN_TRUST = 0.95
PCA_MIN_KNN = 0.9
PCA_MIN_TRUST = 0.92


@pytest.fixture(scope="module")
def clusters() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=1000, centers=10, n_features=32, cluster_std=3.0, random_state=0)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def umap_points(clusters) -> np.ndarray:
    """UMAP of the whole set, once: the first call in a process pays numba's compilation (~10 s)."""
    return VIEWS["umap"](codes=clusters[0], seed=0)


@pytest.fixture(scope="module")
def tsne_points(clusters) -> np.ndarray:
    return VIEWS["tsne"](codes=clusters[0], seed=0)


def _check_points(points: np.ndarray, n: int) -> None:
    assert points.shape == (n, 2) and points.dtype == np.float32 and np.isfinite(points).all()


def test_umap_keeps_clusters_as_well_as_tsne(clusters, umap_points, tsne_points):
    x, y = clusters
    _check_points(umap_points, len(x))
    assert metrics.cv_knn_accuracy(umap_points, y) >= metrics.cv_knn_accuracy(tsne_points, y) - 0.02
    assert metrics.trustworthiness(x, umap_points) > UMAP_MIN_TRUST


def test_umap_is_reproducible_for_a_seed(clusters):
    x = clusters[0][:300]
    first = VIEWS["umap"](codes=x, seed=3)
    np.testing.assert_array_equal(first, VIEWS["umap"](codes=x, seed=3))
    assert not np.array_equal(first, VIEWS["umap"](codes=x, seed=4))


def test_umap_takes_the_settings_of_its_entry(clusters):
    x = clusters[0][:300]
    got = VIEWS["umap"](codes=x, seed=1)
    np.testing.assert_array_equal(got, views.umap(x, 1, n_neighbors=15, min_dist=0.1, n_epochs=None))
    settings = ["embed=umap", "embed.views.umap.n_neighbors=5", "embed.views.umap.min_dist=0",
                "embed.views.umap.n_epochs=50"]
    tight = lists.build_views(lists.compose(settings).embed.views)["umap"](codes=x, seed=1)
    _check_points(tight, 300)
    np.testing.assert_array_equal(tight, views.umap(x, 1, n_neighbors=5, min_dist=0.0, n_epochs=50))
    assert not np.array_equal(tight, got)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12, 20])
def test_umap_and_pca_on_few_points(clusters, n):
    x = clusters[0][:n]
    _check_points(VIEWS["umap"](codes=x, seed=0), n)
    _check_points(VIEWS["pca"](codes=x, seed=0), n)


def test_pca_gives_scikit_learns_projection_every_time(clusters):
    from sklearn.decomposition import PCA

    x = clusters[0]
    points = VIEWS["pca"](codes=x, seed=0)
    _check_points(points, len(x))
    np.testing.assert_allclose(points, PCA(n_components=2).fit_transform(x.astype(np.float64)), rtol=0, atol=1e-3)
    np.testing.assert_array_equal(points, VIEWS["pca"](codes=x, seed=5))  # the seed plays no part


def test_pca_shows_the_clusters(clusters):
    x, y = clusters
    points = views.pca(x)
    assert metrics.cv_knn_accuracy(points, y) > PCA_MIN_KNN
    assert metrics.trustworthiness(x, points) > PCA_MIN_TRUST


def test_pca_of_one_dimensional_codes_pads_with_zeros():
    codes = np.arange(6, dtype=np.float32)[:, None]
    points = views.pca(codes)
    np.testing.assert_allclose(np.abs(points[:, 0]), np.abs(codes[:, 0] - 2.5))
    assert not points[:, 1].any()
