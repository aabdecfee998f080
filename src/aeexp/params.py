"""A run's MLflow params: its config, flattened, and the arguments of what was built from it.

The config holds what a YAML or the command line set; the model, optimizer and scheduler were built with more: the
defaults of their classes (a model of one's own that leaves ``code_norm`` out is built with its class's ``none``).
Those arguments are logged too, under the same keys, so that runs compare in the MLflow UI on what they trained.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from aeexp import components, models
from aeexp.config import flatten


def run_params(cfg: DictConfig, model: Any, optimizer: Any, schedule: Any) -> dict[str, str]:
    """``cfg`` flattened (:func:`aeexp.config.flatten`) plus, for each key it lacks, the built arguments: the model's
    (:func:`aeexp.models.arguments`, its image shape included), the optimizer's (``optimizer.defaults``: every
    hyperparameter the class keeps) and the scheduler's (``schedule.arguments``). Where the config has a key its
    value is kept, as resume compares a run's params with its config: a length left null (``scheduler.T_max``)
    stays null, the run's length, as the config says."""
    built = {"model": models.arguments(cfg.model, model.image_shape),
             "optimizer": dict(optimizer.defaults),
             "scheduler": dict(getattr(schedule, "arguments", {}))}
    params = flatten(cfg)
    for key, arguments in built.items():
        for name, argument in arguments.items():
            for dotted, text in components.as_params(f"{key}.{name}", argument).items():
                params.setdefault(dotted, text)
    return params
