"""Latent health: whether a model's code is in use, measured every epoch (on the validation codes) and at the end (on
the test codes), and the alarm a run raises when it ends with a code that is not.

The health list (``conf/health/*.yaml``) holds components like the metric list's: functions of the ``codes`` (an
``(N, bottleneck)`` array), the ``model`` and the uint8 ``images`` the codes are of, each returning ``{name: value}``.
What a model can say about its own code comes from an optional hook of the model, looked for, never switched on by
its config: ``kl_per_dimension(x)`` (a VAE: KL of each code dimension, in nats, averaged over ``x``) and
``codebook_usage(x)`` (a VQ-VAE: how often ``x`` chose each codebook entry). A component whose hook the model lacks
returns nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from aeexp.evaluation import guard
from aeexp.evaluation.bounds import Positive
from aeexp.evaluation.lists import Component
from aeexp.models.inference import batches, encode_all

log = logging.getLogger(__name__)

ACTIVE_VARIANCE = 0.01  # a code dimension is active when its variance over the images exceeds this (Burda et al. 2016)
COLLAPSED_KL = 0.01  # a VAE's code dimension has collapsed when its mean KL from the prior is below this, in nats
CODEBOOK_ALARM_FRACTION = 0.1  # the alarm: a codebook whose images use under this share of its entries
ALARM_TAG = "latent.alarm"
EPOCH_IMAGES = 2048  # validation images measured each epoch (the first ones): plenty for a variance, cheap per epoch
CODES = "latent_codes"  # what a skip of the codes themselves is called


def _batched(hook: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mean: bool) -> np.ndarray:
    """``hook`` over uint8 ``images`` batch by batch (no gradients, evaluation mode): the sum of its outputs, or with
    ``mean`` their mean weighted by batch size."""
    total: torch.Tensor | None = None
    with torch.no_grad():
        for batch in batches(images):
            value = hook(batch).double() * (len(batch) if mean else 1)
            total = value if total is None else total + value
    if total is None:
        raise ValueError("there are no images")
    return (total / len(images) if mean else total).cpu().numpy()


def _from_hook(model: Any, name: str, images: torch.Tensor, mean: bool) -> np.ndarray | None:
    """The model's hook ``name`` over ``images`` in eval mode (see :func:`_batched`); None without the hook."""
    hook = getattr(model, name, None)
    if not callable(hook):
        return None
    model.eval()
    return _batched(hook, images, mean=mean)


def kl_per_dimension(model: Any, images: torch.Tensor) -> np.ndarray | None:
    """The model's KL per code dimension over ``images`` (its ``kl_per_dimension`` hook); None without the hook."""
    return _from_hook(model, "kl_per_dimension", images, mean=True)


def codebook_usage(model: Any, images: torch.Tensor) -> np.ndarray | None:
    """How many times ``images`` chose each codebook entry (the model's ``codebook_usage`` hook); None without it."""
    return _from_hook(model, "codebook_usage", images, mean=False)


def active_units(codes: np.ndarray, threshold: Positive = ACTIVE_VARIANCE) -> dict[str, float]:
    """``latent_active_units``: the code dimensions whose variance over the images exceeds ``threshold``;
    ``latent_dead_units``: the others."""
    codes = np.asarray(codes, dtype=np.float64)
    if not np.isfinite(codes).all():
        raise ValueError("the codes hold NaN or infinite values")
    active = int((codes.var(axis=0) > threshold).sum())
    return {"latent_active_units": float(active), "latent_dead_units": float(codes.shape[1] - active)}


def collapsed_dimensions(model: Any, images: torch.Tensor, threshold: Positive = COLLAPSED_KL) -> dict[str, float]:
    """``latent_collapsed_dims``: the code dimensions whose KL from the prior, averaged over the images, is below
    ``threshold`` nats (a model with a ``kl_per_dimension`` hook); ``latent_kl``: their KL summed."""
    kl = kl_per_dimension(model, images)
    if kl is None:
        return {}
    return {"latent_collapsed_dims": float((kl < threshold).sum()), "latent_kl": float(kl.sum())}


def codebook(model: Any, images: torch.Tensor) -> dict[str, float]:
    """``codebook_used``: the codebook entries the images chose at least once; ``codebook_used_fraction``: their
    share of the codebook; ``codebook_perplexity``: ``exp`` of the entropy of the entries' use, how many are used in
    effect (a model with a ``codebook_usage`` hook)."""
    counts = codebook_usage(model, images)
    if counts is None:
        return {}
    share = counts / max(counts.sum(), 1)
    used = share[share > 0]
    return {"codebook_used": float(len(used)), "codebook_used_fraction": float(len(used) / len(counts)),
            "codebook_perplexity": float(np.exp(-(used * np.log(used)).sum()))}


def measure(health: Mapping[str, Component], model: Any, images: torch.Tensor, codes: np.ndarray | None,
            prefix: str, skips: guard.Skips) -> dict[str, float]:
    """Each health component on ``images`` and their ``codes`` (encoded here when None), named ``<prefix>_<name>``
    (``prefix`` empty: ``<name>``); one that fails is skipped."""
    if not health:
        return {}
    if codes is None:
        codes = skips.attempt(CODES, lambda: encode_all(model, images).numpy())
        if codes is None:
            return {}
    return guard.measure(health, {"codes": codes, "model": model, "images": images}, prefix, skips)


class EpochHealth:
    """The health list measured at the end of each epoch on the validation images (the first
    :data:`EPOCH_IMAGES` of them). A component that fails once is skipped for the rest of the run (one warning line,
    its reason kept in ``skips``)."""

    def __init__(self, health: Mapping[str, Component], images: torch.Tensor) -> None:
        self.health, self.images, self.skips = dict(health), images[:EPOCH_IMAGES], guard.Skips()

    def __call__(self, model: Any) -> dict[str, float]:
        values = measure(self.health, model, self.images, None, "", self.skips)
        failed = set(self.skips.reasons)
        self.health = {name: c for name, c in self.health.items() if name not in failed and CODES not in failed}
        return values


def alarm(metrics: Mapping[str, float], prefix: str = "test") -> str | None:
    """Why a run's code is unhealthy, from its end-of-run health metrics (``<prefix>_latent_*``,
    ``<prefix>_codebook_*``), or None: collapsed or dead dimensions, all codes alike, a codebook using under
    :data:`CODEBOOK_ALARM_FRACTION` of its entries."""
    def value(name: str) -> float | None:
        return metrics.get(f"{prefix}_{name}")

    active, dead, collapsed = value("latent_active_units"), value("latent_dead_units"), value("latent_collapsed_dims")
    reasons = []
    if active == 0:
        reasons.append(f"all codes alike (no code dimension has a variance above {ACTIVE_VARIANCE:g})")
    elif dead:
        reasons.append(f"{dead:.0f} of {active + dead:.0f} code dimensions dead (variance <= {ACTIVE_VARIANCE:g})")
    if collapsed:
        reasons.append(f"{collapsed:.0f} code dimensions collapsed to the prior (KL < {COLLAPSED_KL:g} nats)")
    fraction = value("codebook_used_fraction")
    if fraction is not None and fraction < CODEBOOK_ALARM_FRACTION:
        reasons.append(f"the codebook uses {value('codebook_used'):.0f} of its entries ({fraction:.1%} < "
                       f"{CODEBOOK_ALARM_FRACTION:.0%})")
    return "; ".join(reasons) or None
