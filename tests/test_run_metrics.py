"""What a run logs, held against independent references: a real CLI run that stops early (its best epoch is not its
last), its best_epoch and stopped_epoch read back from MLflow, its logged model compared with the weights its
checkpoint kept, and its final metrics recomputed by scikit-learn from that model's codes of its own data splits."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import references
import torch
from mlflow.tracking import MlflowClient
from mlflow_store import metric_history, runs_in

# Two epochs at lr 0.001, then StepLR multiplies it by 100: epoch 3's val_loss is far worse than epoch 2's, and with
# patience 1 the run stops there, after its best epoch (2), and is evaluated with epoch 2's weights. n_samples above
# the 360 test images: the 2-D view is of every test code, no sample drawn.
STOPS_EARLY = ["trainer.epochs=6", "trainer.early_stopping.patience=1", "scheduler=step", "scheduler.step_size=2",
               "scheduler.gamma=100", "trainer.progress=false", "embed=pca", "embed.n_samples=400"]


@dataclass
class Trained:
    uri: str
    run_id: str
    scratch: Path

    def read_back(self) -> references.LoggedRun:
        return references.logged_run(self.uri, self.run_id, self.scratch)

    def checkpoint(self) -> dict:
        """The run's last checkpoint as written, read as plain tensors and values (``weights_only``)."""
        path = Path(MlflowClient(self.uri).get_run(self.run_id).data.tags["aeexp.checkpoint"])
        return torch.load(path, map_location="cpu", weights_only=True)


def _train(folder: Path, *overrides: str) -> Trained:
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "aeexp", *overrides, f"tracking.uri={uri}"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(uri, "digits")
    assert run.info.status == "FINISHED"
    return Trained(uri, run.info.run_id, folder / "scratch")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _train(tmp_path_factory.mktemp("stopped"), *STOPS_EARLY)


def _equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key].cpu(), b[key].cpu()) for key in a)


def test_a_run_that_stops_early_logs_its_best_and_stopped_epochs(stopped: Trained) -> None:
    metrics = MlflowClient(stopped.uri).get_run(stopped.run_id).data.metrics
    val_loss = [value for _, value in metric_history(stopped.uri, stopped.run_id, "val_loss")]
    best = int(np.argmin(val_loss)) + 1
    assert (metrics["best_epoch"], metrics["stopped_epoch"]) == (best, len(val_loss))
    assert best < len(val_loss) < 6 and len(val_loss) == best + 1  # patience 1: one epoch past the best
    assert val_loss[-1] > 1.5 * val_loss[best - 1]  # the too-high learning rate did its harm
    final_steps = [step for step, _ in metric_history(stopped.uri, stopped.run_id, "test_loss")]
    assert final_steps == [len(val_loss)]  # the final metrics at the step of the epochs trained


def test_the_logged_model_and_metrics_are_the_best_epochs_not_the_last(stopped: Trained) -> None:
    state = stopped.checkpoint()
    best, last = state["early_stopping"]["best_weights"], state["model"]
    assert not _equal_weights(best, last)
    run = stopped.read_back()
    assert _equal_weights(run.model.state_dict(), best)
    test_images = run.images("test")
    assert run.metrics["test_mse"] == pytest.approx(references.reconstruction_mse(run.model, test_images), rel=1e-5)
    run.model.load_state_dict(last)  # the last epoch's weights measure clearly worse
    assert references.reconstruction_mse(run.model, test_images) > 1.2 * run.metrics["test_mse"]


def test_the_code_metrics_are_scikit_learns_on_the_logged_models_codes(stopped: Trained) -> None:
    """k-NN fit on the training split's codes and scored on the test split's (exactly), k-means on the test codes
    with NMI and ARI each under its own name, the probe within one test image; on codes where the metrics computed
    leave-one-in or on the training codes would be clearly different."""
    run = stopped.read_back()
    expected = references.code_metrics(run)
    train, test = run.codes("train"), run.codes("test")
    train_labels, test_labels = run.labels("train"), run.labels("test")
    leave_one_in = references.knn_accuracies(test, test_labels, test, test_labels)
    on_training = references.knn_accuracies(train, train_labels, train, train_labels)
    for wrong in (leave_one_in, on_training):
        assert abs(wrong["knn_acc"] - expected["test_knn_acc"]) > 0.05
    assert references.kmeans_scores(train, train_labels, run.config.seed)["kmeans_nmi"] != pytest.approx(
        expected["test_kmeans_nmi"], abs=1e-3)
    assert abs(expected["test_kmeans_nmi"] - expected["test_kmeans_ari"]) > 0.05
    for name in ("test_knn1_acc", "test_knn_acc", "test_knn20_acc", "test_kmeans_nmi", "test_kmeans_ari"):
        assert run.metrics[name] == pytest.approx(expected[name], abs=1e-12), name
    assert run.metrics["test_probe_acc"] == pytest.approx(expected["test_probe_acc"], abs=1 / len(test) + 1e-12)


def test_the_embedding_metrics_are_scikit_learns(stopped: Trained) -> None:
    """The PCA view of every test code: trustworthiness at k=10 and the 5-NN accuracy of 5-fold cross-validation in
    the 2-D points, as the README says (k = 5 would give another number here)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import trustworthiness
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    run = stopped.read_back()
    codes, labels = run.codes("test").astype(np.float64), run.labels("test")
    points = PCA(2).fit_transform(codes).astype(np.float32).astype(np.float64)
    expected_trust = trustworthiness(codes, points, n_neighbors=10)
    assert abs(trustworthiness(codes, points, n_neighbors=5) - expected_trust) > 1e-3
    assert run.metrics["embed_trust"] == run.metrics["embed_pca_trust"] == pytest.approx(expected_trust, abs=1e-9)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=run.config.seed)
    expected_knn = cross_val_score(KNeighborsClassifier(n_neighbors=5), points, labels, cv=folds).mean()
    assert run.metrics["embed_knn_acc"] == pytest.approx(expected_knn, abs=1e-9)


def test_the_pca_baseline_is_scikit_learns(stopped: Trained) -> None:
    run = stopped.read_back()
    expected = references.pca_baseline(run)
    assert run.metrics["pca_knn_acc"] == pytest.approx(expected["pca_knn_acc"], abs=1e-12)
    assert run.metrics["pca_test_mse"] == pytest.approx(expected["pca_test_mse"], rel=1e-5)


def test_patience_null_trains_the_fixed_length_and_evaluates_the_last_epoch(tmp_path: Path) -> None:
    """The README's fixed length: the schedule that stopped the run above after 3 epochs trains all 4 here."""
    trained = _train(tmp_path, *STOPS_EARLY, "trainer.epochs=4", "trainer.early_stopping.patience=null")
    metrics = MlflowClient(trained.uri).get_run(trained.run_id).data.metrics
    assert [step for step, _ in metric_history(trained.uri, trained.run_id, "train_loss")] == [1, 2, 3, 4]
    assert metrics["stopped_epoch"] == 4 and "best_epoch" not in metrics
    state = trained.checkpoint()
    assert state["early_stopping"] is None
    assert _equal_weights(trained.read_back().model.state_dict(), state["model"])
