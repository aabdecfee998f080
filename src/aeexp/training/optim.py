"""Optimizers and learning-rate schedules from configs: any ``torch.optim`` class, any ``lr_scheduler`` class.

The ``optimizer`` config is a ``_partial_`` ``torch.optim`` class; it gets two parameter groups, the weights
(matrices, kernels, codebooks) with the configured weight decay and the biases without (nanoGPT's rule). The
``scheduler`` config is a ``_partial_`` ``torch.optim.lr_scheduler`` class (or ``_target_: null``) plus two keys of
aeexp's: ``interval`` (``step``: stepped after every batch; ``epoch``: after every epoch, ``ReduceLROnPlateau`` on
``val_loss``) and ``warmup_epochs`` (a linear warm-up, every batch, before the schedule starts). A length the class
needs and the config leaves null (``T_max``, ``total_steps``, ``total_iters``) is the run's, after the warm-up.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from aeexp import components
from aeexp.errors import ConfigError
from aeexp.training.compiler_free import leave_compiler_unimported

log = logging.getLogger(__name__)

# How torch runs an optimizer's update, not what it computes: left out (with a log line) for a class that does not
# take them, so that optimizer._target_=torch.optim.RAdam works on the adam preset's fused: true.
SPEED_KEYS = ("fused", "foreach")
SCHEDULE_KEYS = ("interval", "warmup_epochs")  # aeexp's keys of a scheduler config, not the class's
LENGTH_PARAMETERS = ("T_max", "total_steps", "total_iters")  # filled with the run's length when null
INTERVALS = ("step", "epoch")


def parameter_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """The trained parameters in two groups: weights (2-D and more) with the optimizer's weight decay, the rest
    (biases) without; empty groups left out."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for p in trained if p.dim() >= 2]
    plain = [p for p in trained if p.dim() < 2]
    groups: list[dict[str, Any]] = []
    if decayed:
        groups.append({"params": decayed})
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def _optimizer_factory(config: DictConfig) -> tuple[Callable[..., Any], list[str]]:
    """The ``_partial_`` optimizer a config describes, and the speed keys left out for a class without them."""
    parameters = inspect.signature(components.target_of(config, "optimizer")).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    left_out = [key for key in SPEED_KEYS if key in config and key not in parameters and not takes_any]
    factory = components.build(config, "optimizer", exclude=left_out)
    if not callable(factory):
        raise ConfigError("optimizer: set _partial_: true, so that the optimizer is made for the model's parameters")
    return factory, left_out


def _made(factory: Callable[..., Any], config: DictConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    leave_compiler_unimported()  # torch.optim's constructors import torch._dynamo otherwise (~1 s)
    try:
        optimizer = factory(groups)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"optimizer: {config.get('_target_')} refused its settings ({err})") from None
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer._target_={config.get('_target_')} is not a torch.optim.Optimizer")
    return optimizer


def check_optimizer(config: DictConfig) -> None:
    """Refuse a bad ``optimizer`` config (one ConfigError) before the model exists: the optimizer is made over a
    stand-in weight and bias, so that the class checks its values too."""
    factory, _ = _optimizer_factory(config)
    _made(factory, config, parameter_groups(torch.nn.Linear(1, 1)))


def build_optimizer(config: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer an ``optimizer`` config describes, over ``model``'s :func:`parameter_groups`."""
    factory, left_out = _optimizer_factory(config)
    if left_out:
        log.info("optimizer: %s takes no %s; left out", config.get("_target_"), " or ".join(left_out))
    groups = parameter_groups(model)
    if not groups:
        raise ConfigError("optimizer: the model has no parameters to train")
    return _made(factory, config, groups)


class Schedule:
    """An optional linear warm-up over ``warmup_steps`` batches, then an optional ``torch.optim.lr_scheduler``.

    During the warm-up each group's learning rate rises linearly to the value the scheduler starts from (the
    optimizer's, for most), reached at the last warm-up step; the scheduler is not stepped. After it, the scheduler
    is stepped per batch or per epoch (``interval``) for at most ``length`` steps (its planned length: a run trained
    further on resume goes on at the final learning rate).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any = None, interval: str = "epoch",
                 warmup_steps: int = 0, length: int | None = None, arguments: dict[str, Any] | None = None) -> None:
        self.optimizer, self.scheduler, self.interval = optimizer, scheduler, interval
        self.warmup_steps, self.length = warmup_steps, length
        self.arguments = arguments or {}  # the scheduler's, its class's defaults included (params of the run)
        self.steps = 0  # batches trained
        self.scheduled = 0  # scheduler steps taken
        self.start = [float(group["lr"]) for group in optimizer.param_groups]
        self._warm()

    @property
    def plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def _warm(self) -> None:
        if self.steps < self.warmup_steps:
            factor = (self.steps + 1) / self.warmup_steps
            for group, start in zip(self.optimizer.param_groups, self.start, strict=True):
                group["lr"] = start * factor

    def _step_scheduler(self, *args: float) -> None:
        if self.scheduler is None or (self.length is not None and self.scheduled >= self.length):
            return
        if self.scheduled == 0:
            with warnings.catch_warnings():
                # torch warns at a scheduler's first step if optimizer.step() was never called in this process,
                # as in a resumed run on the fast path, whose direct kernel call (fastpath.fused_adam_update)
                # updates the parameters alike without it.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                self.scheduler.step(*args)
        else:
            self.scheduler.step(*args)
        self.scheduled += 1

    def after_step(self) -> None:
        """Call after each optimizer step."""
        self.steps += 1
        if self.steps < self.warmup_steps:
            self._warm()
        elif self.steps > self.warmup_steps and self.interval == "step":
            self._step_scheduler()

    def after_epoch(self, val_loss: float) -> None:
        """Call after each epoch, with its validation loss."""
        # An epoch of warm-up steps only (the last one too: it ends at the start lr) does not step the scheduler.
        if (self.warmup_steps and self.steps <= self.warmup_steps) or self.interval != "epoch":
            return
        if self.plateau:
            self._step_scheduler(val_loss)
        else:
            self._step_scheduler()

    def lr(self) -> float:
        """The learning rate of the first parameter group now."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "scheduled": self.scheduled, "start": list(self.start),
                "warmup_steps": self.warmup_steps, "length": self.length,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.scheduled = int(state["steps"]), int(state["scheduled"])
        self.start, self.warmup_steps, self.length = list(state["start"]), int(state["warmup_steps"]), state["length"]
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def _schedule_settings(config: DictConfig, epochs: int) -> tuple[str, float]:
    """A scheduler config's ``interval`` and ``warmup_epochs``, checked against a run of ``epochs``."""
    interval = str(config.get("interval", "epoch"))
    warmup_epochs = config.get("warmup_epochs", 0) or 0
    if interval not in INTERVALS:
        raise ConfigError(f"scheduler.interval={interval!r} is invalid: choose one of {', '.join(INTERVALS)}.")
    if not isinstance(warmup_epochs, int | float) or warmup_epochs < 0 or warmup_epochs >= epochs:
        raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs!r} is invalid: it must be >= 0 and below "
                          f"trainer.epochs={epochs}.")
    if config.get("_target_"):
        target = components.target_of(config, "scheduler")
        if target is torch.optim.lr_scheduler.ReduceLROnPlateau and interval != "epoch":
            raise ConfigError("scheduler.interval=step is invalid: ReduceLROnPlateau is stepped once per epoch, on "
                              "val_loss (interval: epoch).")
        given = {"optimizer", *(name for name in LENGTH_PARAMETERS if config.get(name) is None)}
        components.check_parameters(target, components.parameters_of(config, (*SCHEDULE_KEYS, *given)),
                                    "scheduler", given=given)
    return interval, float(warmup_epochs)


def check_scheduler(config: DictConfig | None, epochs: int) -> None:
    """Refuse a bad ``scheduler`` config (one ConfigError naming the key) before anything is trained."""
    if config is not None:
        _schedule_settings(config, epochs)


def build_schedule(config: DictConfig | None, optimizer: torch.optim.Optimizer, epochs: int,
                   steps_per_epoch: int) -> Schedule:
    """The :class:`Schedule` a ``scheduler`` config describes for a run of ``epochs`` of ``steps_per_epoch``."""
    if config is None:
        return Schedule(optimizer)
    interval, warmup_epochs = _schedule_settings(config, epochs)
    warmup_steps = math.ceil(warmup_epochs * steps_per_epoch)
    if not config.get("_target_"):
        return Schedule(optimizer, warmup_steps=warmup_steps)
    remaining_steps = epochs * steps_per_epoch - warmup_steps
    # In epochs: those the scheduler runs in, a part-warm-up one included (stepped at its end).
    length = remaining_steps if interval == "step" else epochs - math.floor(warmup_epochs)
    filled = {name: max(1, length) for name in LENGTH_PARAMETERS if name in config and config.get(name) is None}
    factory = components.build(config, "scheduler", exclude=(*SCHEDULE_KEYS, *filled), **filled)
    arguments = components.arguments(config, "scheduler", exclude=(*SCHEDULE_KEYS, *filled), **filled)
    if not callable(factory):
        raise ConfigError("scheduler: set _partial_: true, so that the schedule is made for the optimizer")
    try:
        scheduler = factory(optimizer)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"scheduler: {config.get('_target_')} refused its settings ({err})") from None
    # Stepped at most as far as planned. OneCycleLR took its first step when made: its last lr is after
    # total_steps - 1 more (past them it rises again, and it refuses to go past total_steps).
    total_steps = getattr(scheduler, "total_steps", None)
    planned = total_steps - 1 if total_steps else (length if filled else None)
    return Schedule(optimizer, scheduler, interval, warmup_steps, planned, arguments)
