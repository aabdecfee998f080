"""Import torchvision safely on a CPU-only torch (pytorch/vision#9085).

The only torchvision 0.28 wheel on PyPI is a CUDA build whose ``_C`` extension needs ``libc10_cuda.so``.
With a CPU torch it cannot load, and ``torchvision/_meta_registrations.py`` then fails at import with
``operator torchvision::nms does not exist``. Defining the two op schemas it registers fakes for lets the
pure-Python parts (datasets, transforms, ``utils.make_grid``) import. Where the extension loads, this is a
no-op. Import torchvision through :func:`torchvision` below, never directly.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from types import ModuleType

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: let the real import raise its own error
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for so in package_dir.glob("_C*.so"):
        try:
            ctypes.CDLL(str(so))
        except OSError:
            return False
    return True


def _define_missing_ops() -> None:
    global _library
    if _library is not None or _extension_loads():
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


def torchvision() -> ModuleType:
    """The ``torchvision`` module, importable on CPU-only torch."""
    _define_missing_ops()
    import torchvision as tv

    return tv
