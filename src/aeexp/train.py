"""The training loop: seeded shuffles, index-sliced batches of device-resident uint8 images, per-epoch hooks."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from aeexp import interrupt
from aeexp import noise as noises
from aeexp.data import Split
from aeexp.errors import TrainingError
from aeexp.models import Autoencoder, DenseAutoencoder, Workspace, cpu_has_bf16_products

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 4096

# trainer.compile=null (auto) compiles on CUDA only. On this project's 2-core CPUs torch.compile made the dense
# AE's epoch slower (1.4-1.7 s against 1.0 s eager, after a one-off compile of ~50 s): see BENCHMARKS.md.


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


@dataclass
class History:
    """Per-epoch metrics, in epoch order."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)


EpochHook = Callable[[int, dict[str, float]], None]


class StepOptimizer(Protocol):
    """What ``fit`` needs of an optimizer: ``torch.optim`` optimizers and the fused ones below qualify."""

    param_groups: list[dict[str, Any]]

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], on the images' device (the division promotes to float32; on a CPU
    through a float32 temporary, which the training loop's ``_gather_batches`` avoids)."""
    return torch.div(images, 255.0)


def _copy_all(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """Copy saved optimizer tensors into place, checking they belong to the same model."""
    if len(targets) != len(sources) or any(t.shape != s.shape for t, s in zip(targets, sources, strict=False)):
        raise ValueError("the saved optimizer state does not match the model's parameters")
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)


class _FusedOptimizer:
    """Base of the two optimizers below: one parameter group, gradients reset by dropping them."""

    def __init__(self, params: Iterable[torch.nn.Parameter], **group: Any) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("the optimizer got no parameters to train")
        self.param_groups = [{"params": self.params, **group}]

    @property
    def lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        pairs = [(p, p.grad) for p in self.params if p.grad is not None]
        if not pairs:
            return None
        return [p for p, _ in pairs], [g for _, g in pairs]


class Adam(_FusedOptimizer):
    """Adam (the update of ``torch.optim.Adam``) as one fused kernel call per step.

    ``torch.optim.Adam(fused=True)`` runs the same kernel behind ~0.2 ms of Python per step and imports
    ``torch._dynamo`` (~1.3 s) at its first step; this class does neither. Falls back to the foreach ops where
    the fused kernel is missing (old torch, unusual devices or dtypes).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        device = self.params[0].device
        self._step = torch.zeros((), dtype=torch.float32, device=device)  # on the device: no host sync
        self._fused = hasattr(torch, "_fused_adam_") and all(
            p.device == device and p.dtype in (torch.float32, torch.float64) for p in self.params)
        self.steps_taken = 0

    def state_dict(self) -> dict[str, Any]:
        """Moments and step count (for a checkpoint); the hyperparameters come from the config."""
        return {"exp_avg": [t.clone() for t in self.exp_avg], "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
                "step": self._step.clone(), "steps_taken": self.steps_taken}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        _copy_all(self.exp_avg, state["exp_avg"])
        _copy_all(self.exp_avg_sq, state["exp_avg_sq"])
        self._step.copy_(state["step"])
        self.steps_taken = int(state["steps_taken"])

    @torch.no_grad()
    def step(self) -> None:
        found = self._grads()
        if found is None:
            return
        params, grads = found
        if len(params) != len(self.params):
            raise ValueError("Adam here expects a gradient for every parameter")
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        self._step += 1
        self.steps_taken += 1
        if self._fused:
            torch._fused_adam_(params, grads, self.exp_avg, self.exp_avg_sq, [], [self._step] * len(params),
                               lr=float(group["lr"]), beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=group["eps"], amsgrad=False, maximize=False)
            return
        t = self.steps_taken
        torch._foreach_lerp_(self.exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(self.exp_avg_sq, beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - beta2)
        step_size = group["lr"] / (1 - beta1**t)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, math.sqrt(1 - beta2**t))
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, self.exp_avg, denom, -step_size)


class SGD(_FusedOptimizer):
    """Plain SGD with optional momentum (the update of ``torch.optim.SGD``, no dampening) in foreach ops."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum)
        self.momentum_buffers: list[torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The momentum buffers (None before the first step or without momentum)."""
        return {"momentum_buffers": None if self.momentum_buffers is None
                else [t.clone() for t in self.momentum_buffers]}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffers = state["momentum_buffers"]
        if buffers is None:
            self.momentum_buffers = None
            return
        self.momentum_buffers = [torch.empty_like(p) for p in self.params]
        _copy_all(self.momentum_buffers, buffers)

    @torch.no_grad()
    def step(self) -> None:
        found = self._grads()
        if found is None:
            return
        params, grads = found
        momentum = float(self.param_groups[0]["momentum"])
        if momentum:
            if self.momentum_buffers is None:
                self.momentum_buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.momentum_buffers, momentum)
                torch._foreach_add_(self.momentum_buffers, grads)
            grads = self.momentum_buffers
        torch._foreach_add_(params, grads, alpha=-self.lr)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, momentum: float) -> StepOptimizer:
    if name == "adam":
        return Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return SGD(model.parameters(), lr=lr, momentum=momentum)
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
        # Gather the uint8 rows, then convert: a quarter of the bytes of gathering float rows.
        yield to_float(images.index_select(0, order[start:start + batch_size]))


def _gather_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator, workspace: Workspace
                    ) -> Iterator[torch.Tensor]:
    """``iterate_batches`` for the training loop: the same batches, written into two reused buffers."""
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(images.device)
    like = torch.empty((), dtype=torch.float32, device=images.device)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        shape = (len(index), *images.shape[1:])
        rows = torch.index_select(images, 0, index, out=workspace.get(("rows", len(index)), shape, images))
        # Converted into the reused buffer, then divided in place: the same values as ``to_float``, without the
        # float32 temporary that dividing uint8 rows straight into it would allocate.
        yield workspace.get(("batch", len(index)), shape, like).copy_(rows).div_(255.0)


@torch.no_grad()
def evaluate_loss(model: Autoencoder, images: torch.Tensor, loss: str, objective: bool = True) -> float:
    """Mean per-pixel loss over all ``images`` (weighted by batch size), deterministic.

    ``objective``: the model's training objective (``evaluation_loss``: for a VAE ``beta * KL / pixels`` is
    added, at the mean code); false: the pure reconstruction loss (``reconstruction_loss``). The same for
    models without a KL term.
    """
    model.eval()
    total = torch.zeros((), device=images.device, dtype=torch.float64)
    measure = model.evaluation_loss if objective else model.reconstruction_loss
    for batch in iterate_batches(images, EVAL_BATCH_SIZE, None):
        total += measure(batch, loss).double() * batch.shape[0]
    return float(total) / images.shape[0]


@torch.no_grad()
def encode_all(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """Codes of all ``images``, on the CPU."""
    model.eval()
    return torch.cat([model.encode(batch).cpu() for batch in iterate_batches(images, EVAL_BATCH_SIZE, None)])


@torch.no_grad()
def reconstruct(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """Reconstructions in [0, 1] of ``images``, on the CPU."""
    model.eval()
    return model(to_float(images)).cpu()


def should_compile(setting: bool | None, device: torch.device) -> bool:
    """``trainer.compile``: true/false as said; null (auto) -> on CUDA only."""
    if setting is not None:
        return bool(setting)
    return device.type == "cuda"


StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _loss_function(model: Autoencoder, loss: str, compiled: bool) -> StepLoss:
    """``(inputs, targets) -> (mean loss, parts)``: the model's ``training_loss``, or a ``torch.compile``d copy
    of it (same math, fused kernels)."""

    def eager(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return model.training_loss(inputs, targets, loss)

    if not compiled:
        return eager
    # dynamic=False: one graph for the full batches; the epoch's last, smaller batch gets a second one.
    return torch.compile(eager, dynamic=False)


def _autocast(device: torch.device, mixed_precision: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast for the matrix products on CUDA (the loss stays float32); nothing elsewhere."""
    if mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _non_finite(value: float, epoch: int, step: int | None, steps: int, optimizer: StepOptimizer
                ) -> NonFiniteLossError:
    where = f"epoch {epoch}, step {step} of {steps}" if step is not None else f"epoch {epoch}"
    return NonFiniteLossError(
        f"training loss became {value} at {where}; lower trainer.lr (now {optimizer.param_groups[0]['lr']}) "
        f"or try trainer.loss=bce"
    )


def fit(
    model: Autoencoder,
    train: Split,
    val: Split,
    *,
    epochs: int,
    batch_size: int,
    optimizer: StepOptimizer,
    loss: str,
    seed: int,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
    compile: bool | None = False,
    mixed_precision: bool = True,
    history: History | None = None,
    generator: torch.Generator | None = None,
    noise: str = "none",
    noise_level: float = 0.0,
) -> History:
    """Train ``model`` up to epoch ``epochs``; call ``on_epoch_end(epoch, metrics)`` after each (from 1).

    The images stay where they are (move the split to the GPU for GPU training); each step gathers a batch by
    index and, on a GPU, nothing waits for the device until the epoch's end. ``compile``: see
    ``should_compile``. ``mixed_precision``: bf16 autocast on CUDA; on a CPU with bf16 dot products
    (:func:`~aeexp.models.cpu_has_bf16_products`), the dense AE's large layers multiply in bf16 (see
    :meth:`~aeexp.models.DenseAutoencoder.loss_and_grads`); validation and test losses stay float32.

    To resume, pass the ``history`` of the epochs done (training continues after them, appending to it) and
    the shuffling ``generator`` in its saved state; by default a fresh history and a generator seeded with
    ``seed``. Between steps a stop requested by Ctrl-C/SIGTERM (see :mod:`aeexp.interrupt`) raises
    :class:`~aeexp.interrupt.Interrupted`; the epoch under way is abandoned.

    ``noise``/``noise_level`` (see :func:`aeexp.noise.corrupt`): a denoising AE; each training batch is
    corrupted (global torch RNG) before it goes in, and the loss compares with the clean batch. Validation uses
    clean images. The hook's metrics are ``train_loss``, ``val_loss`` and ``epoch_time``, plus ``train_<part>``
    (epoch means) for every part of the model's loss: ``train_recon`` and ``train_kl`` for a VAE, none for the
    plain AEs (their loss is all reconstruction).
    """
    noise = noises.check(noise, noise_level)
    noisy = noise != "none"
    history = History() if history is None else history
    generator = torch.Generator().manual_seed(seed) if generator is None else generator
    steps = math.ceil(len(train) / batch_size)
    device = train.images.device
    check_each_step = device.type == "cpu"  # reading a CPU loss costs nothing; on a GPU it would be a sync
    compiled = should_compile(compile, device)
    if compiled:
        log.info("training with torch.compile (one-off compile at the first steps)")
    step_loss = _loss_function(model, loss, compiled)
    # On a CPU the dense AE's backward pass written out beats autograd's (same products, no graph to build).
    manual = not compiled and device.type == "cpu" and isinstance(model, DenseAutoencoder) \
        and model.supports_manual_backward()
    bf16 = manual and mixed_precision and cpu_has_bf16_products()
    if bf16:
        log.info("training the large layers' matrix products in bf16 (this CPU has bf16 dot products)")
    workspace = Workspace()  # the manual path's activations, gradients and batches, reused step after step
    for epoch in range(len(history.train_loss) + 1, epochs + 1):
        model.train()
        started = time.perf_counter()
        running = torch.zeros((), device=device)
        part_sums: dict[str, torch.Tensor] = {}
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True,
                   disable=not progress, dynamic_ncols=True)
        try:
            batches = (_gather_batches(train.images, batch_size, generator, workspace) if manual
                       else iterate_batches(train.images, batch_size, generator))
            for step, batch in enumerate(batches, start=1):
                interrupt.check()
                optimizer.zero_grad(set_to_none=True)
                inputs = noises.corrupt(batch, noise, noise_level) if noisy else batch
                if manual:
                    batch_loss = model.loss_and_grads(inputs, loss, workspace, targets=batch if noisy else None,
                                                      bf16=bf16)
                else:
                    with _autocast(device, mixed_precision):
                        batch_loss, parts = step_loss(inputs, batch)
                    batch_loss.backward()
                    for name, part in parts.items():
                        part_sums[name] = part_sums.get(name, 0.0) + part.detach().float() * batch.shape[0]
                if check_each_step and not math.isfinite(value := float(batch_loss.detach())):
                    raise _non_finite(value, epoch, step, steps, optimizer)
                optimizer.step()
                running += batch_loss.detach() * batch.shape[0]
                if progress:
                    bar.update(1)
            train_loss = float(running) / len(train)  # the epoch's one host sync
            if not math.isfinite(train_loss):
                raise _non_finite(train_loss, epoch, None, steps, optimizer)
            epoch_time = time.perf_counter() - started
            val_loss = evaluate_loss(model, val.images, loss)
            bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}")
        finally:
            bar.close()
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        history.epoch_time.append(epoch_time)
        if on_epoch_end is not None:
            metrics = {"train_loss": train_loss, "val_loss": val_loss, "epoch_time": epoch_time}
            metrics.update({f"train_{name}": float(total) / len(train) for name, total in part_sums.items()})
            on_epoch_end(epoch, metrics)
        if not progress:  # a line per epoch instead of the bar (logs of batch jobs), once the hook has run
            log.info("epoch %d/%d: train_loss %.4f  val_loss %.4f  (%.2f s)", epoch, epochs, train_loss, val_loss,
                     epoch_time)
    return history
