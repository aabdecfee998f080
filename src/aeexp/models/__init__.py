"""Autoencoders behind one contract (:class:`Autoencoder`, in :mod:`aeexp.models.base`), one file per family.

A config's ``model._target_`` names the class; :func:`build` makes it for the dataset's image shape, with its
parameters checked before any data is read. A model of your own is a subclass of :class:`Autoencoder` (or of one
of the families here) in any importable module, named by ``_target_`` in a YAML of your ``--config-dir``.

The classes are imported at their first use (``aeexp.models.DenseAutoencoder``): importing this package, for its
torch-free modules (:mod:`.common`, :mod:`.noise`), does not import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aeexp.models.common import common_settings

if TYPE_CHECKING:
    from aeexp.models.base import Autoencoder, glorot_, pixel_loss
    from aeexp.models.conv import ConvAutoencoder
    from aeexp.models.dense import DenseAutoencoder
    from aeexp.models.sparse import SparseAutoencoder
    from aeexp.models.vae import VariationalAutoencoder
    from aeexp.models.vqvae import VQVAE

__all__ = ["VQVAE", "Autoencoder", "ConvAutoencoder", "DenseAutoencoder", "SparseAutoencoder",
           "VariationalAutoencoder", "arguments", "build", "check", "glorot_", "pixel_loss"]

# Each public class's or function's module, imported when the name is first used.
HOMES = {"Autoencoder": "base", "glorot_": "base", "pixel_loss": "base", "ConvAutoencoder": "conv",
         "DenseAutoencoder": "dense", "SparseAutoencoder": "sparse", "VariationalAutoencoder": "vae", "VQVAE": "vqvae"}

# Keys of a model config that are not parameters of its class.
NOT_PARAMETERS = ("name",)


def __getattr__(name: str) -> Any:
    if name not in HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    found = getattr(importlib.import_module(f"{__name__}.{HOMES[name]}"), name)
    globals()[name] = found
    return found


def _not_taken(config: Any, target: Any) -> list[str]:
    """The common settings (:mod:`.common`) that ``target`` does not take, a class whose ``__init__`` passes no
    ``**kwargs`` to :class:`Autoencoder`'s, and that ``config`` leaves at their defaults: left out, not refused."""
    from aeexp import components

    taken = components.parameter_names(target)
    return [key for key, default in common_settings().items()
            if key not in taken and key in config and config[key] == default]


def _excluded(config: Any) -> tuple[str, ...]:
    """The keys of a ``model`` config that are not given to its class."""
    from aeexp import components

    return (*NOT_PARAMETERS, *_not_taken(config, components.target_of(config, "model")))


def build(config: Any, image_shape: Sequence[int]) -> Autoencoder:
    """The model a ``model`` config describes, for images of ``image_shape`` (C, H, W); ConfigError naming the key
    of a bad or unknown parameter, or of a ``_target_`` that is not an :class:`Autoencoder`."""
    from aeexp import components

    return components.build(config, "model", exclude=_excluded(config), base=__getattr__("Autoencoder"),
                            image_shape=tuple(int(s) for s in image_shape))


def arguments(config: Any, image_shape: Sequence[int]) -> dict[str, Any]:
    """The arguments :func:`build` makes the model with, its class's defaults included (``code_norm="none"`` for a
    dense AE whose config leaves it out), ``image_shape`` too."""
    from aeexp import components

    return components.arguments(config, "model", exclude=_excluded(config),
                                image_shape=[int(s) for s in image_shape])


def check(config: Any, image_shape: Sequence[int]) -> int | None:
    """Check a ``model`` config as :func:`build` does, on PyTorch's meta device (no memory, no arithmetic: a
    fraction of a second even for a huge model); return the model's parameter count. A model that cannot be made on
    the meta device (one that reads its own values in ``__init__``) is left to :func:`build`: None."""
    import torch

    from aeexp.components import ConstructionError

    try:
        with torch.device("meta"):
            model = build(config, image_shape)
    except ConstructionError:
        return None
    return sum(p.numel() for p in model.parameters())
