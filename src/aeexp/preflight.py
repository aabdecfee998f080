"""The checks a run passes before anything heavy happens, each once per run: the config's values, then the
dataset source (which starts reading its files), the model on the meta device and whether it and the PCA baseline
fit in memory, the optimizer and schedule over a stand-in, and the metric and view lists. A bad value is refused in
one line naming its key within ~2 s, before MLflow is imported and before any run exists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from aeexp import data
from aeexp.config import plain, validate
from aeexp.errors import ConfigError

# The PCA baseline's size for a model whose config names no bottleneck (only the memory estimate uses it).
BASELINE_COMPONENTS = 64


@dataclass
class Checked:
    """What the checks built and a run goes on with: the dataset source (reading ahead) and the evaluation lists."""

    source: data.ImageDataset
    lists: Any  # aeexp.evaluation.lists.Lists (imported with the model, after the source starts reading)


def check_components(cfg: DictConfig) -> Checked:
    """Build the dataset source (it starts reading its files meanwhile), the model on the meta device, the optimizer
    and schedule over a stand-in and the evaluation lists, and check that training and the PCA baseline fit in
    memory: a bad value of theirs is refused before any data is read. (The config's own values:
    :func:`aeexp.config.validate`, first.)"""
    source = data.build(cfg.dataset)
    source.read_ahead()
    from aeexp import models
    from aeexp.evaluation import lists
    from aeexp.training import memory, optim

    parameters = models.check(cfg.model, source.image_shape)
    if parameters is not None:
        _check_model_fits(cfg, parameters)
    check_baseline_fits(source.image_shape, int(cfg.model.get("bottleneck") or BASELINE_COMPONENTS),
                        memory.available_host_memory())
    optim.check_optimizer(cfg.optimizer)
    optim.check_scheduler(cfg.scheduler, cfg.trainer.epochs)
    return Checked(source, lists.build(cfg))


def check(cfg: DictConfig) -> Checked:
    """:func:`aeexp.config.validate`, then :func:`check_components`."""
    validate(cfg)
    return check_components(cfg)


def _check_model_fits(cfg: DictConfig, parameters: int) -> None:
    """Refuse, with the figures, a model too large to train in the memory of the device it would train on."""
    import torch

    from aeexp.training import memory

    settings = ", ".join(f"model.{key}={plain(cfg.model[key])}" for key in ("widths", "bottleneck") if key in cfg.model)
    on_gpu = cfg.trainer.device.value != "cpu" and torch.cuda.is_available()
    available = torch.cuda.mem_get_info()[0] if on_gpu else memory.available_host_memory()
    memory.check_fits(parameters, available, "GPU" if on_gpu else "free", settings or "model")


def check_baseline_fits(image_shape: Sequence[int], n_components: int, available: int | None) -> None:
    """ConfigError (one line, with the figures) when the PCA baseline of images of ``image_shape``
    (:func:`aeexp.evaluation.baseline.memory_needed`) needs more than ``available`` bytes of host memory (None:
    unknown, nothing is refused); it runs after training, so refusing now is what keeps the run from failing then."""
    from aeexp.evaluation import baseline

    needed = baseline.memory_needed(image_shape, n_components)
    if available is None or needed <= available:
        return
    shape = "x".join(str(size) for size in image_shape)
    raise ConfigError(f"dataset: the PCA baseline of {shape} images needs {needed / 1e9:,.1f} GB of memory besides "
                      f"the images, more than the {available / 1e9:,.1f} GB available; choose smaller images (e.g. "
                      "dataset.image_size) or free memory")
