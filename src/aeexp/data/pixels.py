"""Pixel values as aeexp takes them: uint8 (or other integers) 0..255, or floats in [0, 1]; anything else refused."""

from __future__ import annotations

import numpy as np

from aeexp.errors import DataError


def checked_pixels(array: np.ndarray, source: object) -> np.ndarray:
    """``array`` as uint8 0..255 or float32 in [0, 1]; refuse other values with one line naming ``source``."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError(f"{source} holds integer values from {array.min()} to {array.max()}; pixels must be "
                            "0..255 (or floats in [0, 1])")
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if array.size and not np.isfinite(array).all():
            raise DataError(f"{source} holds NaN or infinite values; pixels must be floats in [0, 1] or 0..255 "
                            "integers")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise DataError(f"{source} holds float values from {float(array.min()):g} to {float(array.max()):g}; "
                            "float pixels must lie in [0, 1] (divide 0..255 values by 255, or save them as uint8)")
        return array.astype(np.float32)
    raise DataError(f"{source} holds {array.dtype} values; pixels must be uint8 0..255 or floats in [0, 1]")


def as_uint8(array: np.ndarray, source: object) -> np.ndarray:
    """Checked pixels (see :func:`checked_pixels`) as uint8, floats in [0, 1] scaled to 0..255 and rounded."""
    pixels = checked_pixels(array, source)
    if pixels.dtype == np.uint8:
        return pixels
    return np.rint(pixels * np.float32(255.0)).astype(np.uint8)
