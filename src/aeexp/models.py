"""Autoencoders behind one small interface: ``encode``, ``decode``, ``reconstruction_loss``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2 or last_activation:
            # In place: the activation overwrites the Linear's fresh output (one allocation less per layer).
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _BCEWithLogitsCPU(torch.autograd.Function):
    """Mean binary cross-entropy on logits, with its gradient ``(sigmoid(z) - x) / n`` made in the forward pass.

    Same value as ``F.binary_cross_entropy_with_logits`` (to float32 rounding) in fewer passes over memory: on
    a CPU the built-in spends more time on ``log_sigmoid`` and its backward than a dense AE's smaller layers
    spend in matrix products. With ``s = sigmoid(z)`` (needed for the gradient anyway),
    ``softplus(z) = relu(z) - log(max(s, 1 - s))`` exactly, and accurately in float32 (the max keeps the log's
    argument in [0.5, 1]), so the loss costs one ``log`` per element on top of the ``sigmoid``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z, x = logits.reshape(-1), target.reshape(-1)
        s = torch.sigmoid(z)
        log_term = torch.maximum(s, torch.sub(1.0, s), out=torch.empty_like(s)).log_().sum()
        loss = (z.clamp_min(0.0).sum() - log_term - torch.dot(z, x)) / z.numel()
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(s.sub_(x).view_as(logits))
        ctx.n = z.numel()
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (residual,) = ctx.saved_tensors
        return residual.mul_(grad_output / ctx.n), None


def bce_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-element BCE of ``sigmoid(logits)`` against ``target`` in [0, 1], stable for any logit."""
    if (logits.device.type == "cpu" and logits.dtype == torch.float32 and target.dtype == torch.float32
            and logits.is_contiguous() and target.is_contiguous() and not torch.compiler.is_compiling()):
        return _BCEWithLogitsCPU.apply(logits, target)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class DenseAutoencoder(nn.Module):
    """Dense AE: input -> widths -> bottleneck (linear code) -> reversed widths -> input (sigmoid).

    Takes images ``(N, C, H, W)`` with values in [0, 1]. Weights are Glorot-uniform with zero biases (the
    Keras defaults the seed notebooks used), which trains noticeably better than PyTorch's default init.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.widths = [int(w) for w in widths]
        self.bottleneck = int(bottleneck)
        input_dim = 1
        for size in self.image_shape:
            input_dim *= size
        self.encoder = _mlp([input_dim, *self.widths, self.bottleneck], last_activation=False)
        self.decoder = _mlp([self.bottleneck, *reversed(self.widths), input_dim], last_activation=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)``."""
        return self.encoder(x.flatten(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z).view(-1, *self.image_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> reconstructed images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def reconstruction_loss(self, x: torch.Tensor, loss: str) -> torch.Tensor:
        """Mean per-pixel loss of reconstructing ``x``: ``bce`` (computed on logits, stable) or ``mse``."""
        logits = self.decode_logits(self.encode(x))
        if loss == "bce":
            return bce_with_logits(logits, x)
        if loss == "mse":
            return F.mse_loss(torch.sigmoid(logits).float(), x.float())
        raise ValueError(f"unknown loss {loss!r}")

    def _dense_layers(self) -> list[tuple[nn.Linear, bool]] | None:
        """``(linear, followed by a ReLU)`` for every layer, or None when a module is of another kind."""
        plan: list[tuple[nn.Linear, bool]] = []
        for module in (*self.encoder, *self.decoder):
            if isinstance(module, nn.Linear):
                plan.append((module, False))
            elif isinstance(module, nn.ReLU) and plan and not plan[-1][1]:
                plan[-1] = (plan[-1][0], True)
            else:
                return None
        return plan

    def supports_manual_backward(self) -> bool:
        """Whether ``loss_and_grads`` applies: plain Linear/ReLU layers, every parameter trained, float32."""
        return self._dense_layers() is not None and all(
            p.requires_grad and p.dtype == torch.float32 for p in self.parameters())

    @torch.no_grad()
    def loss_and_grads(self, x: torch.Tensor, loss: str, workspace: Workspace | None = None) -> torch.Tensor:
        """``reconstruction_loss(x, loss)`` and its backward pass written out: sets every parameter's ``.grad``
        and returns the loss, detached.

        The same matrix products as autograd's backward of the dense layers (our tests find the same weights to
        the bit), without building a graph or its bookkeeping. With a ``workspace`` every activation and
        gradient is written into buffers kept from the previous step of the same batch size (``.grad`` then
        holds such a buffer until the next call): no allocation, so no fresh pages to fault in per step. Only
        for models where ``supports_manual_backward()``.
        """
        layers = self._dense_layers()
        if layers is None:
            raise ValueError("loss_and_grads needs a model of Linear and ReLU layers only")
        ws = workspace if workspace is not None else Workspace()
        batch = x.shape[0]
        inputs = [x.reshape(batch, -1)]
        h = inputs[0]
        for i, (linear, relu) in enumerate(layers):
            out = ws.get(("h", i, batch), (batch, linear.out_features), h)
            h = torch.addmm(linear.bias, h, linear.weight.t(), out=out)
            if relu:
                h.relu_()
            inputs.append(h)
        z, target = h.reshape(-1), inputs[0].reshape(-1)
        n = z.numel()
        scratch = ws.get(("scratch", batch), z.shape, z)
        relu_sum = torch.clamp(z, min=0.0, out=scratch).sum()
        s = torch.sigmoid(z, out=ws.get(("sigmoid", batch), z.shape, z))
        if loss == "bce":
            # log(1 + exp(-|z|)) = -log(max(s, 1 - s)): one log per element, its argument in [0.5, 1].
            larger = torch.maximum(s, torch.mul(s, -1.0, out=scratch).add_(1.0), out=scratch)
            value = (relu_sum - larger.log_().sum() - torch.dot(z, target)) / n
            grad = s.sub_(target).mul_(1.0 / n)
        elif loss == "mse":
            residual = s.sub_(target)
            value = torch.dot(residual, residual) / n
            # d/dz (s - x)^2 / n = 2 (s - x) s (1 - s) / n, with s recomputed into the scratch buffer.
            sig = torch.sigmoid(z, out=scratch)
            grad = residual.mul_(sig).mul_(sig.neg_().add_(1.0)).mul_(2.0 / n)
        else:
            raise ValueError(f"unknown loss {loss!r}")
        grad = grad.view(h.shape)
        for i in range(len(layers) - 1, -1, -1):
            linear, _ = layers[i]
            below = inputs[i]
            linear.weight.grad = torch.mm(grad.t(), below, out=ws.get(("dw", i), linear.weight.shape, grad))
            linear.bias.grad = torch.sum(grad, 0, out=ws.get(("db", i), linear.bias.shape, grad))
            if i > 0:
                grad = torch.mm(grad, linear.weight, out=ws.get(("dh", i, batch), below.shape, grad))
                if layers[i - 1][1]:  # the ReLU after the layer below: its output is `below`
                    grad = torch.ops.aten.threshold_backward.grad_input(grad, below, 0.0, grad_input=grad)
        return value


class Workspace:
    """Buffers reused across training steps, by key: ``get`` returns the kept one while its shape fits."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, shape: Sequence[int] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        buffer = self.buffers.get(key)
        if buffer is None or buffer.shape != tuple(shape) or buffer.device != like.device or buffer.dtype != like.dtype:
            buffer = self.buffers[key] = torch.empty(tuple(shape), device=like.device, dtype=like.dtype)
        return buffer


def build(image_shape: Sequence[int], widths: Sequence[int], bottleneck: int) -> DenseAutoencoder:
    """The autoencoder a model config describes, sized for the dataset's images."""
    return DenseAutoencoder(image_shape, widths, bottleneck)
