"""Autoencoders behind one interface (:class:`Autoencoder`): dense, convolutional and variational ones.

Every model has ``image_shape`` and ``bottleneck`` and the methods ``encode``, ``decode``, ``decode_logits``,
``forward``, ``reconstruction_loss`` (deterministic, pure reconstruction), ``evaluation_loss`` (deterministic
training objective) and ``training_loss`` (the objective of one training step, with its parts). Losses are
means per pixel; a VAE adds ``beta * KL / pixels`` (the KL divergence per image, divided by the pixels per
image, so that the sum is the per-image negative ELBO over the pixel count when ``loss=bce`` and ``beta=1``).
"""

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


LOG_CHUNK = 64  # values per product in sum_of_logs_of_halves: 0.5**64 is far from float32's smallest number


def sum_of_logs_of_halves(values: torch.Tensor) -> torch.Tensor:
    """``values.log().sum()`` for a flat tensor of values in [0.5, 1], as the sum of the logs of products of 64
    values: one multiplication per value instead of one ``log`` (0.03 ms instead of 0.24 ms for 256 x 784
    values on 2 cores) and as accurate, since no product falls below 0.5**64."""
    whole = values.numel() - values.numel() % LOG_CHUNK
    total = values[:whole].view(-1, LOG_CHUNK).prod(1).log_().sum()
    if whole < values.numel():
        total = total + values[whole:].log().sum()
    return total


class _BCEWithLogitsCPU(torch.autograd.Function):
    """Mean binary cross-entropy on logits, with its gradient ``(sigmoid(z) - x) / n`` made in the forward pass.

    Same value as ``F.binary_cross_entropy_with_logits`` (to float32 rounding) in fewer passes over memory: on
    a CPU the built-in spends more time on ``log_sigmoid`` and its backward than a dense AE's smaller layers
    spend in matrix products. With ``s = sigmoid(z)`` (needed for the gradient anyway),
    ``softplus(z) = relu(z) - log(max(s, 1 - s))`` exactly, and accurately in float32 (the max keeps the log's
    argument in [0.5, 1]), and those logs are summed as logs of products (:func:`sum_of_logs_of_halves`): the
    loss costs little more than the ``sigmoid``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z, x = logits.reshape(-1), target.reshape(-1)
        s = torch.sigmoid(z)
        log_term = sum_of_logs_of_halves(torch.maximum(s, torch.sub(1.0, s), out=torch.empty_like(s)))
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


def pixel_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean per-pixel loss of ``sigmoid(logits)`` against ``target``: ``bce`` (on logits, stable) or ``mse``."""
    if loss == "bce":
        return bce_with_logits(logits, target)
    if loss == "mse":
        return F.mse_loss(torch.sigmoid(logits).float(), target.float())
    raise ValueError(f"unknown loss {loss!r}")


BF16_MIN_MULTIPLIES = 2_500_000  # batch x fan-in x fan-out of a layer's products from which bf16 pays


def bf16_pays(linear: nn.Linear, batch: int) -> bool:
    """Whether a layer's products over ``batch`` rows are large enough for bf16 to pay for the copies it needs.

    Measured on a Zen 4 CPU (AVX512-BF16, torch 2.13), the three products of a layer in bf16 against float32, by
    batch x fan-in x fan-out: 784x128 at batch 256 (25.7 M) 0.34x, at 64 (6.4 M) 0.43x; 400x200 at 256 0.47x;
    200x100 at 256 (5.1 M) 0.67x, at 128 (2.6 M) 0.78x; 128x128 at 128 (2.1 M) 0.97x, at 64 (1.0 M) 1.72x;
    128x64 at 256 (2.1 M) 0.97x.
    """
    return batch * linear.in_features * linear.out_features >= BF16_MIN_MULTIPLIES


def cpu_has_bf16_products() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated,
    slower than float32."""
    try:
        capability = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):  # an older or unusual torch build: assume not
        return False
    return bool(capability.get("avx512_bf16") or capability.get("amx_bf16"))


def _glorot(model: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every Linear and (transposed) convolution."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class Autoencoder(nn.Module):
    """The interface every autoencoder here has; subclasses define ``encode`` and ``decode_logits``.

    Images are float ``(N, C, H, W)`` in [0, 1]; codes are ``(N, bottleneck)``.
    """

    image_shape: tuple[int, ...]
    bottleneck: int

    def __init__(self, image_shape: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.bottleneck = int(bottleneck)

    @property
    def pixels(self) -> int:
        """Values per image (C*H*W)."""
        count = 1
        for size in self.image_shape:
            count *= size
        return count

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)`` (deterministic)."""
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> reconstructed images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def reconstruction_loss(self, x: torch.Tensor, loss: str) -> torch.Tensor:
        """Mean per-pixel loss of reconstructing ``x`` from its code: ``bce`` (on logits, stable) or ``mse``."""
        return pixel_loss(self.decode_logits(self.encode(x)), x, loss)

    def evaluation_loss(self, x: torch.Tensor, loss: str) -> torch.Tensor:
        """The training objective on clean ``x``, deterministic (no noise, no sampling): val and test loss."""
        return self.reconstruction_loss(x, loss)

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, loss: str
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of reconstructing ``targets`` from ``inputs`` (the same, or a corrupted copy) and its parts.

        A plain autoencoder's loss has no parts: the dict is empty.
        """
        return pixel_loss(self.decode_logits(self.encode(inputs)), targets, loss), {}


class DenseAutoencoder(Autoencoder):
    """Dense AE: input -> widths -> bottleneck (linear code) -> reversed widths -> input (sigmoid).

    Takes images ``(N, C, H, W)`` with values in [0, 1]. Weights are Glorot-uniform with zero biases (the
    Keras defaults the seed notebooks used), which trains noticeably better than PyTorch's default init.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int], bottleneck: int) -> None:
        super().__init__(image_shape, bottleneck)
        self.widths = [int(w) for w in widths]
        input_dim = self.pixels
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
    def loss_and_grads(self, x: torch.Tensor, loss: str, workspace: Workspace | None = None,
                       targets: torch.Tensor | None = None, bf16: bool = False) -> torch.Tensor:
        """``reconstruction_loss(x, loss)`` and its backward pass written out: sets every parameter's ``.grad``
        and returns the loss, detached. With ``targets`` (a denoising step: ``x`` is the corrupted input) it is
        ``training_loss(x, targets, loss)`` instead.

        The same matrix products as autograd's backward of the dense layers (our tests find the same weights to
        the bit), without building a graph or its bookkeeping. With a ``workspace`` every activation and
        gradient is written into buffers kept from the previous step of the same batch size (``.grad`` then
        holds such a buffer until the next call): no allocation, so no fresh pages to fault in per step. Only
        for models where ``supports_manual_backward()``.

        ``bf16``: the large layers' three products (see :func:`bf16_pays`) take bf16 copies of their operands
        (float32 accumulation inside, a bf16 result widened to float32 at once); the loss, the small layers,
        the bias terms and the stored weights and gradients stay float32. For CPUs with bf16 dot-product
        instructions (:func:`cpu_has_bf16_products`), where those products take a third to half the time.
        """
        layers = self._dense_layers()
        if layers is None:
            raise ValueError("loss_and_grads needs a model of Linear and ReLU layers only")
        ws = workspace if workspace is not None else Workspace()
        batch = x.shape[0]
        inputs = [x.reshape(batch, -1)]
        h = inputs[0]
        # Per bf16 layer i: its input and weight as bf16 copies, kept for the backward products.
        low: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, (linear, relu) in enumerate(layers):
            out = ws.get(("h", i, batch), (batch, linear.out_features), h)
            if bf16 and bf16_pays(linear, batch):
                h16 = ws.get(("h16", i, batch), h.shape, h, torch.bfloat16).copy_(h)
                w16 = ws.get(("w16", i), linear.weight.shape, h, torch.bfloat16).copy_(linear.weight)
                low[i] = (h16, w16)
                product = torch.mm(h16, w16.t(), out=ws.get(("p16", i, batch), out.shape, h, torch.bfloat16))
                # Widened into float32, then the bias added in place (torch.add of mixed dtypes would allocate
                # a float32 copy of the product first: fresh pages to fault in, every step).
                h = out.copy_(product).add_(linear.bias)
            else:
                h = torch.addmm(linear.bias, h, linear.weight.t(), out=out)
            if relu:
                h.relu_()
            inputs.append(h)
        z = h.reshape(-1)
        target = inputs[0].reshape(-1) if targets is None else targets.reshape(-1).to(z.dtype)
        n = z.numel()
        scratch = ws.get(("scratch", batch), z.shape, z)
        relu_sum = torch.clamp(z, min=0.0, out=scratch).sum()
        s = torch.sigmoid(z, out=ws.get(("sigmoid", batch), z.shape, z))
        if loss == "bce":
            # log(1 + exp(-|z|)) = -log(max(s, 1 - s)), summed through products as its argument is in [0.5, 1].
            larger = torch.maximum(s, torch.sub(1.0, s, out=scratch), out=scratch)
            value = (relu_sum - sum_of_logs_of_halves(larger) - torch.dot(z, target)) / n
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
            dw = ws.get(("dw", i), linear.weight.shape, grad)
            linear.bias.grad = torch.sum(grad, 0, out=ws.get(("db", i), linear.bias.shape, grad))
            if i in low:
                below16, w16 = low[i]
                grad16 = ws.get(("g16", i, batch), grad.shape, grad, torch.bfloat16).copy_(grad)
                dw16 = torch.mm(grad16.t(), below16, out=ws.get(("dw16", i), dw.shape, grad, torch.bfloat16))
                linear.weight.grad = dw.copy_(dw16)
            else:
                linear.weight.grad = torch.mm(grad.t(), below, out=dw)
            if i == 0:
                break
            dh = ws.get(("dh", i, batch), below.shape, grad)
            if i in low:
                grad = dh.copy_(torch.mm(grad16, w16, out=ws.get(("dh16", i, batch), dh.shape, dh, torch.bfloat16)))
            else:
                grad = torch.mm(grad, linear.weight, out=dh)
            if layers[i - 1][1]:  # the ReLU after the layer below: its output is `below`
                grad = torch.ops.aten.threshold_backward.grad_input(grad, below, 0.0, grad_input=grad)
        return value


class Workspace:
    """Buffers reused across training steps, by key: ``get`` returns the kept one while its shape fits."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, shape: Sequence[int] | torch.Size, like: torch.Tensor,
            dtype: torch.dtype | None = None) -> torch.Tensor:
        """The buffer kept under ``key``, or a new one: ``shape``, on ``like``'s device, ``dtype`` or ``like``'s."""
        dtype = like.dtype if dtype is None else dtype
        buffer = self.buffers.get(key)
        if buffer is None or buffer.shape != tuple(shape) or buffer.device != like.device or buffer.dtype != dtype:
            buffer = self.buffers[key] = torch.empty(tuple(shape), device=like.device, dtype=dtype)
        return buffer


def conv_sizes(size: int, layers: int) -> list[int]:
    """Side lengths through ``layers`` stride-2 convolutions (kernel 3, padding 1): ``size``, then halved up."""
    sizes = [int(size)]
    for _ in range(layers):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def max_conv_layers(size: int) -> int:
    """How many stride-2 layers an image side of ``size`` takes before it is down to 1 (8 -> 3, 28 -> 5)."""
    return (int(size) - 1).bit_length()


def _conv_encoder(image_shape: tuple[int, ...], widths: list[int], out_features: int) -> nn.Sequential:
    """Stride-2 3x3 convolutions with ReLUs (channels ``widths``), flattened, then a Linear to ``out_features``."""
    channels, height, width = image_shape
    layers: list[nn.Module] = []
    for out_channels in widths:
        layers += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        channels = out_channels
    h, w = conv_sizes(height, len(widths))[-1], conv_sizes(width, len(widths))[-1]
    layers += [nn.Flatten(1), nn.Linear(channels * h * w, out_features)]
    return nn.Sequential(*layers)


def _conv_decoder(image_shape: tuple[int, ...], widths: list[int], bottleneck: int) -> nn.Sequential:
    """The mirror of ``_conv_encoder``: Linear + ReLU, then stride-2 transposed convolutions back to the image.

    Each transposed convolution's ``output_padding`` (0 or 1) restores the exact side length the matching
    convolution took in (28 -> 14 -> 7 -> 14 -> 28; 8 -> 4 -> 2 -> 4 -> 8; odd sides too). The last one has no
    activation: its outputs are logits.
    """
    channels, height, width = image_shape
    hs, ws = conv_sizes(height, len(widths)), conv_sizes(width, len(widths))
    layers: list[nn.Module] = [nn.Linear(bottleneck, widths[-1] * hs[-1] * ws[-1]), nn.ReLU(inplace=True),
                               nn.Unflatten(1, (widths[-1], hs[-1], ws[-1]))]
    for i in range(len(widths) - 1, -1, -1):
        out_channels = widths[i - 1] if i > 0 else channels
        padding = (hs[i] - (2 * hs[i + 1] - 1), ws[i] - (2 * ws[i + 1] - 1))
        layers.append(nn.ConvTranspose2d(widths[i], out_channels, 3, stride=2, padding=1, output_padding=padding))
        if i > 0:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_conv(image_shape: tuple[int, ...], widths: list[int]) -> None:
    if len(image_shape) != 3:
        raise ValueError(f"a convolutional autoencoder takes images (C, H, W), not {image_shape}")
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(f"give at least one positive channel count per stride-2 layer, not {widths}")
    most = max_conv_layers(min(image_shape[1:]))
    if len(widths) > most:
        raise ValueError(f"{len(widths)} stride-2 layers do not fit {image_shape[1]}x{image_shape[2]} images "
                         f"(at most {most})")


class ConvAutoencoder(Autoencoder):
    """Convolutional AE: stride-2 3x3 convolutions (channels ``widths``) -> Linear to the code -> mirror image.

    28x28 goes 28 -> 14 -> 7 with ``widths=[32, 64]``; 8x8 goes 8 -> 4 -> 2. Glorot-uniform weights, zero
    biases, as the dense AE.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int], bottleneck: int) -> None:
        super().__init__(image_shape, bottleneck)
        self.widths = [int(w) for w in widths]
        _check_conv(self.image_shape, self.widths)
        self.encoder = _conv_encoder(self.image_shape, self.widths, self.bottleneck)
        self.decoder = _conv_decoder(self.image_shape, self.widths, self.bottleneck)
        _glorot(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codes ``(N, bottleneck)``."""
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z)


LOGVAR_RANGE = (-30.0, 20.0)  # clamps log-variances so that exp() neither underflows to 0 nor overflows


class VariationalAutoencoder(Autoencoder):
    """VAE with a diagonal Gaussian posterior, a standard-normal prior and the reparameterisation trick.

    The encoder (dense or convolutional, as the plain AEs) ends in ``2 * bottleneck`` outputs: the posterior's
    mean and log-variance. ``encode`` gives the mean (deterministic). Training draws ``z = mu + sigma * eps``
    with ``eps`` from the global torch RNG (saved in checkpoints, so resumed runs stay bit-identical) and
    minimises ``recon + beta * KL / pixels``: ``recon`` the mean per-pixel loss of the sample's reconstruction,
    ``KL`` the divergence from the prior summed over the code and averaged over the batch.
    """

    def __init__(self, image_shape: Sequence[int], widths: Sequence[int], bottleneck: int, kind: str = "dense",
                 beta: float = 1.0) -> None:
        super().__init__(image_shape, bottleneck)
        self.widths = [int(w) for w in widths]
        self.kind = kind
        self.beta = float(beta)
        if kind == "dense":
            self.encoder = _mlp([self.pixels, *self.widths, 2 * self.bottleneck], last_activation=False)
            self.decoder = _mlp([self.bottleneck, *reversed(self.widths), self.pixels], last_activation=False)
        elif kind == "conv":
            _check_conv(self.image_shape, self.widths)
            self.encoder = _conv_encoder(self.image_shape, self.widths, 2 * self.bottleneck)
            self.decoder = _conv_decoder(self.image_shape, self.widths, self.bottleneck)
        else:
            raise ValueError(f"unknown model kind {kind!r}")
        _glorot(self)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``(N, bottleneck)`` each of the posterior of ``x``."""
        features = self.encoder(x.flatten(1) if self.kind == "dense" else x)
        mean, logvar = features.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> posterior means ``(N, bottleneck)``."""
        return self.posterior(x)[0]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Codes -> pre-sigmoid reconstructions ``(N, C, H, W)``."""
        return self.decoder(z).view(-1, *self.image_shape)

    def kl_per_pixel(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(posterior || N(0, I)) summed over the code, averaged over the batch, divided by the pixels."""
        kl = 0.5 * (mean.float().square() + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=1)
        return kl.mean() / self.pixels

    def evaluation_loss(self, x: torch.Tensor, loss: str) -> torch.Tensor:
        """``recon(decode(mean)) + beta * KL / pixels``: the training objective at the mean code (deterministic)."""
        mean, logvar = self.posterior(x)
        return pixel_loss(self.decode_logits(mean), x, loss) + self.beta * self.kl_per_pixel(mean, logvar)

    def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor, loss: str
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``recon + beta * kl`` of one sampled code per input, and the parts ``recon`` and ``kl``."""
        mean, logvar = self.posterior(inputs)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = pixel_loss(self.decode_logits(z), targets, loss)
        kl = self.kl_per_pixel(mean, logvar)
        return recon + self.beta * kl, {"recon": recon, "kl": kl}


def build(image_shape: Sequence[int], widths: Sequence[int], bottleneck: int, kind: str = "dense",
          variational: bool = False, beta: float = 1.0) -> Autoencoder:
    """The autoencoder a model config describes, sized for the dataset's images.

    ``kind``: ``dense`` or ``conv`` (``widths``: hidden widths, or channels of the stride-2 convolutions);
    ``variational``: a VAE with KL weight ``beta``. Enum values (the config's) are taken as their strings.
    """
    kind = str(getattr(kind, "value", kind))
    if variational:
        return VariationalAutoencoder(image_shape, widths, bottleneck, kind=kind, beta=beta)
    if kind == "dense":
        return DenseAutoencoder(image_shape, widths, bottleneck)
    if kind == "conv":
        return ConvAutoencoder(image_shape, widths, bottleneck)
    raise ValueError(f"unknown model kind {kind!r}")
