"""The convolutional autoencoder: stride-2 3x3 convolutions down to a Linear code, transposed ones back up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aeexp.errors import require
from aeexp.models.base import Autoencoder, check_widths, glorot_


def conv_sizes(size: int, layers: int) -> list[int]:
    """Side lengths through ``layers`` stride-2 convolutions (kernel 3, padding 1): ``size``, then halved up."""
    sizes = [int(size)]
    for _ in range(layers):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def max_conv_layers(size: int) -> int:
    """How many stride-2 layers an image side of ``size`` takes before it is down to 1 (8 -> 3, 28 -> 5)."""
    return (int(size) - 1).bit_length()


def check_conv_widths(image_shape: tuple[int, ...], widths: Sequence[int]) -> list[int]:
    """``widths`` (channels of the stride-2 layers) checked against images of ``image_shape`` (C, H, W)."""
    widths = check_widths(widths)
    height, width = image_shape[1:]
    most = max_conv_layers(min(height, width))
    require(len(widths) <= most, "widths", widths,
            f"a conv model has one stride-2 layer per width and {height}x{width} images allow at most {most}")
    return widths


def conv_encoder(image_shape: tuple[int, ...], widths: list[int], out_features: int) -> nn.Sequential:
    """Stride-2 3x3 convolutions with ReLUs (channels ``widths``), flattened, then a Linear to ``out_features``."""
    channels, height, width = image_shape
    layers: list[nn.Module] = []
    for out_channels in widths:
        layers += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        channels = out_channels
    h, w = conv_sizes(height, len(widths))[-1], conv_sizes(width, len(widths))[-1]
    layers += [nn.Flatten(1), nn.Linear(channels * h * w, out_features)]
    return nn.Sequential(*layers)


def conv_decoder(image_shape: tuple[int, ...], widths: list[int], bottleneck: int) -> nn.Sequential:
    """The mirror of :func:`conv_encoder`: Linear + ReLU, then stride-2 transposed convolutions back to the image.

    Each transposed convolution's ``output_padding`` (0 or 1) restores the exact side length the matching
    convolution took in (28 -> 14 -> 7 -> 14 -> 28; 8 -> 4 -> 2 -> 4 -> 8; odd sides too). The last one has no
    activation: its outputs are logits.
    """
    channels, height, width = image_shape
    hs, ws = conv_sizes(height, len(widths)), conv_sizes(width, len(widths))
    layers: list[nn.Module] = [nn.Linear(bottleneck, widths[-1] * hs[-1] * ws[-1]), nn.ReLU(inplace=True),
                               nn.Unflatten(1, (widths[-1], hs[-1], ws[-1]))]
    for i in range(len(widths) - 1, -1, -1):
        out_channels = widths[i - 1] if i > 0 else channels
        padding = (hs[i] - (2 * hs[i + 1] - 1), ws[i] - (2 * ws[i + 1] - 1))
        layers.append(nn.ConvTranspose2d(widths[i], out_channels, 3, stride=2, padding=1, output_padding=padding))
        if i > 0:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ConvAutoencoder(Autoencoder):
    """Convolutional AE: stride-2 3x3 convolutions (channels ``widths``) -> Linear to the code -> mirror image.

    28x28 goes 28 -> 14 -> 7 with ``widths=[32, 64]``; 8x8 goes 8 -> 4 -> 2. Glorot-uniform weights, zero
    biases, as the dense AE.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int] = (32, 64), bottleneck: int = 32,
                 **kwargs: Any) -> None:
        super().__init__(image_shape, bottleneck, **kwargs)
        self.widths = check_conv_widths(self.image_shape, widths)
        self.encoder = conv_encoder(self.image_shape, self.widths, self.bottleneck)
        self.decoder = conv_decoder(self.image_shape, self.widths, self.bottleneck)
        glorot_(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)``."""
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z)
