"""The dense autoencoder: input -> widths -> bottleneck (a linear code) -> reversed widths -> input."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aeexp.models.base import Autoencoder, check_widths, glorot_


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers through ``sizes`` with a ReLU after each but the last (whose outputs are codes or logits)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            # In place: the activation overwrites the Linear's fresh output (one allocation less per layer).
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DenseAutoencoder(Autoencoder):
    """Dense AE: input -> ``widths`` -> ``bottleneck`` (linear code) -> reversed ``widths`` -> input (sigmoid).

    ``widths=[128, 64]`` with ``bottleneck=32`` on 28x28 images is the Fashion-MNIST notebook's 784-128-64-32.
    Glorot-uniform weights and zero biases.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int] = (128, 64), bottleneck: int = 32,
                 **kwargs: Any) -> None:
        super().__init__(image_shape, bottleneck, **kwargs)
        self.widths = check_widths(widths)
        self.encoder = mlp([self.pixels, *self.widths, self.bottleneck])
        self.decoder = mlp([self.bottleneck, *reversed(self.widths), self.pixels])
        glorot_(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)``."""
        return self.encoder(x.flatten(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z).view(-1, *self.image_shape)
