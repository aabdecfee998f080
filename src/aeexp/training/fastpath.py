"""The CPU fast path: a training step for the exact :class:`~aeexp.models.DenseAutoencoder` that computes what its
``training_loss``, autograd and the configured ``torch.optim`` optimizer would, in less time.

Used by :func:`select` only where that holds: the exact class (never a subclass, whose loss may differ), plain
Linear/ReLU layers (and ``code_norm="batch"``'s BatchNorm of the code) with float32 parameters all trained, a CPU,
no ``torch.compile``. What it does instead:

- the backward pass written out (:func:`loss_and_grads`): the same matrix products as autograd's, without a graph,
  into buffers reused step after step (:class:`Workspace`: no fresh pages to fault in per step);
- the BCE's sum of logs as logs of products of 64 values (:func:`sum_of_logs_of_halves`);
- on CPUs with bf16 dot-product instructions, bf16 copies of the large layers' operands (``trainer.mixed_precision``);
- for ``torch.optim.Adam``/``AdamW`` with ``fused=True``, torch's fused kernel called directly on the optimizer's
  own state (:func:`fused_adam_update`): what ``optimizer.step()`` runs, without its ~0.2 ms of Python per step.

Internals of torch used here, each behind one function with a fallback, each because no public call does the
same as fast:

- ``torch._C._cpu._get_cpu_capability`` (:func:`cpu_has_bf16_products`): the one place torch says whether the CPU
  has bf16 dot products, which decides whether bf16 pays; False without it.
- ``torch._fused_adam_``/``_fused_adamw_`` (:func:`fused_adam_update`): the kernel ``optimizer.step()`` runs,
  called without its ~0.2 ms of Python per step; ``optimizer.step()`` without them.
- ``torch._foreach_add_`` (:func:`increment_`): Adam's step counts in one call, as ``optimizer.step()`` does them;
  one ``add_`` each without it.
- ``torch.ops.aten.threshold_backward`` (:func:`relu_backward_`): the ReLU's backward in place in one pass, as
  autograd does it; ``masked_fill_`` without it, several times slower.

Adam's state is torch's own: the first step is the optimizer's own step, which makes it (:class:`FusedAdamUpdate`;
``compiler_free.own_step``: without importing torch's compiler).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn

from aeexp.models.dense import DenseAutoencoder
from aeexp.training.compiler_free import own_step

LOG_CHUNK = 64  # values per product in sum_of_logs_of_halves: 0.5**64 is far from float32's smallest number
BF16_MIN_MULTIPLIES = 2_500_000  # batch x fan-in x fan-out of a layer's products from which bf16 pays


def sum_of_logs_of_halves(values: torch.Tensor) -> torch.Tensor:
    """``values.log().sum()`` for a flat tensor of values in [0.5, 1], as the sum of the logs of products of 64
    values: one multiplication per value instead of one ``log`` (0.03 ms instead of 0.24 ms for 256 x 784
    values on 2 cores) and as accurate, since no product falls below 0.5**64."""
    whole = values.numel() - values.numel() % LOG_CHUNK
    total = values[:whole].view(-1, LOG_CHUNK).prod(1).log_().sum()
    if whole < values.numel():
        total = total + values[whole:].log().sum()
    return total


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
    slower than float32. Read from torch's private CPU capability probe, the one place torch exposes it; False
    where the probe is missing (another torch build)."""
    try:
        capability = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return False
    return bool(capability.get("avx512_bf16") or capability.get("amx_bf16"))


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


class Layer(NamedTuple):
    """One Linear layer of the plan, with what follows it: a ReLU, or a batch normalisation of its outputs."""

    linear: nn.Linear
    relu: bool = False
    norm: nn.BatchNorm1d | None = None


Layers = list[Layer]


def plain_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm1d without scale or shift, keeping running statistics by momentum (the
    dense AE's ``code_norm="batch"``): what :func:`loss_and_grads` writes out."""
    return (type(module) is nn.BatchNorm1d and not module.affine and module.track_running_stats
            and module.momentum is not None)


def dense_layers(model: DenseAutoencoder) -> Layers | None:
    """The model's layers as a plan (each Linear with the ReLU or the plain batch normalisation after it), or None
    when a module is of another kind or order."""
    plan: Layers = []
    for module in (*model.encoder, *model.decoder):
        if isinstance(module, nn.Linear):
            plan.append(Layer(module))
        elif isinstance(module, nn.ReLU) and plan and not plan[-1].relu:
            plan[-1] = plan[-1]._replace(relu=True)
        elif plain_batch_norm(module) and plan and not plan[-1].relu and plan[-1].norm is None:
            plan[-1] = plan[-1]._replace(norm=module)
        else:
            return None
    return plan


def batch_norm_(h: torch.Tensor, norm: nn.BatchNorm1d) -> torch.Tensor:
    """``h`` normalised in place as ``norm`` does in training, its running statistics updated as it updates them;
    returns the per-feature ``1 / std`` used. A batch of one image has no batch variance: it is normalised with
    the running statistics, left as they are (as :meth:`DenseAutoencoder.encode` does)."""
    n = h.shape[0]
    if n == 1:
        invstd = torch.rsqrt(norm.running_var + norm.eps)
        h.sub_(norm.running_mean).mul_(invstd)
        return invstd
    var, mean = torch.var_mean(h, 0, correction=0)
    momentum = float(norm.momentum)  # type: ignore[arg-type]  # plain_batch_norm: not None
    norm.running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
    norm.running_var.mul_(1.0 - momentum).add_(var, alpha=momentum * n / (n - 1))  # the unbiased variance
    norm.num_batches_tracked.add_(1)
    invstd = torch.rsqrt(var.add_(norm.eps))
    h.sub_(mean).mul_(invstd)
    return invstd


def batch_norm_backward(grad: torch.Tensor, normalised: torch.Tensor, invstd: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. a batch normalisation's input from the one w.r.t. its output ``normalised`` (training
    mode, batch statistics; a batch of one: the running statistics, constants)."""
    if grad.shape[0] == 1:
        return grad * invstd
    return (grad - grad.mean(0) - normalised * (grad * normalised).mean(0)) * invstd


def applies_to(model: nn.Module) -> bool:
    """Whether :func:`loss_and_grads` computes ``model.training_loss``: the exact DenseAutoencoder class, plain
    Linear/ReLU layers (and a plain batch normalisation of the code), every parameter trained and float32."""
    return (type(model) is DenseAutoencoder and model.loss in ("bce", "mse") and dense_layers(model) is not None
            and all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters()))


class Forward(NamedTuple):
    """What the forward pass keeps for the backward one: the flat inputs and each layer's output (after its ReLU
    or normalisation), the bf16 copies of the large layers' input and weight, by layer, and the ``1 / std`` each
    normalised layer's outputs were scaled by, by layer."""

    activations: list[torch.Tensor]
    low: dict[int, tuple[torch.Tensor, torch.Tensor]]
    invstds: dict[int, torch.Tensor]


@torch.no_grad()
def loss_and_grads(model: DenseAutoencoder, inputs: torch.Tensor, targets: torch.Tensor,
                   workspace: Workspace | None = None, bf16: bool = False) -> torch.Tensor:
    """``model.training_loss(inputs, targets)`` and its backward pass written out: sets every parameter's
    ``.grad`` and returns the loss, detached. Only for models where :func:`applies_to`.

    The same matrix products as autograd's backward of the dense layers, without building a graph or its
    bookkeeping. With a ``workspace`` every activation and gradient is written into buffers kept from the previous
    step of the same batch size (``.grad`` then holds such a buffer until the next call).

    ``bf16``: the large layers' three products (see :func:`bf16_pays`) take bf16 copies of their operands
    (float32 accumulation inside, a bf16 result widened to float32 at once); the loss, the small layers, the bias
    terms and the stored weights and gradients stay float32. For CPUs with bf16 dot-product instructions
    (:func:`cpu_has_bf16_products`), where those products take a third to half the time.
    """
    layers = dense_layers(model)
    if layers is None:
        raise ValueError("loss_and_grads needs a model of Linear and ReLU layers (and a plain BatchNorm1d) only")
    ws = workspace if workspace is not None else Workspace()
    forward = _forward(layers, inputs.reshape(inputs.shape[0], -1), ws, bf16)
    value, grad = _loss_and_its_gradient(forward.activations[-1], targets, model.loss, ws)
    _backward(layers, forward, grad, ws)
    return value


def _forward(layers: Layers, x: torch.Tensor, ws: Workspace, bf16: bool) -> Forward:
    """The layers applied to the flat inputs ``x``, every output written into the workspace."""
    batch = x.shape[0]
    forward = Forward([x], {}, {})
    h = x
    for i, (linear, relu, norm) in enumerate(layers):
        out = ws.get(("h", i, batch), (batch, linear.out_features), h)
        if bf16 and bf16_pays(linear, batch):
            h16 = ws.get(("h16", i, batch), h.shape, h, torch.bfloat16).copy_(h)
            w16 = ws.get(("w16", i), linear.weight.shape, h, torch.bfloat16).copy_(linear.weight)
            forward.low[i] = (h16, w16)
            product = torch.mm(h16, w16.t(), out=ws.get(("p16", i, batch), out.shape, h, torch.bfloat16))
            # Widened into float32, then the bias added in place (torch.add of mixed dtypes would allocate a
            # float32 copy of the product first: fresh pages to fault in, every step).
            h = out.copy_(product)
            if linear.bias is not None:
                h.add_(linear.bias)
        elif linear.bias is None:  # the layer before a batch normalisation, which would cancel a bias
            h = torch.mm(h, linear.weight.t(), out=out)
        else:
            h = torch.addmm(linear.bias, h, linear.weight.t(), out=out)
        if norm is not None:
            forward.invstds[i] = batch_norm_(h, norm)
        if relu:
            h.relu_()
        forward.activations.append(h)
    return forward


def _backward(layers: Layers, forward: Forward, grad: torch.Tensor, ws: Workspace) -> None:
    """Every parameter's ``.grad`` from ``grad``, the loss's gradient w.r.t. the last layer's output."""
    activations, low, invstds = forward
    batch = grad.shape[0]
    for i in range(len(layers) - 1, -1, -1):
        linear = layers[i].linear
        if i in invstds:  # the normalisation of this layer's outputs (no ReLU after it: its output is activations[i+1])
            grad = batch_norm_backward(grad, activations[i + 1], invstds[i])
        below = activations[i]
        dw = ws.get(("dw", i), linear.weight.shape, grad)
        if linear.bias is not None:
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
        if layers[i - 1].relu:  # the ReLU after the layer below: its output is `below`
            grad = relu_backward_(grad, below)


def _loss_and_its_gradient(logits: torch.Tensor, targets: torch.Tensor, loss: str, ws: Workspace
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean per-pixel ``loss`` of ``sigmoid(logits)`` against ``targets`` and its gradient w.r.t. the logits
    (written into the workspace), as :func:`aeexp.models.pixel_loss` defines it."""
    batch = logits.shape[0]
    z = logits.reshape(-1)
    target = targets.reshape(-1).to(z.dtype)
    n = z.numel()
    scratch = ws.get(("scratch", batch), z.shape, z)
    relu_sum = torch.clamp(z, min=0.0, out=scratch).sum()
    s = torch.sigmoid(z, out=ws.get(("sigmoid", batch), z.shape, z))
    if loss == "bce":
        # softplus(z) = relu(z) - log(max(s, 1 - s)), accurate in float32 as the log's argument is in [0.5, 1];
        # those logs are summed through products.
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
    return value, grad.view(logits.shape)


def gather_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator, workspace: Workspace
                   ) -> Iterator[torch.Tensor]:
    """The shuffled float batches of :func:`aeexp.training.loop.iterate_batches`, written into two reused buffers."""
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


def _aten_threshold_backward() -> Callable[..., torch.Tensor] | None:
    try:
        return torch.ops.aten.threshold_backward.grad_input
    except (AttributeError, RuntimeError):
        return None


_THRESHOLD_BACKWARD = _aten_threshold_backward()


def relu_backward_(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad`` zeroed in place where the ReLU's ``output`` is 0 (its input was not positive): the gradient through
    the ReLU. ATen's ``threshold_backward``, the kernel autograd runs for a ReLU, in one pass; where a torch build
    lacks it, ``masked_fill_`` with a mask of the same values (a comparison pass, a mask and a slower fill: ten times
    the time or more on a 256 x 128 layer, so several times a step's ReLUs' share)."""
    if _THRESHOLD_BACKWARD is not None:
        return _THRESHOLD_BACKWARD(grad, output, 0.0, grad_input=grad)
    return grad.masked_fill_(output <= 0, 0.0)


def increment_(counters: list[torch.Tensor]) -> None:
    """Add 1 to each tensor of ``counters`` (Adam's per-parameter step counts) in one call: ``torch._foreach_add_``,
    which torch.optim's own fused Adam calls for them; one ``add_`` each where a torch build lacks it (about twice
    the time for the dozen counters of a dense AE)."""
    foreach_add_ = getattr(torch, "_foreach_add_", None)
    if foreach_add_ is not None:
        foreach_add_(counters, 1)
        return
    for counter in counters:
        counter.add_(1)


class FusedAdamUpdate:
    """``optimizer.step()`` of a ``torch.optim.Adam``/``AdamW`` with ``fused=True``, as direct calls of the fused
    kernel that step runs, on the optimizer's own state, in its own format.

    The first step is the optimizer's own step (``compiler_free.own_step``), which makes the optimizer's state. The
    kernel's argument lists are then made once and kept while the optimizer's state and groups are the same objects
    (``load_state_dict`` replaces both). The learning rate and the other hyperparameters are read at every call, so
    schedulers work, and the groups that share them are updated by one call (each costs ~20 us besides its
    arithmetic; the weights' and the biases' groups often differ by nothing). A parameter without a gradient makes
    that call fall back to ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kernels: tuple[Callable[..., None], Callable[..., None]]
                 ) -> None:
        self.optimizer, self.kernels = optimizer, kernels
        self.made_for: tuple[int, int] | None = None
        self.lists: list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = []

    def _state_made(self) -> bool:
        """Whether every parameter has its state (torch.optim makes it at the parameter's first step)."""
        state = self.optimizer.state
        return all(state.get(p) for group in self.optimizer.param_groups for p in group["params"])

    def _make_lists(self) -> None:
        state = self.optimizer.state
        self.lists = []
        for group in self.optimizer.param_groups:
            params = list(group["params"])
            self.lists.append((params, [state[p]["exp_avg"] for p in params],
                               [state[p]["exp_avg_sq"] for p in params], [state[p]["step"] for p in params]))
        self.made_for = (id(self.optimizer.state), id(self.optimizer.param_groups))

    @torch.no_grad()
    def __call__(self) -> None:
        if self.made_for != (id(self.optimizer.state), id(self.optimizer.param_groups)):
            if not self._state_made():  # the first step: torch makes the state, in its own format, as it steps
                own_step(self.optimizer)  # (optimizer.step() without importing torch._dynamo)
                return
            self._make_lists()
        calls: dict[tuple, tuple[list[torch.Tensor], ...]] = {}
        for group, (params, exp_avgs, exp_avg_sqs, steps) in zip(self.optimizer.param_groups, self.lists,
                                                                  strict=True):
            grads = [p.grad for p in params]
            if any(grad is None for grad in grads):
                self.optimizer.step()
                return
            hyper = (float(group["lr"]), *group["betas"], group["weight_decay"], group["eps"],
                     bool(group.get("decoupled_weight_decay")))
            for into, items in zip(calls.setdefault(hyper, ([], [], [], [], [])),
                                   (params, grads, exp_avgs, exp_avg_sqs, steps), strict=True):
                into += items
        for (lr, beta1, beta2, weight_decay, eps, decoupled), lists in calls.items():
            params, grads, exp_avgs, exp_avg_sqs, steps = lists
            increment_(steps)
            self.kernels[1 if decoupled else 0](params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr,
                                                beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
                                                amsgrad=False, maximize=False)


_FUSED_GROUP = {"fused": True, "amsgrad": False, "maximize": False, "capturable": False, "differentiable": False}


def fused_adam_update(optimizer: torch.optim.Optimizer) -> FusedAdamUpdate | None:
    """A :class:`FusedAdamUpdate` for a ``torch.optim.Adam`` or ``AdamW`` with ``fused=True`` (and no amsgrad,
    maximize, capturable or differentiable, a float learning rate) on CPU float32 parameters; None for any other
    optimizer (or a torch without the kernels). Schedulers, ``state_dict`` and a later ``optimizer.step()`` see
    exactly what they would have; step hooks registered on the optimizer do not run."""
    adam, adamw = getattr(torch, "_fused_adam_", None), getattr(torch, "_fused_adamw_", None)
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or adam is None or adamw is None:
        return None
    for group in optimizer.param_groups:
        if any(group.get(key) != value for key, value in _FUSED_GROUP.items()) or isinstance(group["lr"],
                                                                                           torch.Tensor):
            return None
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in group["params"]):
            return None
    return FusedAdamUpdate(optimizer, (adam, adamw))


class FastDenseStep:
    """The training step of the fast path (see the module): batches, forward and backward, optimizer update."""

    path = "fast"

    def __init__(self, model: DenseAutoencoder, optimizer: torch.optim.Optimizer, bf16: bool) -> None:
        self.model, self.bf16 = model, bf16
        self.workspace = Workspace()
        self.update: Callable[[], object] = fused_adam_update(optimizer) or optimizer.step

    def batches(self, images: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return gather_batches(images, batch_size, generator, self.workspace)

    def zero_grad(self) -> None:
        """Nothing: :func:`loss_and_grads` sets every parameter's ``.grad`` anew."""

    def backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return loss_and_grads(self.model, inputs, targets, self.workspace, self.bf16), {}


def select(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, compiled: bool,
           mixed_precision: bool) -> FastDenseStep | None:
    """The fast step for this model on this device, or None where it does not apply (see the module)."""
    if device.type != "cpu" or compiled or not applies_to(model):
        return None
    assert isinstance(model, DenseAutoencoder)
    return FastDenseStep(model, optimizer, bf16=mixed_precision and cpu_has_bf16_products())

