"""Input corruption for denoising autoencoders (``model.noise``, ``model.noise_level``).

Random numbers come from the global torch RNG (``torch.rand_like``/``torch.randn_like``, the device's
generator on a GPU): checkpoints save and restore its state at the end of each epoch, so a resumed run draws
the same noise as one that was never interrupted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from aeexp.errors import require

if TYPE_CHECKING:
    import torch

Kind = Literal["none", "gaussian", "masking", "salt_pepper"]
KINDS: tuple[str, ...] = ("none", "gaussian", "masking", "salt_pepper")
# The level a kind gets when none is given: a std of 0.3 on [0, 1] pixels; a quarter of the pixels masked (as in
# Vincent et al. 2010); one pixel in ten turned to salt or pepper.
DEFAULT_LEVELS = {"none": 0.0, "gaussian": 0.3, "masking": 0.25, "salt_pepper": 0.1}


def checked_level(kind: str, level: float | None) -> float:
    """The noise level for ``kind``: ``level``, or the kind's default when None; InvalidParameter if it does not fit."""
    require(kind in KINDS, "noise", kind, f"choose one of {', '.join(KINDS)}")
    if level is None:
        return DEFAULT_LEVELS[kind]
    require(level >= 0, "noise_level", level, "it must be >= 0")
    require(kind not in ("masking", "salt_pepper") or level <= 1, "noise_level", level,
            f"with model.noise={kind} it is a probability: it must lie in [0, 1]")
    return float(level)


def corrupt(x: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """A corrupted copy of images ``x`` in [0, 1] (``x`` itself for ``none``); ``x`` is left unchanged.

    ``gaussian``: ``x + level * N(0, 1)`` clamped to [0, 1]; ``masking``: each pixel zeroed with probability
    ``level``; ``salt_pepper``: each pixel, with probability ``level``, set to 0 or 1 (equally likely).
    """
    if kind == "none":
        return x
    import torch

    if kind == "gaussian":
        return torch.randn_like(x).mul_(level).add_(x).clamp_(0.0, 1.0)
    draw = torch.rand_like(x)
    if kind == "masking":
        return x * (draw >= level)
    if kind == "salt_pepper":
        # One uniform draw decides both whether a pixel is hit (< level) and which way (halves).
        return torch.where(draw < level, (draw >= 0.5 * level).to(x.dtype), x)
    raise ValueError(f"unknown noise {kind!r}: choose one of {', '.join(KINDS)}")
