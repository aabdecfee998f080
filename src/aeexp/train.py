"""The training loop: seeded shuffles, index-sliced batches of device-resident uint8 images, per-epoch hooks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from aeexp.data import Split
from aeexp.errors import TrainingError
from aeexp.models import DenseAutoencoder

EVAL_BATCH_SIZE = 4096


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


@dataclass
class History:
    """Per-epoch metrics, in epoch order."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)


EpochHook = Callable[[int, dict[str, float]], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], on the images' device."""
    return images.to(torch.float32).div_(255.0)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}")


def iterate_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator | None
                    ) -> Iterator[torch.Tensor]:
    """Float batches of ``images``: shuffled with ``generator``, or in order when it is None."""
    n = images.shape[0]
    if generator is None:
        for start in range(0, n, batch_size):
            yield to_float(images[start:start + batch_size])
        return
    order = torch.randperm(n, generator=generator).to(images.device)
    for start in range(0, n, batch_size):
        yield to_float(images[order[start:start + batch_size]])


@torch.no_grad()
def evaluate_loss(model: DenseAutoencoder, images: torch.Tensor, loss: str) -> float:
    """Mean per-pixel loss over all ``images`` (weighted by batch size)."""
    model.eval()
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    for batch in iterate_batches(images, EVAL_BATCH_SIZE, None):
        total += model.reconstruction_loss(batch, loss).double() * batch.shape[0]
    return float(total) / images.shape[0]


@torch.no_grad()
def encode_all(model: DenseAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """Codes of all ``images``, on the CPU."""
    model.eval()
    return torch.cat([model.encode(batch).cpu() for batch in iterate_batches(images, EVAL_BATCH_SIZE, None)])


@torch.no_grad()
def reconstruct(model: DenseAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """Reconstructions in [0, 1] of ``images``, on the CPU."""
    model.eval()
    return model(to_float(images)).cpu()


def fit(
    model: DenseAutoencoder,
    train: Split,
    val: Split,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    loss: str,
    seed: int,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
) -> History:
    """Train ``model`` for ``epochs``; call ``on_epoch_end(epoch, metrics)`` after each (epochs count from 1)."""
    history = History()
    generator = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train) / batch_size)
    for epoch in range(1, epochs + 1):
        model.train()
        started = time.perf_counter()
        running = torch.zeros((), device=train.images.device)
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True,
                   disable=not progress, dynamic_ncols=True)
        for step, batch in enumerate(iterate_batches(train.images, batch_size, generator), start=1):
            optimizer.zero_grad(set_to_none=True)
            batch_loss = model.reconstruction_loss(batch, loss)
            batch_loss.backward()
            optimizer.step()
            running += batch_loss.detach() * batch.shape[0]
            if progress:
                bar.update(1)
                if step == steps:
                    bar.set_postfix(train_loss=f"{float(running) / len(train):.4f}")
        train_loss = float(running) / len(train)
        epoch_time = time.perf_counter() - started
        if not math.isfinite(train_loss):
            bar.close()
            raise NonFiniteLossError(
                f"training loss became {train_loss} in epoch {epoch}; lower trainer.lr "
                f"(now {optimizer.param_groups[0]['lr']}) or try trainer.loss=bce"
            )
        val_loss = evaluate_loss(model, val.images, loss)
        bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}")
        bar.close()
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        history.epoch_time.append(epoch_time)
        if on_epoch_end is not None:
            on_epoch_end(epoch, {"train_loss": train_loss, "val_loss": val_loss, "epoch_time": epoch_time})
    return history
