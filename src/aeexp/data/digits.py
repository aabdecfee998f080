"""scikit-learn's 1,797 8x8 handwritten digits: embedded in the package, needs no file and no download."""

from __future__ import annotations

from typing import Any

import numpy as np

from aeexp.data.dataset import Arrays, ImageDataset

TEST_FRACTION = 0.2


class Digits(ImageDataset):
    """``sklearn.datasets.load_digits`` as uint8 images (its 0..16 levels scaled to 0..255), with a fixed stratified
    20% test split (independent of the run's seed, so that runs compare on the same images)."""

    def __init__(self, name: str = "digits", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.image_shape = (1, 8, 8)
        self.class_names = [str(d) for d in range(10)]

    def read(self) -> Arrays:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        train_x, test_x, train_y, test_y = train_test_split(images, digits.target, test_size=TEST_FRACTION,
                                                            stratify=digits.target, random_state=0)
        return Arrays(train_x, train_y, test_x, test_y)
