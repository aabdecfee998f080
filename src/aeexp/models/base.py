"""The model contract: every autoencoder aeexp trains is an :class:`Autoencoder`.

A model takes images ``(N, C, H, W)`` with values in [0, 1] and defines ``encode`` (images -> codes
``(N, bottleneck)``) and ``decode_logits`` (codes -> pre-sigmoid images). ``training_loss(inputs, targets)``
returns the loss of one training step and its named parts, each logged per epoch as ``train_<part>``. Optional
abilities are methods the rest of aeexp looks for: ``sample(n, generator)`` (decoded draws from a prior) gives the
``prior_samples.png`` figure. A model checks its own parameters in ``__init__`` with
:func:`aeexp.errors.require`, so that a bad value is refused, naming its config key, before any data is read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aeexp.errors import require
from aeexp.models import noise as noises
from aeexp.models.common import DEFAULTS, LOSSES, Loss

log = logging.getLogger(__name__)


def pixel_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean per-pixel loss of ``sigmoid(logits)`` against ``target`` in [0, 1]: ``bce`` (on the logits, stable for
    any logit) or ``mse``; in float32 also under bf16 autocast."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    if loss == "mse":
        return F.mse_loss(torch.sigmoid(logits.float()), target.float())
    raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")


def glorot_(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every Linear and (transposed) convolution in ``module``: the
    Keras defaults the seed notebooks used, which train these models noticeably better than PyTorch's own."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def check_widths(widths: Sequence[int]) -> list[int]:
    """``widths`` as a list of positive ints, else :class:`~aeexp.errors.InvalidParameter` naming the entry."""
    widths = list(widths)
    require(len(widths) > 0, "widths", widths, "give at least one hidden width, e.g. [128,64]")
    for i, width in enumerate(widths):
        require(isinstance(width, int) and width > 0, f"widths[{i}]", width, "widths must be positive integers")
    return widths


class Autoencoder(nn.Module):
    """The base of every model: image shape, code size, reconstruction loss and input noise, and the contract.

    ``loss``, ``noise`` and ``noise_level`` are every model's settings (:mod:`aeexp.models.common`, their defaults).
    ``loss``: the per-pixel reconstruction loss, ``bce`` (binary cross-entropy on logits) or ``mse``. ``noise``:
    a denoising autoencoder; the training loop feeds ``corrupt(batch)`` as the inputs and the clean batch as the
    targets (``gaussian``: std ``noise_level``; ``masking``/``salt_pepper``: share of pixels hit). Without a
    level, each kind has a default (:data:`aeexp.models.noise.DEFAULT_LEVELS`), named in the log.
    """

    image_shape: tuple[int, ...]
    bottleneck: int

    def __init__(self, image_shape: Sequence[int], bottleneck: int, *, loss: Loss = DEFAULTS.loss,
                 noise: noises.Kind = DEFAULTS.noise, noise_level: float | None = DEFAULTS.noise_level) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        shape = "x".join(str(s) for s in self.image_shape)
        require(bottleneck > 0, "bottleneck", bottleneck, "it must be positive")
        require(bottleneck < self.pixels, "bottleneck", bottleneck,
                f"it must be smaller than the input size {self.pixels} of the dataset's {shape} images")
        require(loss in LOSSES, "loss", loss, f"choose one of {', '.join(LOSSES)}")
        self.bottleneck = int(bottleneck)
        self.loss = loss
        self.noise, self.noise_level = noise, noises.checked_level(noise, noise_level)
        if noise != "none" and noise_level is None:
            log.info("model.noise=%s without a level: using model.noise_level=%s", noise, self.noise_level)

    @property
    def pixels(self) -> int:
        """Values per image (C*H*W)."""
        return math.prod(self.image_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)`` (deterministic)."""
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> reconstructed images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> reconstructions in [0, 1] through the code."""
        return self.decode(self.encode(x))

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """The training inputs made from a clean batch: ``x`` itself, or a corrupted copy for a denoising model."""
        return noises.corrupt(x, self.noise, self.noise_level)

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of reconstructing ``targets`` from ``inputs`` (the same images, or a corrupted copy) and its
        named parts (none for a plain autoencoder: its loss is all reconstruction)."""
        return pixel_loss(self.decode_logits(self.encode(inputs)), targets, self.loss), {}

    def evaluation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The training objective on clean ``x``, deterministic (no noise, no sampling): the val and test loss."""
        return self.training_loss(x, x)[0]
