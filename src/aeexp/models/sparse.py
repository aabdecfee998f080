"""The sparse autoencoder: a dense AE whose codes pay an L1 penalty (written as a user would write a model)."""

from __future__ import annotations

from typing import Any

import torch

from aeexp.errors import require
from aeexp.models.base import pixel_loss
from aeexp.models.dense import DenseAutoencoder


class SparseAutoencoder(DenseAutoencoder):
    """A dense AE trained on ``recon + l1 * mean |code|``: the penalty pushes most code values to zero for any one
    image. Parts: ``recon`` and ``l1`` (the mean absolute code value, before the weight ``l1``)."""

    def __init__(self, *args: Any, l1: float = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require(l1 >= 0, "l1", l1, "it must be >= 0")
        self.l1 = float(l1)

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes = self.encode(inputs)
        recon = pixel_loss(self.decode_logits(codes), targets, self.loss)
        penalty = codes.float().abs().mean()
        return recon + self.l1 * penalty, {"recon": recon, "l1": penalty}
