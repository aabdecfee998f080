"""The VQ-VAE: each code is a few short vectors, each replaced by its nearest entry of a learned codebook."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aeexp.errors import require
from aeexp.models.base import Autoencoder, glorot_, pixel_loss
from aeexp.models.coders import Kind, coders


class VQVAE(Autoencoder):
    """Vector-quantised autoencoder (van den Oord et al. 2017) on a vector bottleneck.

    The encoder (``kind`` dense or conv) gives ``bottleneck`` values, read as ``bottleneck / vector_size`` vectors
    of ``vector_size`` values; each is replaced by its nearest of the ``codebook_size`` codebook vectors, so a code
    is one of ``codebook_size ** (bottleneck / vector_size)``. Gradients pass the quantisation straight through.
    Loss: ``recon + codebook + commitment * commit``, with ``codebook`` the squared distance of the chosen entries
    to the (fixed) encoder outputs and ``commit`` that of the encoder outputs to the (fixed) entries. The codebook
    starts from encoder outputs of the first training batch. Parts: ``recon``, ``codebook``, ``commit`` and
    ``perplexity`` (``exp`` of the entropy of the entries' use in a batch: how many entries are in use, in effect).
    Codes (``encode``) are the quantised vectors.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int] = (128, 64), bottleneck: int = 32,
                 kind: Kind = "dense", codebook_size: int = 256, vector_size: int = 4, commitment: float = 0.25,
                 **kwargs: Any) -> None:
        super().__init__(image_shape, bottleneck, **kwargs)
        require(codebook_size >= 2, "codebook_size", codebook_size, "it must be at least 2")
        require(vector_size >= 1 and self.bottleneck % vector_size == 0, "vector_size", vector_size,
                f"it must divide the bottleneck {self.bottleneck}")
        require(commitment >= 0, "commitment", commitment, "it must be >= 0")
        self.kind, self.widths = kind, list(widths)
        self.codebook_size, self.vector_size, self.commitment = codebook_size, vector_size, float(commitment)
        self.encoder, self.decoder = coders(kind, self.image_shape, self.widths, self.bottleneck, self.bottleneck)
        glorot_(self)
        self.codebook = nn.Parameter(torch.empty(codebook_size, vector_size).uniform_(-1 / codebook_size,
                                                                                      1 / codebook_size))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def quantise(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder outputs ``(N, bottleneck)`` -> the nearest codebook vectors ``(N, bottleneck)`` and their indices
        ``(N, bottleneck / vector_size)``."""
        vectors = features.float().reshape(-1, self.vector_size)
        codebook = self.codebook.float()
        distances = (vectors.square().sum(1, keepdim=True) - 2 * vectors @ codebook.t()
                     + codebook.square().sum(1))
        indices = distances.argmin(1)
        return codebook[indices].view(features.shape), indices.view(len(features), -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> quantised codes ``(N, bottleneck)``."""
        return self.quantise(self.encoder(x))[0]

    @torch.no_grad()
    def codebook_usage(self, x: torch.Tensor) -> torch.Tensor:
        """How many of the images ``x``'s quantised vectors chose each codebook entry: ``(codebook_size,)`` counts."""
        indices = self.quantise(self.encoder(x))[1]
        return torch.bincount(indices.flatten(), minlength=self.codebook_size)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z)

    @torch.no_grad()
    def _start_codebook(self, features: torch.Tensor) -> None:
        """The codebook as encoder output vectors drawn from ``features`` (global torch RNG): no entry starts far
        from the data, where nothing would ever choose it."""
        vectors = features.detach().float().reshape(-1, self.vector_size)
        rows = torch.randint(len(vectors), (self.codebook_size,), device=vectors.device)
        self.codebook.copy_(vectors[rows])
        self.initialised.fill_(True)

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.encoder(inputs).float()
        if self.training and not bool(self.initialised):
            self._start_codebook(features)
        quantised, indices = self.quantise(features)
        codebook = F.mse_loss(quantised, features.detach())
        commit = F.mse_loss(features, quantised.detach())
        recon = pixel_loss(self.decode_logits(features + (quantised - features).detach()), targets, self.loss)
        use = torch.bincount(indices.flatten(), minlength=self.codebook_size).float() / indices.numel()
        perplexity = torch.exp(-(use * torch.log(use.clamp_min(1e-12))).sum())
        return recon + codebook + self.commitment * commit, {"recon": recon, "codebook": codebook, "commit": commit,
                                                             "perplexity": perplexity}
