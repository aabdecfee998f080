"""The baseline every autoencoder must beat: PCA with as many components as the bottleneck."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aeexp import metrics

CHUNK = 8192  # images converted to float at a time


@dataclass
class PCA:
    """Principal axes (rows of ``components``) and the mean of the data they were fit on."""

    mean: torch.Tensor
    components: torch.Tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components.T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.components + self.mean


def _flat_float(images: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return images[start:stop].reshape(stop - start, -1).cpu().to(torch.float32) / 255.0


def fit_pca(images: torch.Tensor, n_components: int) -> PCA:
    """PCA of uint8 ``images`` (N, ...) in [0, 1] pixel units: the mean, then the covariance of the centred
    images (float32 products, float64 sums and eigendecomposition)."""
    n = images.shape[0]
    dim = int(np.prod(images.shape[1:]))
    total = torch.zeros(dim, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        total += _flat_float(images, start, min(n, start + CHUNK)).sum(0, dtype=torch.float64)
    mean = (total / n).float()
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, n, CHUNK):
        centred = _flat_float(images, start, min(n, start + CHUNK)) - mean
        covariance += (centred.T @ centred).double()
    _, vectors = torch.linalg.eigh(covariance / n)  # ascending eigenvalues
    components = vectors[:, -n_components:].flip(1).T.float().contiguous()
    return PCA(mean, components)


def pca_metrics(train_images: torch.Tensor, train_labels: np.ndarray, test_images: torch.Tensor,
                test_labels: np.ndarray, n_components: int) -> dict[str, float]:
    """``pca_test_mse`` (per pixel, test split) and ``pca_knn_acc`` (5-NN on PCA codes, train -> test) of a PCA
    fit on the training split: the autoencoder's ``test_mse`` and ``test_knn_acc`` side by side."""
    pca = fit_pca(train_images, n_components)

    def codes_of(images: torch.Tensor) -> np.ndarray:
        return torch.cat([pca.encode(_flat_float(images, s, min(len(images), s + CHUNK)))
                          for s in range(0, len(images), CHUNK)]).numpy()

    squared_error = 0.0
    for start in range(0, len(test_images), CHUNK):
        x = _flat_float(test_images, start, min(len(test_images), start + CHUNK))
        squared_error += float((pca.decode(pca.encode(x)) - x).square().sum(dtype=torch.float64))
    pixels = len(test_images) * int(np.prod(test_images.shape[1:]))
    return {
        "pca_test_mse": squared_error / pixels,
        "pca_knn_acc": metrics.knn_accuracy(codes_of(train_images), train_labels, codes_of(test_images),
                                            test_labels),
    }
