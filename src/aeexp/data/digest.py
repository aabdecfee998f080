"""A hash of the decoded data a run trained and was tested on: the same images and labels give the same hash, whatever
file they came from (a re-download, a copy, another compression), and any changed, added or removed image changes it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from aeexp.data.dataset import Arrays  # (which calls this: only its type here)

PREFIX = "sha256:"


def arrays_digest(arrays: Arrays) -> str:
    """``sha256:<hex>`` of the train and test images (uint8) and labels (as int64), with their shapes (~0.3 s for
    Fashion-MNIST's 70,000 images)."""
    digest = hashlib.sha256()
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        array = getattr(arrays, name)
        if array is None:
            digest.update(f"{name}:none;".encode())
            continue
        array = np.ascontiguousarray(array, dtype=np.uint8 if name.endswith("images") else np.int64)
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return PREFIX + digest.hexdigest()
