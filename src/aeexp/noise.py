"""Input corruption for denoising autoencoders (``model.noise``, ``model.noise_level``).

Random numbers come from the global torch RNG (``torch.rand_like``/``torch.randn_like``, the device's
generator on a GPU): checkpoints save and restore its state at the end of each epoch, so a resumed run draws
the same noise as one that was never interrupted.
"""

from __future__ import annotations

import torch

KINDS = ("none", "gaussian", "masking", "salt_pepper")


def check(kind: str, level: float) -> str:
    """``kind`` as a plain string, after checking it and ``level``; ValueError otherwise."""
    kind = str(getattr(kind, "value", kind))
    if kind not in KINDS:
        raise ValueError(f"unknown noise {kind!r}: choose one of {', '.join(KINDS)}")
    if kind in ("masking", "salt_pepper") and not 0.0 <= level <= 1.0:
        raise ValueError(f"{kind} noise takes a probability in [0, 1], not {level}")
    if kind == "gaussian" and level < 0:
        raise ValueError(f"gaussian noise takes a standard deviation >= 0, not {level}")
    return kind


def corrupt(x: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """A corrupted copy of images ``x`` in [0, 1] (``x`` itself for ``none``); ``x`` is left unchanged.

    ``gaussian``: ``x + level * N(0, 1)`` clamped to [0, 1]; ``masking``: each pixel zeroed with probability
    ``level``; ``salt_pepper``: each pixel, with probability ``level``, set to 0 or 1 (equally likely).
    """
    kind = check(kind, level)
    if kind == "none":
        return x
    if kind == "gaussian":
        return torch.randn_like(x).mul_(level).add_(x).clamp_(0.0, 1.0)
    draw = torch.rand_like(x)
    if kind == "masking":
        return x * (draw >= level)
    # salt_pepper: one uniform draw decides both whether a pixel is hit (< level) and which way (halves).
    return torch.where(draw < level, (draw >= 0.5 * level).to(x.dtype), x)
