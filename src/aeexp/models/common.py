"""The settings every model takes through :class:`~aeexp.models.Autoencoder`: its per-pixel loss and its input noise,
their choices and their defaults. Without torch, so that a composed config shows them (``model.loss``,
``model.noise``, ``model.noise_level``) before torch is imported, whatever the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from aeexp.models.noise import Kind

Loss = Literal["bce", "mse"]
LOSSES: tuple[str, ...] = get_args(Loss)


@dataclass(frozen=True)
class CommonSettings:
    """``loss``: the per-pixel reconstruction loss, ``bce`` (binary cross-entropy on logits) or ``mse``. ``noise``:
    a denoising autoencoder (see :mod:`aeexp.models.noise`); ``noise_level`` None: the kind's default level."""

    loss: Loss = "bce"
    noise: Kind = "none"
    noise_level: float | None = None


DEFAULTS = CommonSettings()


def common_settings() -> dict[str, Any]:
    """The settings at their defaults, as the keys of a ``model`` config."""
    return asdict(DEFAULTS)
