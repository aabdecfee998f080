"""A model whose pickle runs a shell command when it is unpickled, as a hostile model file would."""

from __future__ import annotations

import os
from typing import Any

from aeexp.models import DenseAutoencoder


class EvilAE(DenseAutoencoder):
    """A dense AE like any other, except that unpickling it runs ``touch <marker>``: ``torch.save(model)`` (what
    ``mlflow.pytorch.log_model`` does) stores the call, and ``torch.load(weights_only=False)`` makes it."""

    marker = "/nonexistent/evil-marker"

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


class Payload:
    """Not a model: an object whose unpickling runs ``touch <path>`` (a weights file swapped for a hostile one)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.path}",)
