"""Encoder/decoder pairs of the dense and convolutional families, for models that offer both (VAE, VQ-VAE)."""

from __future__ import annotations

import math
from typing import Literal

from torch import nn

from aeexp.errors import require
from aeexp.models.base import check_widths
from aeexp.models.conv import check_conv_widths, conv_decoder, conv_encoder
from aeexp.models.dense import mlp

Kind = Literal["dense", "conv"]


def coders(kind: str, image_shape: tuple[int, ...], widths: list[int], encoder_out: int, bottleneck: int
           ) -> tuple[nn.Sequential, nn.Sequential]:
    """An encoder from images ``(N, C, H, W)`` to ``encoder_out`` features and a decoder from ``bottleneck``-d
    codes to logits ``(N, C, H, W)``: ``dense`` (Linear layers through ``widths``) or ``conv`` (stride-2
    convolutions with ``widths`` channels)."""
    require(kind in ("dense", "conv"), "kind", kind, "choose one of dense, conv")
    if kind == "conv":
        widths = check_conv_widths(image_shape, widths)
        return conv_encoder(image_shape, widths, encoder_out), conv_decoder(image_shape, widths, bottleneck)
    widths = check_widths(widths)
    pixels = math.prod(image_shape)
    encoder = nn.Sequential(nn.Flatten(1), *mlp([pixels, *widths, encoder_out]))
    decoder = nn.Sequential(*mlp([bottleneck, *reversed(widths), pixels]), nn.Unflatten(1, image_shape))
    return encoder, decoder
