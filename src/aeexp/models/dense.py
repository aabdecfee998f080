"""The dense autoencoder: input -> widths -> bottleneck (a linear code) -> reversed widths -> input."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from aeexp.errors import require
from aeexp.models.base import Autoencoder, check_widths, glorot_

CodeNorm = Literal["none", "batch"]
CODE_NORMS: tuple[str, ...] = ("none", "batch")


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

    ``code_norm="batch"``: the code is a batch normalisation of the last encoder layer's outputs, without a learnt
    scale or shift, so each code dimension has mean 0 and variance 1 over the training images (batch statistics
    while training, their running averages after) and none dominates the codes' distances. That layer has no bias
    then: the normalisation would cancel it (its gradient is 0 but for rounding, which Adam would make steps of).
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int] = (128, 64), bottleneck: int = 32,
                 code_norm: CodeNorm = "none", **kwargs: Any) -> None:
        super().__init__(image_shape, bottleneck, **kwargs)
        require(code_norm in CODE_NORMS, "code_norm", code_norm, f"choose one of {', '.join(CODE_NORMS)}")
        self.widths = check_widths(widths)
        self.code_norm = code_norm
        self.encoder = mlp([self.pixels, *self.widths, self.bottleneck])
        if code_norm == "batch":  # the normalisation subtracts the mean: the code layer's bias would do nothing
            self.encoder[-1] = nn.Linear(self.encoder[-1].in_features, self.bottleneck, bias=False)
            self.encoder.append(nn.BatchNorm1d(self.bottleneck, affine=False))
        self.decoder = mlp([self.bottleneck, *reversed(self.widths), self.pixels])
        glorot_(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)``."""
        x = x.flatten(1)
        if self.code_norm == "batch" and self.training and x.shape[0] == 1:
            return self._encode_one(x)
        return self.encoder(x)

    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        """A training batch of one image (an epoch's last, where the split leaves one over) has no batch variance:
        its code is normalised with the running statistics, which it does not update."""
        norm = self.encoder[-1]
        return F.batch_norm(self.encoder[:-1](x), norm.running_mean, norm.running_var, training=False, eps=norm.eps)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z).view(-1, *self.image_shape)
