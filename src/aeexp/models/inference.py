"""A trained model applied to uint8 images without gradients: losses, codes and reconstructions, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from aeexp.models.base import Autoencoder

EVAL_BATCH_SIZE = 4096  # images per forward pass when evaluating or encoding (no gradients kept)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], on the images' device (the division promotes to float32; on a CPU
    through a float32 temporary, which the fast path's ``gather_batches`` avoids)."""
    return torch.div(images, 255.0)


def batches(images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> Iterator[torch.Tensor]:
    """Float batches of uint8 ``images``, in order."""
    for start in range(0, images.shape[0], batch_size):
        yield to_float(images[start:start + batch_size])


@torch.no_grad()
def evaluate_loss(model: Autoencoder, images: torch.Tensor) -> float:
    """The model's deterministic objective (``evaluation_loss``) over all ``images``, weighted by batch size."""
    model.eval()
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    for batch in batches(images, EVAL_BATCH_SIZE):
        total += model.evaluation_loss(batch).double() * batch.shape[0]
    return float(total) / images.shape[0]


@torch.no_grad()
def reconstruction_mse(model: Autoencoder, images: torch.Tensor) -> float:
    """Mean squared error per pixel of the model's reconstructions (``model(x)``) of all ``images``."""
    model.eval()
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    for batch in batches(images, EVAL_BATCH_SIZE):
        total += (model(batch).float() - batch).square().sum(dtype=torch.float64)
    return float(total) / images.numel()


@torch.no_grad()
def encode_all(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """Codes of all ``images``, on the CPU."""
    model.eval()
    return torch.cat([model.encode(batch).float().cpu() for batch in batches(images, EVAL_BATCH_SIZE)])


@torch.no_grad()
def reconstruct(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """Reconstructions in [0, 1] of uint8 ``images``, on the CPU."""
    model.eval()
    return torch.cat([model(batch).float().cpu() for batch in batches(images, EVAL_BATCH_SIZE)])
