"""The variational autoencoder: a diagonal Gaussian posterior, a standard-normal prior, the reparameterisation trick."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from aeexp.errors import require
from aeexp.models.base import Autoencoder, glorot_, pixel_loss
from aeexp.models.coders import Kind, coders

LOGVAR_RANGE = (-30.0, 20.0)  # clamps log-variances so that exp() neither underflows to 0 nor overflows


class VariationalAutoencoder(Autoencoder):
    """VAE with a dense or convolutional (``kind``) encoder ending in ``2 * bottleneck`` outputs: the posterior's
    mean and log-variance.

    ``encode`` gives the mean (deterministic). Training draws ``z = mu + sigma * eps`` with ``eps`` from the global
    torch RNG (saved in checkpoints, so resumed runs stay bit-identical) and minimises ``recon + beta * KL /
    pixels``: ``recon`` the mean per-pixel loss of the sample's reconstruction, ``KL`` the divergence from the
    prior summed over the code and averaged over the batch (so that with ``loss=bce`` and ``beta=1`` the sum is
    the per-image negative ELBO over the pixel count). Parts: ``recon`` and ``kl``.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int] = (128, 64), bottleneck: int = 32,
                 kind: Kind = "dense", beta: float = 1.0, beta_warmup_epochs: int = 0, **kwargs: Any) -> None:
        super().__init__(image_shape, bottleneck, **kwargs)
        require(beta >= 0, "beta", beta, "it must be >= 0")
        require(beta_warmup_epochs >= 0, "beta_warmup_epochs", beta_warmup_epochs, "it must be >= 0")
        self.kind, self.beta, self.widths = kind, float(beta), list(widths)
        self.beta_warmup_epochs = beta_warmup_epochs
        self.beta_now = self.beta if beta_warmup_epochs == 0 else 0.0
        self.encoder, self.decoder = coders(kind, self.image_shape, self.widths, 2 * self.bottleneck,
                                            self.bottleneck)
        glorot_(self)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(N, bottleneck)`` each of the posterior of ``x``."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> posterior means ``(N, bottleneck)``."""
        return self.posterior(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z)

    @torch.no_grad()
    def kl_per_dimension(self, x: torch.Tensor) -> torch.Tensor:
        """KL(posterior || N(0, I)) of each code dimension, in nats, averaged over the images ``x``: ``(bottleneck,)``.
        A dimension whose KL stays near 0 carries no information about the image (posterior collapse)."""
        mean, logvar = self.posterior(x)
        return 0.5 * (mean.float().square() + logvar.float().exp() - 1.0 - logvar.float()).mean(dim=0)

    def prior_quantiles(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The prior's quantiles at ``probabilities`` ``(steps,)`` for every code dimension ``(steps, bottleneck)``:
        a latent traversal's range in prior units (standard normal)."""
        return torch.special.ndtri(probabilities.double()).float()[:, None].expand(-1, self.bottleneck)

    def kl_per_pixel(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(posterior || N(0, I)) summed over the code, averaged over the batch, divided by the pixels."""
        kl = 0.5 * (mean.float().square() + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=1)
        return kl.mean() / self.pixels

    def start_epoch(self, epoch: int) -> None:
        """The KL weight of epoch ``epoch`` (from 1): with ``beta_warmup_epochs`` W, it rises linearly from 0 at
        epoch 1 to ``beta`` at epoch W + 1 (the KL warm-up of Bowman et al. 2016), then stays."""
        warmup = self.beta_warmup_epochs
        self.beta_now = self.beta * min(1.0, (epoch - 1) / warmup) if warmup else self.beta

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``recon + beta * kl`` of one sampled code per input (beta: this epoch's, see :meth:`start_epoch`), and
        the parts ``recon``, ``kl`` and ``beta``."""
        mean, logvar = self.posterior(inputs)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = pixel_loss(self.decode_logits(z), targets, self.loss)
        kl = self.kl_per_pixel(mean, logvar)
        return recon + self.beta_now * kl, {"recon": recon, "kl": kl, "beta": kl.new_tensor(self.beta_now)}

    def evaluation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """``recon(decode(mean)) + beta * KL / pixels``: the training objective at the mean code (deterministic),
        with the full ``beta`` also during a warm-up, so that validation losses of all epochs compare."""
        mean, logvar = self.posterior(x)
        return pixel_loss(self.decode_logits(mean), x, self.loss) + self.beta * self.kl_per_pixel(mean, logvar)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images decoded from codes drawn from the prior N(0, I) with ``generator`` (on the CPU)."""
        codes = torch.randn(n, self.bottleneck, generator=generator)
        return self.decode(codes.to(next(self.parameters()).device))
