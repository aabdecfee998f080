"""Image data: sources built from ``conf/dataset`` (``_target_``), their splits as uint8 tensors.

A dataset is one source class (a subclass of :class:`ImageDataset` that declares its image shape and class names
and reads its arrays) plus one YAML naming it. Nothing here imports torch at import time: the command line builds
the source and starts reading its files before its slow imports.
"""

from __future__ import annotations

from typing import Any

from aeexp.data.arrays import ArraysDataset
from aeexp.data.dataset import Arrays, Dataset, ImageDataset, Split, load
from aeexp.data.digits import Digits
from aeexp.data.downloads import StandardFiles
from aeexp.data.folder import FolderDataset
from aeexp.data.idx import IDX_FILES, IdxDataset, IdxFormatError, read_idx
from aeexp.data.torchvision_sets import Cifar10, Emnist, Svhn

__all__ = ["IDX_FILES", "Arrays", "ArraysDataset", "Cifar10", "Dataset", "Digits", "Emnist", "FolderDataset",
           "IdxDataset", "IdxFormatError", "ImageDataset", "Split", "StandardFiles", "Svhn", "build",
           "known_image_shapes", "load", "preset", "read_idx"]


def build(config: Any) -> ImageDataset:
    """The dataset source a ``dataset`` config describes (nothing read yet); ConfigError naming a bad key."""
    from aeexp import components

    return components.build(config, "dataset", base=ImageDataset)


LISTED_FIRST = ("digits", "mnist", "fashion_mnist", "kmnist", "emnist", "cifar10", "svhn")


def _packaged_configs() -> dict[str, Any]:
    """The dataset configs shipped in ``aeexp.conf/dataset``, by file stem."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    return {entry.name.removesuffix(".yaml"): OmegaConf.create(entry.read_text(encoding="utf-8"))
            for entry in files("aeexp.conf").joinpath("dataset").iterdir() if entry.name.endswith(".yaml")}


def preset(name: str, /, **overrides: Any) -> ImageDataset:
    """The source of a shipped dataset config (``dataset=<name>``) with some of its keys changed, e.g.
    ``preset("mnist", root="/data")`` (or ``name="mine"``): for scripts and tests that do not compose a whole
    config."""
    from omegaconf import OmegaConf

    configs = _packaged_configs()
    if name not in configs:
        raise KeyError(f"no dataset config {name!r}; shipped: {', '.join(sorted(configs))}")
    return build(OmegaConf.merge(configs[name], overrides))


def known_image_shapes() -> dict[str, tuple[int, int, int]]:
    """The image shape (C, H, W) of each dataset aeexp ships a config for, by name, read from those configs."""
    from aeexp.errors import ConfigError

    shapes: dict[str, tuple[int, int, int]] = {}
    configs = _packaged_configs()
    # Messages list them in this order ("the size of mnist, fashion_mnist or kmnist"), any others after by name.
    order = [name for name in LISTED_FIRST if name in configs] + sorted(set(configs) - set(LISTED_FIRST))
    for config in (configs[name] for name in order):
        try:
            source = build(config)
        except (ConfigError, ValueError):  # a dataset that needs a path to know its shape (folder, arrays)
            continue
        shapes[source.name] = tuple(source.image_shape)  # type: ignore[assignment]
    return shapes
