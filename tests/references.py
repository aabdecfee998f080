"""Independent references for what a run logged: its logged model and its own data splits read back, and the numbers
scikit-learn computes from them. Nothing of aeexp's evaluation is used, only its data loading (the run's splits, from
its ``config.yaml`` and seed), so a metric computed on the wrong codes or under the wrong name cannot agree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from aeexp import data

KNN_NAMES = {"knn1_acc": 1, "knn_acc": 5, "knn20_acc": 20}  # the README's k-NN accuracies and their k


@dataclass
class LoggedRun:
    """A finished run as MLflow holds it: its final metrics, resolved config, logged model (in eval mode) and data."""

    run_id: str
    metrics: dict[str, float]
    config: DictConfig
    model: torch.nn.Module
    dataset: data.Dataset

    def images(self, split: str) -> torch.Tensor:
        """A split's images as floats in [0, 1]."""
        return getattr(self.dataset, split).images.float() / 255.0

    def labels(self, split: str) -> np.ndarray:
        return getattr(self.dataset, split).labels.numpy()

    @torch.no_grad()
    def codes(self, split: str) -> np.ndarray:
        """The logged model's codes of a split (``train`` or ``test``), float32."""
        return self.model.encode(self.images(split)).float().numpy()


def logged_run(tracking_uri: str, run_id: str, scratch: Path, where: Path | None = None) -> LoggedRun:
    """Read run ``run_id`` back: metrics, ``config.yaml``, the logged model (``runs:/<id>/model``) and its data (a
    relative ``dataset.path`` is found from ``where``, the folder the run was started in; default: this one)."""
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    config = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", str(scratch)))
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
    finally:
        mlflow.set_tracking_uri(None)
    here = Path.cwd()
    os.chdir(where or here)
    try:
        dataset = data.load(data.build(config.dataset), config.seed)
    finally:
        os.chdir(here)
    return LoggedRun(run_id, dict(run.data.metrics), config, model.eval(), dataset)


def knn_accuracy(fit_codes: np.ndarray, fit_labels: np.ndarray, codes: np.ndarray, labels: np.ndarray,
                 k: int) -> float:
    """scikit-learn's k-NN classifier fit on ``fit_codes`` and scored on ``codes``."""
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(n_neighbors=k).fit(fit_codes, fit_labels).score(codes, labels))


def knn_accuracies(fit_codes: np.ndarray, fit_labels: np.ndarray, codes: np.ndarray, labels: np.ndarray
                   ) -> dict[str, float]:
    """:func:`knn_accuracy` at each of the README's k, by metric name (``knn_acc``: k = 5)."""
    return {name: knn_accuracy(fit_codes, fit_labels, codes, labels, k) for name, k in KNN_NAMES.items()}


def kmeans_scores(codes: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, float]:
    """``kmeans_nmi`` and ``kmeans_ari`` of scikit-learn's k-means (k = the classes, one seeded k-means++ start)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    clusters = KMeans(n_clusters=len(np.unique(labels)), n_init=1, random_state=seed).fit_predict(
        codes.astype(np.float64))
    return {"kmeans_nmi": float(normalized_mutual_info_score(labels, clusters)),
            "kmeans_ari": float(adjusted_rand_score(labels, clusters))}


def probe_accuracy(fit_codes: np.ndarray, fit_labels: np.ndarray, codes: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's logistic regression (C = 1, converged) on standardised codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(fit_codes)
    probe = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(fit_codes), fit_labels)
    return float(probe.score(scaler.transform(codes), labels))


def code_metrics(run: LoggedRun, probe: bool = True) -> dict[str, float]:
    """The run's ``test_*`` metrics of its codes as scikit-learn computes them: k-NN fit on the training split's
    codes and scored on the test split's, k-means on the test codes with the run's seed, and (``probe``) the probe."""
    train, test = run.codes("train"), run.codes("test")
    train_labels, test_labels = run.labels("train"), run.labels("test")
    values = knn_accuracies(train, train_labels, test, test_labels) | kmeans_scores(test, test_labels,
                                                                                      run.config.seed)
    if probe:
        values["probe_acc"] = probe_accuracy(train, train_labels, test, test_labels)
    return {f"test_{name}": value for name, value in values.items()}


@torch.no_grad()
def reconstruction_mse(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Mean squared error per pixel of ``model``'s reconstructions of ``images`` (floats in [0, 1])."""
    return float((model(images).double() - images.double()).square().mean())


def pca_baseline(run: LoggedRun) -> dict[str, float]:
    """``pca_test_mse`` and (with labels) ``pca_knn_acc``: scikit-learn's PCA with as many components as the
    bottleneck, fit on the training split's pixels."""
    from sklearn.decomposition import PCA

    flat = {split: run.images(split).flatten(1).double().numpy() for split in ("train", "test")}
    pca = PCA(int(run.config.model.bottleneck)).fit(flat["train"])
    train, test = pca.transform(flat["train"]), pca.transform(flat["test"])
    values = {"pca_test_mse": float(np.mean((pca.inverse_transform(test) - flat["test"]) ** 2))}
    if run.dataset.labelled:
        values["pca_knn_acc"] = knn_accuracy(train, run.labels("train"), test, run.labels("test"), 5)
    return values


def assert_matches(run: LoggedRun, *, pca: bool = True, probe: bool = False) -> None:
    """The run's logged headline metrics equal the references: ``test_mse``, and with labels the ``test_*`` metrics of
    the codes, and (``pca``) the PCA baseline's ``pca_test_mse`` and ``pca_knn_acc``. An accuracy may differ by one
    test image and k-means' scores by 0.01 (codes computed with another thread count can differ in their last bits,
    and a tie or a point on a cluster's border fall the other way); the wrong codes or names give larger errors."""
    import pytest

    metrics = run.metrics
    assert metrics["test_mse"] == pytest.approx(reconstruction_mse(run.model, run.images("test")), rel=1e-5)
    expected = (code_metrics(run, probe) if run.dataset.labelled else {}) | (pca_baseline(run) if pca else {})
    one_image = 1 / len(run.dataset.test) + 1e-12
    for name, value in expected.items():
        close = (pytest.approx(value, abs=one_image) if name.endswith("_acc") else
                 pytest.approx(value, abs=0.01) if "kmeans" in name else pytest.approx(value, rel=1e-5))
        assert metrics[name] == close, (name, metrics[name], value)
