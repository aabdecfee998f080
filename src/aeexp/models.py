"""Autoencoders behind one small interface: ``encode``, ``decode``, ``reconstruction_loss``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseAutoencoder(nn.Module):
    """Dense AE: input -> widths -> bottleneck (linear code) -> reversed widths -> input (sigmoid).

    Takes images ``(N, C, H, W)`` with values in [0, 1]. Weights are Glorot-uniform with zero biases (the
    Keras defaults the seed notebooks used), which trains noticeably better than PyTorch's default init.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.widths = [int(w) for w in widths]
        self.bottleneck = int(bottleneck)
        input_dim = 1
        for size in self.image_shape:
            input_dim *= size
        self.encoder = _mlp([input_dim, *self.widths, self.bottleneck], last_activation=False)
        self.decoder = _mlp([self.bottleneck, *reversed(self.widths), input_dim], last_activation=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)``."""
        return self.encoder(x.flatten(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z).view(-1, *self.image_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> reconstructed images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def reconstruction_loss(self, x: torch.Tensor, loss: str) -> torch.Tensor:
        """Mean per-pixel loss of reconstructing ``x``: ``bce`` (computed on logits, stable) or ``mse``."""
        logits = self.decode_logits(self.encode(x))
        if loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, x)
        if loss == "mse":
            return F.mse_loss(torch.sigmoid(logits), x)
        raise ValueError(f"unknown loss {loss!r}")


def build(image_shape: Sequence[int], widths: Sequence[int], bottleneck: int) -> DenseAutoencoder:
    """The autoencoder a model config describes, sized for the dataset's images."""
    return DenseAutoencoder(image_shape, widths, bottleneck)
