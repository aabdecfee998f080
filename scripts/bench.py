#!/usr/bin/env python
r"""Speed of aeexp against baselines measured in the same process: prints a table, writes it to BENCHMARKS.md.

    python scripts/bench.py        # Fashion-MNIST, full sizes (the lead's figures: on an idle machine)
    python scripts/bench.py --epochs 2 --repeats 1 --conv-epochs 2 --embed-n 1000 --run-epochs 1 --no-write
    python scripts/bench.py --epochs 3 --repeats 1 --conv-epochs 2 --train-n 5000 --embed-n 1000 --run-epochs 1 \
        --no-write                 # a smoke test of the script itself (a subset of the training images)

Five parts. Every speed is a ratio to a baseline timed in this process and interleaved with it (epoch by epoch,
the order reversed every other epoch), so that other load on the machine hits both alike; figures are medians.

1. Training epochs (batch 256, BCE on logits), aeexp's ``loop.fit`` with the step ``loop.make_step`` chooses and the
   optimizer and schedule built from the composed config (``optim.build_optimizer``/``build_schedule``), against
   bare eager PyTorch loops written by hand: the same network as a plain ``nn.Sequential`` starting from the same
   Glorot-uniform weights, float images preloaded once, index batches,
   ``F.binary_cross_entropy_with_logits``, ``loss.backward()``, ``optimizer.step()``. Rows:

   - "dense ae32, Adam" (``model=ae32 model.code_norm=none optimizer=adam``: 784-128-64-32 with a linear code,
     the network the bare loops write; ``torch.optim.Adam(fused=True)``, the
     CPU fast path) against the bare loop with ``torch.optim.Adam(fused=True)`` and with ``foreach=True``; the
     fair baseline is whichever of the two is faster in this run. Also timed alongside: the epoch's matrix
     products alone (the arithmetic floor: per batch and Linear layer the forward, the weight-gradient and, but for
     the first layer, the input-gradient product, float32 ``torch.mm`` into preallocated outputs), and Keras 3 on
     the torch backend when it is installed;
   - "dense ae32, AdamW + cosine" (``optimizer=adamw scheduler=cosine``: cosine over the run, stepped per batch)
     against the bare loop with ``torch.optim.AdamW(fused=True)`` (the same weight decay on weights, none on
     biases) and ``CosineAnnealingLR(T_max=total steps)`` stepped per batch;
   - "conv AE (32, 64 channels, bottleneck 32), Adam" (``model=conv``, aeexp's autograd path) against the same
     network written by hand, ``torch.optim.Adam(fused=True)``.

   Each with its test BCE after the same epochs.
2. The 2-D embedding of test codes (at 3,000 points, what a run embeds by default, and at 10,000) through
   aeexp's t-SNE view (``aeexp.evaluation.views.tsne`` with its shipped settings) against
   ``sklearn.manifold.TSNE`` with its defaults and with ``max_iter=500``: seconds, trustworthiness (k=10, on a fixed
   sample) and 5-NN accuracy (5-fold CV) in 2-D.
3. Whole runs (``python -m aeexp ...``) against the sum of their own training and embedding parts (read back from
   MLflow), and their peak RSS. They log to an MLflow store created (migrated) before the first run, as a user's
   second run would find it; once with an empty cache (the PCA baseline computed) and once with it cached.
4. Latent health (``scripts/health_cost.py``): the health list measured after each epoch of the dense ae32, as a
   share of that epoch, and the end-of-run health additions in seconds.
5. A folder of images (``dataset=folder``): the training images written as PNGs in class folders, loaded by aeexp
   with an empty cache and with its cache, against torchvision's ``ImageFolder`` + ``DataLoader`` iterating the same
   files once (``scripts/bench_folder.py``, which also runs alone).

Only the part of BENCHMARKS.md between the two ``bench:`` markers is rewritten; the notes around it stay.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import bench_folder  # scripts/, beside this file
import bench_load
import bench_runs
import health_cost
import numpy as np
import torch
import torch.nn.functional as F
from bench_process import fmt, median
from omegaconf import DictConfig
from torch import nn

from aeexp import data, models
from aeexp.config import EmbedConfig
from aeexp.data import sampling
from aeexp.evaluation import lists, metrics
from aeexp.models import inference
from aeexp.training import fastpath, loop, optim

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
CPU = torch.device("cpu")
EVAL_BATCH = 4096

TARGET_DENSE_RATIO, TARGET_DENSE_LOSS = 0.75, 0.01  # row 1: against the faster bare loop
TARGET_ADAMW_RATIO, TARGET_CONV_RATIO = 1.0, 1.0  # rows 2 and 3: not slower than the bare loop
TARGET_EMBED_RATIO, TARGET_TRUST, TARGET_KNN = 0.33, 0.002, 0.01  # against sklearn's defaults, at 10,000 points
TARGET_EMBED_N = 10_000
BATCH = 256  # --batch-size's default
DENSE_WIDTHS, BOTTLENECK = [128, 64], 32  # the sizes the labels name: ae32 is 784-128-64-32, the conv AE's code 32


# The dense rows time the network the bare loops write: the linear code, without the preset's BatchNorm of it.
PLAIN_CODE = "model.code_norm=none"


def compose(dataset: str, *overrides: str) -> DictConfig:
    """aeexp's config as ``python -m aeexp dataset=<dataset> <overrides>`` composes it: the dataset's own model
    settings (``conf/dataset_model``, e.g. the digits' 4-d code) apply as in a run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from aeexp.config import register_configs, validate

    register_configs()
    with initialize_config_module(config_module="aeexp.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"dataset={dataset}", *overrides])
    validate(cfg)
    return cfg


def dense_config(dataset: str, compile_setting: str = "auto") -> DictConfig:
    """The dense Adam row's config: ``model=ae32 model.code_norm=none optimizer=adam scheduler=none``."""
    return compose(dataset, "model=ae32", PLAIN_CODE, "optimizer=adam", "scheduler=none",
                   compile_override(compile_setting))


def check_sizes(model: models.Autoencoder, cfg: DictConfig, widths: Sequence[int] | None) -> None:
    """Stops the bench unless the network built from ``cfg`` has the sizes its row's label names (``widths``, when
    given, and a ``BOTTLENECK``-value code): checked before any timing."""
    with torch.no_grad():
        code = model.eval().encode(torch.zeros(2, *model.image_shape))
    model.train()
    built = (list(cfg.model.widths), int(code.shape[-1]))
    if built != ((list(widths) if widths is not None else built[0]), BOTTLENECK):
        raise SystemExit(f"{cfg.model.name}: widths {built[0]} and a {built[1]}-value code, not the "
                         f"{widths or ''} {BOTTLENECK}-value code the row's label names (dataset {cfg.dataset.name})")


def load_dataset(dataset: str, root: str, train_n: int | None) -> data.Dataset:
    """The dataset as a run loads it; its first ``train_n`` training images only when given."""
    ds = data.load(data.preset(dataset, root=root, download=False))
    if train_n:
        ds = dataclasses.replace(ds, train=data.Split(ds.train.images[:train_n], ds.train.labels[:train_n]))
    return ds


# --------------------------------------------------------------------------------------------- training


class Timed(Protocol):
    """Anything timed epoch by epoch alongside aeexp's loop."""

    def epoch(self) -> float: ...

    def test_loss(self, images: torch.Tensor) -> float | None: ...


def glorot(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases (the Keras defaults), as a hand-written loop would set them."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return model


@torch.no_grad()
def same_start(bare: nn.Module, model: nn.Module) -> nn.Module:
    """``bare`` given ``model``'s current (initial) parameters, one by one in order: both loops start from the same
    weights, so that their test losses differ by their training alone. Fails if the networks differ in shape."""
    mine, theirs = list(bare.parameters()), list(model.parameters())
    if [p.shape for p in mine] != [p.shape for p in theirs]:
        raise SystemExit(f"the bare network does not match aeexp's:\n{bare}\n{model}")
    for a, b in zip(mine, theirs, strict=True):
        a.copy_(b)
    return bare


def dense_network(pixels: int, widths: Sequence[int], bottleneck: int) -> nn.Sequential:
    """pixels -> widths -> bottleneck (linear code) -> reversed widths -> pixels (logits), ReLUs between."""
    sizes = [pixels, *widths, bottleneck, *reversed(widths), pixels]
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i not in (len(widths), len(sizes) - 2):  # no activation on the code and on the logits
            layers.append(nn.ReLU(inplace=True))
    return glorot(nn.Sequential(*layers))


def conv_network(image_shape: Sequence[int], bottleneck: int) -> nn.Sequential:
    """The conv AE by hand, 32 and 64 channels: Conv2d 1->32 k3 s2 p1, ReLU, Conv2d 32->64 k3 s2 p1, ReLU, Flatten,
    Linear(64*7*7, 32); Linear(32, 64*7*7), ReLU, Unflatten, ConvTranspose2d 64->32 k3 s2 p1 op1, ReLU,
    ConvTranspose2d 32->1 k3 s2 p1 op1 (sides for 28x28; output_padding restores an even side)."""
    channels, height, _ = image_shape
    h1 = (height + 1) // 2
    h2 = (h1 + 1) // 2
    return glorot(nn.Sequential(
        nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Flatten(1), nn.Linear(64 * h2 * h2, bottleneck),
        nn.Linear(bottleneck, 64 * h2 * h2), nn.ReLU(inplace=True), nn.Unflatten(1, (64, h2, h2)),
        nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=h1 - (2 * h2 - 1)), nn.ReLU(inplace=True),
        nn.ConvTranspose2d(32, channels, 3, stride=2, padding=1, output_padding=height - (2 * h1 - 1)),
    ))


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on the weights (matrices, kernels), none on the biases: the AdamW groups aeexp uses."""
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


class BareLoop:
    """The loop a careful engineer writes by hand: float images preloaded once (``x``, shared), a seeded shuffle,
    index batches, the network's logits, ``F.binary_cross_entropy_with_logits``, ``loss.backward()``,
    ``optimizer.step()`` (and ``scheduler.step()`` after every batch when there is one). Eager PyTorch."""

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, seed: int,
                 batch_size: int, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
        self.model, self.optimizer, self.scheduler = network, optimizer, scheduler
        self.x, self.batch_size = x, batch_size
        self.generator = torch.Generator().manual_seed(seed)  # the same shuffles as aeexp's loop of that seed

    def epoch(self) -> float:
        started = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.x), generator=self.generator)
        total = torch.zeros(())
        for start in range(0, len(self.x), self.batch_size):
            batch = torch.index_select(self.x, 0, order[start:start + self.batch_size])
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(self.model(batch), batch)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            total += loss.detach() * len(batch)
        float(total)
        return time.perf_counter() - started

    @torch.no_grad()
    def test_loss(self, images: torch.Tensor) -> float:
        self.model.eval()
        x = preload(images, flat=self.x.dim() == 2)
        total = 0.0
        for start in range(0, len(x), EVAL_BATCH):
            batch = x[start:start + EVAL_BATCH]
            total += float(F.binary_cross_entropy_with_logits(self.model(batch), batch)) * len(batch)
        return total / len(x)


def preload(images: torch.Tensor, flat: bool) -> torch.Tensor:
    """uint8 images as float32 in [0, 1], ``(N, pixels)`` or ``(N, C, H, W)``, converted once."""
    x = images.float().div_(255.0)
    return x.flatten(1).contiguous() if flat else x.contiguous()


class MatmulFloor:
    """The matrix products of one epoch of a dense network and nothing else: for each batch (the epoch's sizes)
    and each Linear layer the forward product ``h @ W.T``, the weight-gradient product ``g.T @ h`` and, but for
    the first layer, the input-gradient product ``g @ W``, float32 ``torch.mm`` into preallocated outputs, in a
    training step's order (forward through the layers, backward through them in reverse)."""

    def __init__(self, sizes: Sequence[int], n: int, batch_size: int) -> None:
        self.batches = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        generator = torch.Generator().manual_seed(0)
        self.plans: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        for rows in set(self.batches):
            plan = []
            for fan_in, fan_out in itertools.pairwise(sizes):
                h = torch.randn(rows, fan_in, generator=generator)
                w = torch.randn(fan_out, fan_in, generator=generator)
                g = torch.randn(rows, fan_out, generator=generator)
                plan.append((h, w.t(), g, g.t(), w, torch.empty(rows, fan_out), torch.empty(fan_out, fan_in),
                             torch.empty(rows, fan_in)))
            self.plans[rows] = plan

    def epoch(self) -> float:
        started = time.perf_counter()
        for rows in self.batches:
            plan = self.plans[rows]
            for h, wt, _, _, _, out, _, _ in plan:
                torch.mm(h, wt, out=out)
            for i in range(len(plan) - 1, -1, -1):
                h, _, g, gt, w, _, dw, dh = plan[i]
                torch.mm(gt, h, out=dw)
                if i:
                    torch.mm(g, w, out=dh)
        return time.perf_counter() - started

    def test_loss(self, images: torch.Tensor) -> None:
        return None


class KerasLoop:
    """Keras 3 on the torch backend: the same layers, its own Glorot init, Adam and BCE on logits; ``fit`` one
    epoch at a time."""

    def __init__(self, keras, train_images: torch.Tensor, widths: Sequence[int], bottleneck: int, lr: float,
                 seed: int, batch_size: int) -> None:
        keras.utils.set_random_seed(seed)
        dim = train_images[0].numel()
        self.model = keras.Sequential([
            keras.Input((dim,)),
            *[keras.layers.Dense(w, activation="relu") for w in widths],
            keras.layers.Dense(bottleneck),
            *[keras.layers.Dense(w, activation="relu") for w in reversed(widths)],
            keras.layers.Dense(dim),
        ])
        self.model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        self.x = preload(train_images, flat=True).numpy()
        self.batch_size = batch_size
        self.times: list[float] = []
        outer = self

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.times.append(time.perf_counter() - self.started)

        self.timer = Timer()

    def epoch(self) -> float:
        self.model.fit(self.x, self.x, batch_size=self.batch_size, epochs=1, shuffle=True, verbose=0,
                       callbacks=[self.timer])
        return self.times[-1]

    def test_loss(self, images: torch.Tensor) -> float:
        x = preload(images, flat=True)
        logits = torch.as_tensor(np.asarray(self.model.predict(x.numpy(), batch_size=EVAL_BATCH, verbose=0)))
        return float(F.binary_cross_entropy_with_logits(logits.float(), x))


def load_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return None
    return keras if keras.backend.backend() == "torch" else None


@dataclass
class Contender:
    label: str
    times: list[list[float]] = field(default_factory=list)  # epoch seconds, one list per repeat
    test_loss: list[float] = field(default_factory=list)  # one per repeat

    @property
    def steady(self) -> list[float]:
        """Epoch seconds from epoch 2 on, all repeats (all epochs when a repeat has only one)."""
        return [t for times in self.times for t in (times[1:] or times)]

    @property
    def first(self) -> list[float]:
        return [times[0] for times in self.times]


@dataclass
class Row:
    """One training comparison: aeexp's loop (key ``aeexp``) and what is timed alongside it."""

    key: str
    title: str
    epochs: int
    contenders: dict[str, Contender] = field(default_factory=dict)
    baselines: tuple[str, ...] = ()  # candidates for the fair baseline; the faster in this run is taken
    floor: str | None = None
    path: str = ""  # aeexp's step: "fast" or "autograd", and whether bf16

    def ratios(self, a: str, b: str) -> list[float]:
        """Per-epoch ratios of ``a``'s epoch to ``b``'s (epoch 2 on), paired epoch by epoch."""
        return [x / y for x, y in zip(self.contenders[a].steady, self.contenders[b].steady, strict=True)]

    @property
    def baseline(self) -> str:
        """The fair baseline: of the candidates, the one the others' paired epoch ratios put fastest."""
        best = self.baselines[0]
        for other in self.baselines[1:]:
            if median(self.ratios(other, best)) < 1.0:
                best = other
        return best


@dataclass
class AeexpRun:
    """What aeexp trains with, as ``experiment.run`` builds it from a composed config."""

    cfg: DictConfig
    model: models.Autoencoder
    optimizer: torch.optim.Optimizer
    schedule: optim.Schedule
    step: loop.TrainingStep


def build_aeexp(cfg: DictConfig, ds: data.Dataset, seed: int, epochs: int, batch_size: int) -> AeexpRun:
    torch.manual_seed(seed)
    model = models.build(cfg.model, ds.image_shape)
    check_sizes(model, cfg, DENSE_WIDTHS if str(cfg.model._target_).endswith(".DenseAutoencoder") else None)
    optimizer = optim.build_optimizer(cfg.optimizer, model)
    schedule = optim.build_schedule(cfg.scheduler, optimizer, epochs, math.ceil(len(ds.train) / batch_size))
    step = loop.make_step(model, optimizer, CPU, cfg.trainer.compile, cfg.trainer.mixed_precision)
    return AeexpRun(cfg, model, optimizer, schedule, step)


Baselines = Callable[[AeexpRun, int], dict[str, Timed]]


def run_row(row: Row, cfg: DictConfig, ds: data.Dataset, args: argparse.Namespace, make_baselines: Baselines
            ) -> AeexpRun:
    """``row.epochs`` epochs of aeexp and of each baseline per repeat, interleaved: after aeexp's odd epoch e the
    baselines' epoch e, then their epoch e+1 in the reverse order, then aeexp's epoch e+1 (A B C | C B A | ...)."""
    last = None
    for repeat in range(args.repeats):
        seed = repeat
        aeexp = build_aeexp(cfg, ds, seed, row.epochs, args.batch_size)
        row.path = f"{aeexp.step.path} path" + (", bf16 products" if aeexp.step.bf16 else "")
        baselines = make_baselines(aeexp, seed)
        times: dict[str, list[float]] = {name: [] for name in ["aeexp", *baselines]}

        def between_epochs(epoch: int, values: dict[str, float], times=times, baselines=baselines,
                           repeat=repeat) -> None:
            times["aeexp"].append(values["epoch_time"])
            if epoch % 2:
                for name, timed in baselines.items():
                    times[name].append(timed.epoch())
                if epoch < row.epochs:
                    for name, timed in reversed(baselines.items()):
                        times[name].append(timed.epoch())
            print(f"  {row.key} repeat {repeat + 1} epoch {epoch}: "
                  + "  ".join(f"{name} {times[name][epoch - 1]:.2f}s" for name in times), flush=True)

        loop.fit(aeexp.model, ds.train, ds.val, epochs=row.epochs, batch_size=args.batch_size,
                 optimizer=aeexp.optimizer, seed=seed, schedule=aeexp.schedule, step=aeexp.step,
                 grad_clip=aeexp.cfg.trainer.grad_clip, progress=False, on_epoch_end=between_epochs)
        losses = {"aeexp": inference.evaluate_loss(aeexp.model, ds.test.images)}
        losses.update({name: timed.test_loss(ds.test.images) for name, timed in baselines.items()})
        for name, seconds in times.items():
            contender = row.contenders[name]
            contender.times.append(seconds)
            if losses[name] is not None:
                contender.test_loss.append(losses[name])
        last = aeexp
    assert last is not None
    return last


COMPILE = {"auto": "null", "on": "true", "off": "false"}  # --compile -> trainer.compile


def compile_override(setting: str) -> str:
    return f"trainer.compile={COMPILE[setting]}"


def bench_dense_adam(ds: data.Dataset, x: torch.Tensor, args: argparse.Namespace) -> tuple[Row, np.ndarray]:
    """Row 1; also returns the test codes of its last aeexp model (for the embedding part)."""
    cfg = dense_config(args.dataset, args.compile)
    widths, bottleneck = list(cfg.model.widths), int(cfg.model.bottleneck)
    betas, eps, lr = tuple(cfg.optimizer.betas), float(cfg.optimizer.eps), float(cfg.optimizer.lr)
    keras = None if args.no_keras else load_keras()
    row = Row("dense", "dense ae32, Adam", args.epochs, baselines=("fused", "foreach"), floor="floor")
    row.contenders = {
        "aeexp": Contender("aeexp `loop.fit`"),
        "fused": Contender("bare eager loop, `torch.optim.Adam(fused=True)`"),
        "foreach": Contender("bare eager loop, `torch.optim.Adam(foreach=True)`"),
        "floor": Contender("matrix products alone (float32 `torch.mm`)"),
    }
    if keras:
        row.contenders["keras"] = Contender("Keras 3, torch backend, Adam")
    floor = MatmulFloor([ds.input_dim, *widths, bottleneck, *reversed(widths), ds.input_dim], len(ds.train),
                        args.batch_size)

    def baselines(aeexp: AeexpRun, seed: int) -> dict[str, Timed]:
        made: dict[str, Timed] = {}
        for name, how in (("fused", {"fused": True}), ("foreach", {"foreach": True})):
            torch.manual_seed(seed)
            net = same_start(dense_network(ds.input_dim, widths, bottleneck), aeexp.model)
            made[name] = BareLoop(net, torch.optim.Adam(net.parameters(), lr=lr, betas=betas, eps=eps, **how), x,
                                  seed, args.batch_size)
        made["floor"] = floor
        if keras:
            made["keras"] = KerasLoop(keras, ds.train.images, widths, bottleneck, lr, seed, args.batch_size)
        return made

    aeexp = run_row(row, cfg, ds, args, baselines)
    return row, inference.encode_all(aeexp.model, ds.test.images).numpy()


def bench_dense_adamw_cosine(ds: data.Dataset, x: torch.Tensor, args: argparse.Namespace) -> Row:
    cfg = compose(args.dataset, "model=ae32", PLAIN_CODE, "optimizer=adamw", "scheduler=cosine",
                  compile_override(args.compile))
    widths, bottleneck = list(cfg.model.widths), int(cfg.model.bottleneck)
    opt = cfg.optimizer
    total_steps = args.epochs * math.ceil(len(ds.train) / args.batch_size)
    row = Row("adamw", "dense ae32, AdamW + cosine", args.epochs, baselines=("bare",))
    row.contenders = {
        "aeexp": Contender("aeexp `loop.fit`"),
        "bare": Contender("bare eager loop, `torch.optim.AdamW(fused=True)` + "
                          f"`CosineAnnealingLR(T_max={total_steps})` per batch"),
    }

    def baselines(aeexp: AeexpRun, seed: int) -> dict[str, Timed]:
        torch.manual_seed(seed)
        net = same_start(dense_network(ds.input_dim, widths, bottleneck), aeexp.model)
        optimizer = torch.optim.AdamW(weight_decay_groups(net, float(opt.weight_decay)), lr=float(opt.lr),
                                      betas=tuple(opt.betas), eps=float(opt.eps), fused=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps,
                                                               eta_min=float(cfg.scheduler.eta_min))
        return {"bare": BareLoop(net, optimizer, x, seed, args.batch_size, scheduler)}

    run_row(row, cfg, ds, args, baselines)
    return row


def bench_conv(ds: data.Dataset, args: argparse.Namespace) -> Row:
    cfg = compose(args.dataset, "model=conv", "optimizer=adam", "scheduler=none", compile_override(args.compile))
    opt = cfg.optimizer
    x = preload(ds.train.images, flat=False)
    row = Row("conv", f"conv AE ({', '.join(str(w) for w in cfg.model.widths)} channels, bottleneck "
                      f"{cfg.model.bottleneck}), Adam", args.conv_epochs, baselines=("bare",))
    row.contenders = {
        "aeexp": Contender("aeexp `loop.fit`"),
        "bare": Contender("bare eager loop, the same layers by hand, `torch.optim.Adam(fused=True)`"),
    }

    def baselines(aeexp: AeexpRun, seed: int) -> dict[str, Timed]:
        torch.manual_seed(seed)
        net = same_start(conv_network(ds.image_shape, int(cfg.model.bottleneck)), aeexp.model)
        optimizer = torch.optim.Adam(net.parameters(), lr=float(opt.lr), betas=tuple(opt.betas), eps=float(opt.eps),
                                     fused=True)
        return {"bare": BareLoop(net, optimizer, x, seed, args.batch_size)}

    run_row(row, cfg, ds, args, baselines)
    return row


# -------------------------------------------------------------------------------------------- embedding


@dataclass
class EmbedResult:
    n: int
    trust_n: int
    seconds: dict[str, list[float]] = field(default_factory=dict)
    trust: dict[str, list[float]] = field(default_factory=dict)
    knn: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)  # baseline -> aeexp's seconds / its, per repeat


EMBED_LABELS = {"sklearn": "sklearn TSNE defaults", "sklearn500": "sklearn TSNE `max_iter=500`"}


def bench_embedding(codes: np.ndarray, labels: np.ndarray, n: int, args: argparse.Namespace) -> EmbedResult:
    from sklearn.manifold import TSNE

    chosen = sampling.stratified_sample(labels, n, 0)
    codes, labels = codes[chosen].astype(np.float32), labels[chosen]
    sample = np.sort(np.random.default_rng(0).choice(len(codes), min(args.trust_n, len(codes)), replace=False))
    tsne = lists.shipped("tsne").views["tsne"]  # as a run makes it: conf/embed/tsne.yaml's settings
    methods = {
        "aeexp": lambda seed: tsne(codes=codes, seed=seed),
        "sklearn": lambda seed: TSNE(random_state=seed).fit_transform(codes),
        "sklearn500": lambda seed: TSNE(max_iter=500, random_state=seed).fit_transform(codes),
    }
    result = EmbedResult(n=len(codes), trust_n=len(sample))
    for name in methods:
        result.seconds[name], result.trust[name], result.knn[name] = [], [], []
    result.ratios = {name: [] for name in methods if name != "aeexp"}
    # First-call costs (imports, thread pools) out of the timings.
    tsne(codes=codes[:200], seed=0)
    TSNE(max_iter=250, random_state=0).fit_transform(codes[:200])
    for repeat in range(args.repeats):
        order = list(methods.items())
        if repeat % 2:
            order.reverse()
        took = {}
        for name, method in order:
            started = time.perf_counter()
            points = np.asarray(method(repeat), dtype=np.float32)
            took[name] = time.perf_counter() - started
            result.seconds[name].append(took[name])
            result.trust[name].append(metrics.trustworthiness(codes[sample], points[sample]))
            result.knn[name].append(metrics.cv_knn_accuracy(points, labels, seed=0))
            print(f"  {len(codes)} points, repeat {repeat + 1} {name}: {took[name]:.1f}s "
                  f"trust {result.trust[name][-1]:.4f} 5-NN {result.knn[name][-1]:.4f}", flush=True)
        for name in result.ratios:
            result.ratios[name].append(took["aeexp"] / took[name])
    return result


# ------------------------------------------------------------------------------------------------ report


def machine() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import openTSNE
    import sklearn

    keras = load_keras()
    return [
        f"date {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; {platform.platform()}",
        f"CPU {cpu}, {cores} cores, {mem:.0f} GiB, bf16 dot products "
        f"{'yes' if fastpath.cpu_has_bf16_products() else 'no'}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; CUDA {'yes' if torch.cuda.is_available() else 'no'}",
        f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}, openTSNE {openTSNE.__version__}"
        + (f", Keras {keras.__version__} (torch backend)" if keras else ", Keras not installed"),
    ]


def training_report(rows: list[Row], args: argparse.Namespace, ds: data.Dataset) -> list[str]:
    dense = next((row for row in rows if row.key == "dense"), None)
    epochs = sorted({row.epochs for row in rows})
    lines = [
        f"Training: {args.dataset} ({len(ds.train):,} training images), batch {args.batch_size}, BCE on logits, "
        f"{' / '.join(str(e) for e in epochs)} epochs x {args.repeats} repeats (seed = repeat). aeexp is "
        "`loop.fit` with the step `loop.make_step` chooses (its path in the table) and the optimizer and schedule "
        "`optim.build_optimizer`/`build_schedule` make from the composed config (`model=... optimizer=... "
        "scheduler=...`). Each bare loop is eager PyTorch written by hand: the same network as a plain "
        "`nn.Sequential` (Glorot-uniform init, then given aeexp's initial weights, so that both start alike), "
        "float images preloaded once, a shuffle with the same seed, `index_select` batches, "
        "`F.binary_cross_entropy_with_logits`, `loss.backward()`, `optimizer.step()`. Timed in this process and "
        "interleaved epoch by epoch: aeexp's epoch, the others' (odd epochs), the others' next epoch in the reverse "
        "order, aeexp's (even epochs). s/epoch: the median over epochs 2.. of all repeats; \"x fair baseline\": the "
        "median of paired per-epoch ratios (epochs 2..) to the row's fair baseline; the fastest-epochs column is "
        "the ratio of the fastest epochs; test BCE after the same epochs, median over repeats.",
        "",
        "- **dense ae32, Adam**: `model=ae32 model.code_norm=none optimizer=adam`, 784-128-64-32 and back (ReLUs, "
        "linear code), "
        "`torch.optim.Adam(lr=0.001, fused=True)` over `optim.parameter_groups`. Bare loops: "
        "`torch.optim.Adam(fused=True)` and `torch.optim.Adam(foreach=True)`; the fair baseline is the faster of "
        "the two in this run (by the median of their paired epoch ratios). \"Matrix products alone\": the "
        "arithmetic floor, only the epoch's float32 `torch.mm` products (per batch and Linear layer the forward, "
        "the weight-gradient and, but for the first layer, the input-gradient product, into preallocated outputs, "
        "the epoch's shapes and batch count), timed alongside; \"x floor\" is each loop's paired ratio to it "
        "(on a CPU with bf16 dot products aeexp's large layers multiply in bf16 and can go below it)."
        + (" Keras 3 (torch backend) starts from its own Glorot init." if dense and "keras" in dense.contenders
           else ""),
        "- **dense ae32, AdamW + cosine**: `model=ae32 optimizer=adamw scheduler=cosine` (AdamW lr 0.001, weight "
        "decay 0.01 on the weights and none on the biases, fused; cosine to 0 over the run, stepped every batch) "
        "against the bare loop with `torch.optim.AdamW(fused=True)` over the same two groups and "
        "`torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs x batches per epoch)` stepped every batch.",
        "- **conv AE (32, 64 channels, bottleneck 32), Adam**: `model=conv optimizer=adam` (aeexp's autograd path) "
        "against the same layers by hand (Conv2d 1->32 k3 s2 p1, ReLU, Conv2d 32->64 k3 s2 p1, ReLU, Flatten, "
        "Linear(64x7x7, 32); Linear(32, 64x7x7), ReLU, Unflatten, ConvTranspose2d 64->32 k3 s2 p1 op1, ReLU, "
        "ConvTranspose2d 32->1 k3 s2 p1 op1) with `torch.optim.Adam(fused=True)`.",
        "",
        "| row | loop | s/epoch | fastest epoch s | first epoch s | x fair baseline | x fair baseline, fastest epochs "
        "| x floor | test BCE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        base = row.baseline
        for name, contender in row.contenders.items():
            label = contender.label
            if name == "aeexp":
                label += f" ({row.path}; trainer.compile={COMPILE[args.compile]})"
            if name == base:
                label += " **fair baseline**"
            fastest = min(contender.steady) / min(row.contenders[base].steady)
            floor = fmt(row.ratios(name, row.floor)) if row.floor and name != row.floor else "-"
            lines.append(f"| {row.title}, {row.epochs} epochs | {label} | {fmt(contender.steady)} | "
                         f"{min(contender.steady):.2f} | {fmt(contender.first)} | {fmt(row.ratios(name, base))} | "
                         f"{fastest:.2f} | {floor} | {fmt(contender.test_loss, 4)} |")
    return lines


def training_targets(rows: list[Row]) -> list[tuple[str, bool]]:
    targets = []
    for row in rows:
        base = row.baseline
        ratio = median(row.ratios("aeexp", base))
        if row.key == "dense":
            both = ", ".join(f"against `{name}=True` {median(row.ratios('aeexp', name)):.3f}x"
                             for name in row.baselines)
            floor = median(row.ratios("aeexp", "floor"))
            targets.append((f"{row.title}: aeexp's epoch <= {TARGET_DENSE_RATIO}x the faster bare loop "
                            f"(`Adam({base}=True)`): {ratio:.3f}x ({both}; {floor:.2f}x its matrix products alone)",
                            ratio <= TARGET_DENSE_RATIO))
            ours, theirs = median(row.contenders["aeexp"].test_loss), median(row.contenders[base].test_loss)
            targets.append((f"{row.title}: aeexp's test BCE within {TARGET_DENSE_LOSS:.0%} of that bare loop's: "
                            f"{ours:.4f} vs {theirs:.4f}", ours <= theirs * (1 + TARGET_DENSE_LOSS)))
        elif row.key == "adamw":
            targets.append((f"{row.title}: aeexp's epoch <= {TARGET_ADAMW_RATIO}x the bare loop (`AdamW(fused=True)` "
                            f"+ `CosineAnnealingLR` per batch): {ratio:.3f}x", ratio <= TARGET_ADAMW_RATIO))
        elif row.key == "conv":
            targets.append((f"{row.title}: aeexp's epoch ({row.path}) <= {TARGET_CONV_RATIO}x the bare eager "
                            f"loop: {ratio:.3f}x", ratio <= TARGET_CONV_RATIO))
    return targets


def embedding_report(results: list[EmbedResult], args: argparse.Namespace) -> tuple[list[str], list[tuple[str, bool]]]:
    d = EmbedConfig()
    tsne = lists.compose(["embed=tsne"]).embed.views.tsne
    labels = {"aeexp": f"aeexp's `tsne` view (openTSNE, {tsne.early_exaggeration_iter}+{tsne.n_iter} iterations)",
              **EMBED_LABELS}
    sizes = " and ".join(f"{r.n:,}" for r in results)
    lines = [f"Embedding: test codes of the last dense ae32 model above -> 2-D, at {sizes} "
             f"points (a stratified sample; a run embeds {d.n_samples:,} by default), {args.repeats} repeats, the "
             "methods' order reversed every other repeat; trustworthiness k=10 on a fixed sample of at most "
             f"{args.trust_n:,} points; 5-NN accuracy 5-fold CV in 2-D; \"x\" columns: medians of per-repeat ratios "
             "of seconds. sklearn TSNE defaults: exact kNN, Barnes-Hut, `max_iter=1000`.", "",
             "| points | embedding | seconds | x sklearn defaults | x sklearn `max_iter=500` | trustworthiness "
             "| 5-NN accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for result in results:
        for name in result.seconds:
            if name == "aeexp":
                ratios = [fmt(result.ratios["sklearn"]), fmt(result.ratios["sklearn500"])]
            else:
                ratios = ["1.00" if name == "sklearn" else "-", "1.00" if name == "sklearn500" else "-"]
            lines.append(f"| {result.n:,} | {labels[name]} | {fmt(result.seconds[name], 1)} | {ratios[0]} | "
                         f"{ratios[1]} | {fmt(result.trust[name], 4)} | {fmt(result.knn[name], 4)} |")
    # The targets were set at 10,000 points; judged on the largest sample measured.
    target = max(results, key=lambda r: (r.n == TARGET_EMBED_N, r.n))
    at = f"at {target.n:,} points"
    ratio = median(target.ratios["sklearn"])
    trust_gap = median(target.trust["sklearn"]) - median(target.trust["aeexp"])
    knn_gap = median(target.knn["sklearn"]) - median(target.knn["aeexp"])
    targets = [
        (f"embedding {at} <= {TARGET_EMBED_RATIO}x sklearn TSNE defaults: {ratio:.2f}x "
         f"({median(target.ratios['sklearn500']):.2f}x `max_iter=500`)", ratio <= TARGET_EMBED_RATIO),
        (f"trustworthiness {at} within {TARGET_TRUST} of sklearn defaults: {-trust_gap:+.4f}",
         trust_gap <= TARGET_TRUST),
        (f"5-NN accuracy {at} within {TARGET_KNN * 100:.0f} point of sklearn defaults: {-knn_gap * 100:+.2f} points",
         knn_gap <= TARGET_KNN),
    ]
    return lines, targets


Section = tuple[list[str], list[tuple[str, bool]]]  # a part's lines and its targets (what, whether met)


def report(sections: list[Section], load_before: float, load_after: float) -> tuple[str, list[tuple[str, bool]]]:
    lines = [f"Machine: {m}" if i == 0 else f"  {m}" for i, m in enumerate(machine())]
    lines += [f"Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} (other processes share "
              "the cores: figures are medians, ratios are paired with a baseline timed alongside)", ""]
    targets: list[tuple[str, bool]] = []
    for more, more_targets in sections:
        lines += [*more, ""]
        targets += more_targets
    if targets:
        lines += ["| target | met |", "| --- | --- |"]
        lines += [f"| {text} | {'yes' if ok else 'NO'} |" for text, ok in targets]
    return "\n".join(lines) + "\n", targets


def write(path: Path, text: str, command: str) -> None:
    block = f"{BEGIN}\n<!-- written by `{command}`; edit outside the markers -->\n\n{text}\n{END}"
    if path.exists() and BEGIN in (old := path.read_text()) and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = f"# Benchmarks\n\n{block}\n"
    path.write_text(new)


PARTS = ["training", "adamw", "conv", "embedding", "health", "run", "folder", "digits-run", "sweep", "load"]
# --record: every part the targets name, sized to take ~15 min on an idle 2-core CPU (the folder part left
# out: it writes the training images as PNGs first). Options given after it win.
RECORD = ["--epochs", "6", "--conv-epochs", "2", "--repeats", "2", "--embed-n", "10000", "--run-epochs", "3",
          "--skip", "folder", "--no-keras"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--record", action="store_true",
                        help="the selection for BENCHMARKS.md: " + " ".join(RECORD) + " (later options win)")
    parser.add_argument("--dataset", default="fashion_mnist", help="an aeexp dataset name (default fashion_mnist)")
    parser.add_argument("--root", default="./data", help="dataset.root; Debian's Fashion-MNIST is found when empty")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per repeat of the dense rows (default 10)")
    parser.add_argument("--conv-epochs", type=int, default=3, help="epochs per repeat of the conv row (default 3)")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--train-n", type=int, default=None,
                        help="train on the first N training images only (quick checks; default all)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every part (default 3)")
    parser.add_argument("--embed-n", type=int, nargs="+", default=[3_000, 10_000],
                        help="test codes embedded, one size or more (default 3000 10000)")
    parser.add_argument("--trust-n", type=int, default=5_000, help="sample for trustworthiness (default 5000)")
    parser.add_argument("--run-epochs", type=int, default=10, help="epochs of each whole run (default 10)")
    parser.add_argument("--load", type=int, default=len(os.sched_getaffinity(0)),
                        help="competing single-threaded CPU-bound processes of the load part (default: one per "
                             "core; 0 leaves the part out)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="aeexp's trainer.compile")
    parser.add_argument("--no-keras", action="store_true", help="leave Keras out even when installed")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS,
                        help="parts to leave out (training: all three training rows; adamw, conv: that row)")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="these parts alone")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args([*RECORD, *argv] if "--record" in argv else argv)
    if args.only:
        args.skip = [part for part in PARTS if part not in args.only and not (part in ("adamw", "conv")
                                                                               and "training" in args.only)]
    if args.load <= 0:
        args.skip.append("load")
    return args


def in_process_parts(args: argparse.Namespace, ds: data.Dataset) -> list[Section]:
    """The training rows, the embedding and the latent health, timed in this process against their baselines."""
    rows: list[Row] = []
    embedding: list[EmbedResult] = []
    training = "training" not in args.skip
    if training or "embedding" not in args.skip:  # (the embedding's codes are the dense row's)
        x = preload(ds.train.images, flat=True)  # the bare dense loops' float images, shared
        print(f"training: dense ae32, Adam ({args.epochs} epochs x {args.repeats}) ...", flush=True)
        row, codes = bench_dense_adam(ds, x, args)
        rows.append(row)
        if training and "adamw" not in args.skip:
            print(f"training: dense ae32, AdamW + cosine ({args.epochs} epochs x {args.repeats}) ...", flush=True)
            rows.append(bench_dense_adamw_cosine(ds, x, args))
        del x
    if training and "conv" not in args.skip:
        print(f"training: conv AE, Adam ({args.conv_epochs} epochs x {args.repeats}) ...", flush=True)
        rows.append(bench_conv(ds, args))
    if "embedding" not in args.skip:
        for n in args.embed_n:
            print(f"embedding ({n} codes x {args.repeats}) ...", flush=True)
            embedding.append(bench_embedding(codes, ds.test.labels.numpy(), n, args))
    sections = [(training_report(rows, args, ds), training_targets(rows))] if training else []
    sections += [embedding_report(embedding, args)] if embedding else []
    if "health" not in args.skip:
        epochs = max(2, min(args.epochs, 5))
        print(f"latent health: dense ae32 with its health list each epoch ({epochs} epochs) ...", flush=True)
        sections.append(health_cost.report(health_cost.measure(ds, epochs), args.dataset))
    return sections


def process_parts(args: argparse.Namespace) -> list[Section]:
    """The parts that time other processes: whole runs and sweeps through the CLI, a folder of images, shared cores."""
    sections = []
    if "run" not in args.skip:
        print(f"whole runs ({args.run_epochs} epochs x {args.repeats}) ...", flush=True)
        root = os.path.abspath(args.root) if os.path.exists(args.root) else args.root  # (the runs' cwd: a tmp dir)
        overrides = [f"dataset={args.dataset}", f"dataset.root={root}", "dataset.download=false", "model=ae32",
                     f"trainer.epochs={args.run_epochs}", f"trainer.batch_size={args.batch_size}",
                     "trainer.progress=false"]
        runs = bench_runs.bench_runs(overrides, args.dataset, args.repeats)
        sections.append(bench_runs.whole_runs_report(runs, args.repeats, args.run_epochs))
    if "digits-run" not in args.skip:
        print(f"1-epoch digits runs (x {args.repeats}) ...", flush=True)
        runs = bench_runs.bench_runs(["dataset=digits", "trainer.epochs=1", "trainer.progress=false"], "digits",
                                     args.repeats)
        sections.append(bench_runs.digits_run_report(runs, args.repeats))
    if "sweep" not in args.skip:
        print(f"4-job digits sweeps, sequential and joblib n_jobs=2 (x {args.repeats}) ...", flush=True)
        sections.append(bench_runs.sweeps_report(bench_runs.bench_sweeps(args.repeats), args.repeats))
    if "folder" not in args.skip:
        print(f"folder of images ({args.train_n or 'all'} training images as PNGs x {args.repeats}) ...", flush=True)
        sections.append(bench_folder.folder_report(bench_folder.bench_folder(args.dataset, args.root, args.repeats,
                                                                             args.train_n)))
    if "load" not in args.skip:
        epochs = max(1, min(args.epochs - 1, 3))
        print(f"shared cores: idle and with {args.load} competing processes ({epochs} epochs x {args.repeats}) ...",
              flush=True)
        sections.append(bench_load.load_report(bench_load.bench_load(args.dataset, args.root, args.load, args.repeats,
                                                                     epochs, args.train_n)))
    return sections


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    sections = []
    if any(part not in args.skip for part in ("training", "embedding", "health")):
        sections += in_process_parts(args, load_dataset(args.dataset, args.root, args.train_n))
    sections += process_parts(args)
    text, _ = report(sections, load_before, os.getloadavg()[0])
    print()
    print(text)
    print(f"bench took {time.perf_counter() - started:.0f} s; peak RSS of the bench process "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    if not args.no_write:
        command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write(args.output, text, command.strip())
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
