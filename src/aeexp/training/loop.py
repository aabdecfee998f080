"""The training loop: seeded shuffles, index-sliced batches of device-resident uint8 images, a step, per-epoch hooks.

One step is ``optimizer.zero_grad``, the model's ``training_loss`` on ``model.corrupt(batch)`` against the clean
batch and its backward pass, optional gradient clipping, ``optimizer.step`` and the schedule's step. It runs on
autograd (:class:`AutogradStep`, optionally ``torch.compile``d, bf16 autocast on CUDA) or, where it computes the
same thing, on the CPU fast path (:mod:`aeexp.training.fastpath`); :func:`make_step` chooses, and says which.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from aeexp.data import Split
from aeexp.errors import TrainingError
from aeexp.models import Autoencoder
from aeexp.models.inference import batches, evaluate_loss, to_float
from aeexp.training import fastpath, interrupt
from aeexp.training.early_stopping import EarlyStopping
from aeexp.training.optim import Schedule
from aeexp.training.progress import shown

log = logging.getLogger(__name__)

# trainer.compile=null (auto) compiles on CUDA only. On this project's 2-core CPUs torch.compile made the dense
# AE's epoch slower (1.4-1.7 s against 1.0 s eager, after a one-off compile of ~50 s): see BENCHMARKS.md.


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


@dataclass
class History:
    """The metrics of each epoch done, in order (``train_loss``, ``val_loss``, ``epoch_time``, ``lr``, parts)."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epochs)

    def series(self, name: str) -> list[float]:
        """One metric over the epochs (epochs without it left out)."""
        return [metrics[name] for metrics in self.epochs if name in metrics]

    @property
    def train_loss(self) -> list[float]:
        return self.series("train_loss")

    @property
    def val_loss(self) -> list[float]:
        return self.series("val_loss")


EpochHook = Callable[[int, dict[str, float]], None]


def iterate_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator | None
                    ) -> Iterator[torch.Tensor]:
    """Float batches of ``images``: shuffled with ``generator``, or in order when it is None."""
    if generator is None:
        yield from batches(images, batch_size)
        return
    order = torch.randperm(images.shape[0], generator=generator).to(images.device)
    for start in range(0, images.shape[0], batch_size):
        # Gather the uint8 rows, then convert: a quarter of the bytes of gathering float rows.
        yield to_float(images.index_select(0, order[start:start + batch_size]))


def should_compile(setting: bool | None, device: torch.device) -> bool:
    """``trainer.compile``: true/false as said; null (auto) -> on CUDA only."""
    if setting is not None:
        return bool(setting)
    return device.type == "cuda"


class TrainingStep(Protocol):
    """One way of training: where its batches come from, forward and backward, the optimizer's update."""

    path: str  # "fast" or "autograd": tagged on the run as train.path
    bf16: bool  # whether matrix products run in bf16: tagged as train.bf16

    def batches(self, images: torch.Tensor, batch_size: int, generator: torch.Generator
                ) -> Iterator[torch.Tensor]: ...

    def backward(self, inputs: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def zero_grad(self) -> None: ...

    def update(self) -> object: ...


class AutogradStep:
    """The model's own ``training_loss`` and autograd's backward, then ``optimizer.step()``; optionally a
    ``torch.compile``d loss (same math, fused kernels) and bf16 autocast on CUDA (the loss stays float32)."""

    path = "autograd"

    def __init__(self, model: Autoencoder, optimizer: torch.optim.Optimizer, device: torch.device,
                 compiled: bool, mixed_precision: bool) -> None:
        self.loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
        # dynamic=False: one graph for the full batches; the epoch's last, smaller batch gets a second one.
        self.loss = torch.compile(model.training_loss, dynamic=False) if compiled else model.training_loss
        self.bf16 = mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.optimizer = optimizer
        self.update = optimizer.step

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def batches(self, images: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return iterate_batches(images, batch_size, generator)

    def backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            loss, parts = self.loss(inputs, targets)
        loss.backward()
        return loss.detach(), {name: part.detach() for name, part in parts.items()}


def make_step(model: Autoencoder, optimizer: torch.optim.Optimizer, device: torch.device,
              compile: bool | None = False, mixed_precision: bool = True) -> TrainingStep:
    """The fast path where it computes what autograd would (see :mod:`~aeexp.training.fastpath`), else autograd.
    ``compile``: see :func:`should_compile`; ``mixed_precision``: bf16 products (autocast on CUDA, the fast path's
    large layers on CPUs with bf16 dot products)."""
    compiled = should_compile(compile, device)
    return (fastpath.select(model, optimizer, device, compiled, mixed_precision)
            or AutogradStep(model, optimizer, device, compiled, mixed_precision))


def _non_finite(value: float, epoch: int, step: int | None, steps: int, lr: float) -> NonFiniteLossError:
    where = f"epoch {epoch}, step {step} of {steps}" if step is not None else f"epoch {epoch}"
    return NonFiniteLossError(f"training loss became {value} at {where}; lower optimizer.lr (now {lr:g}), set "
                              "trainer.grad_clip, or try model.loss=bce")


def fit(
    model: Autoencoder,
    train: Split,
    val: Split,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    schedule: Schedule | None = None,
    step: TrainingStep | None = None,
    grad_clip: float | None = None,
    early_stopping: EarlyStopping | None = None,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
    history: History | None = None,
    generator: torch.Generator | None = None,
) -> History:
    """Train ``model`` up to epoch ``epochs``; call ``on_epoch_end(epoch, metrics)`` after each (from 1).

    The images stay where they are (move the split to the GPU for GPU training); each step gathers a batch by
    index and, on a GPU, nothing waits for the device until the epoch's end. ``step``: how to train (default
    :func:`make_step`'s choice); ``schedule``: the learning-rate schedule (default none); ``grad_clip``: the
    largest total gradient norm; ``progress``: a live bar in a terminal (else, and when false, a log line now and
    then: :mod:`~aeexp.training.progress`).

    To resume, pass the ``history`` of the epochs done (training continues after them, appending to it) and
    the shuffling ``generator`` in its saved state; by default a fresh history and a generator seeded with
    ``seed``. ``early_stopping``: stop once the validation loss stops improving (its state updated before the hook
    runs, so a checkpoint taken there holds it; a resumed fit whose state says stop does not train). Between steps
    a stop requested by Ctrl-C/SIGTERM (see :mod:`aeexp.training.interrupt`) raises
    :class:`~aeexp.training.interrupt.Interrupted`; the epoch under way is abandoned.

    The hook's metrics are ``train_loss``, ``val_loss`` (clean images), ``epoch_time``, ``lr`` (the first group's,
    at the epoch's last step) and ``train_<part>`` (epoch means) for every part of the model's loss. A model with
    a ``start_epoch(epoch)`` method has it called before each epoch (e.g. a VAE's KL warm-up).
    """
    history = History() if history is None else history
    epoch_trainer = _EpochTrainer(
        model, train, batch_size, Schedule(optimizer) if schedule is None else schedule,
        make_step(model, optimizer, train.images.device) if step is None else step, grad_clip,
        torch.Generator().manual_seed(seed) if generator is None else generator)
    start_epoch = getattr(model, "start_epoch", None)
    with shown(epochs, len(history), progress) as progress_shown:
        for epoch in range(len(history) + 1, epochs + 1):
            if _stopped_early(early_stopping, epoch - 1, epochs):
                break
            if callable(start_epoch):
                start_epoch(epoch)
            metrics = epoch_trainer.train_epoch(epoch)
            metrics["val_loss"] = evaluate_loss(model, val.images)
            epoch_trainer.schedule.after_epoch(metrics["val_loss"])
            if early_stopping is not None:
                early_stopping.update(epoch, metrics["val_loss"], model)
            history.epochs.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
            progress_shown.epoch_done(epoch, metrics["train_loss"], metrics["val_loss"], metrics["epoch_time"])
    return history


def _stopped_early(early_stopping: EarlyStopping | None, epoch: int, epochs: int) -> bool:
    """Whether early stopping says stop after ``epoch`` (and then says so in the log)."""
    if early_stopping is None or not early_stopping.stopped:
        return False
    log.info("stopped early after epoch %d of %d: val_loss has not improved for %d epochs (the best: epoch %d, %.4f)",
             epoch, epochs, early_stopping.patience, early_stopping.best_epoch, early_stopping.best_loss)
    return True


@dataclass
class _EpochTrainer:
    """One epoch of training steps over the shuffled training split, and the epoch's metrics."""

    model: Autoencoder
    train: Split
    batch_size: int
    schedule: Schedule
    step: TrainingStep
    grad_clip: float | None
    generator: torch.Generator

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; ``train_loss``, ``epoch_time``, ``lr`` and ``train_<part>`` of it (``val_loss`` first,
        filled in by the caller: the order of the hook's metrics)."""
        model, step, schedule = self.model, self.step, self.schedule
        device = self.train.images.device
        steps = math.ceil(len(self.train) / self.batch_size)
        check_each_step = device.type == "cpu"  # reading a CPU loss costs nothing; on a GPU it would be a sync
        parameters = [p for p in model.parameters() if p.requires_grad]
        model.train()
        started = time.perf_counter()
        running = torch.zeros((), device=device)
        part_sums: dict[str, torch.Tensor] = {}
        lr = schedule.lr()
        for i, batch in enumerate(step.batches(self.train.images, self.batch_size, self.generator), start=1):
            interrupt.check()
            step.zero_grad()
            loss, parts = step.backward(model.corrupt(batch), batch)
            if check_each_step and not math.isfinite(value := float(loss)):
                raise _non_finite(value, epoch, i, steps, schedule.lr())
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)
            lr = schedule.lr()
            step.update()
            schedule.after_step()
            running += loss * batch.shape[0]
            for name, part in parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + part.float() * batch.shape[0]
        train_loss = float(running) / len(self.train)  # the epoch's one host sync
        if not math.isfinite(train_loss):
            raise _non_finite(train_loss, epoch, None, steps, lr)
        metrics = {"train_loss": train_loss, "val_loss": math.nan, "epoch_time": time.perf_counter() - started,
                   "lr": lr}
        metrics.update({f"train_{name}": float(total) / len(self.train) for name, total in part_sums.items()})
        return metrics
