"""Check the CUDA path by hand on a machine with a GPU (CI has none): data resident on the GPU, aeexp's autograd
path with bf16 autocast, eager and ``torch.compile``d, gives the same training losses as float32 autograd on the
CPU within 2%, for the dense and the convolutional autoencoder.

    python scripts/check_cuda.py

Models, optimizer (the shipped ``optimizer=adam``: ``torch.optim.Adam``, fused) and steps are built as a run
builds them (``models.build``, ``optim.build_optimizer``, ``loop.make_step``) from the composed config. Exit status
0: all agree; 1: a check failed; 2: no CUDA device here.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from omegaconf import DictConfig

from aeexp import data, models
from aeexp.training import loop, optim

EPOCHS, BATCH_SIZE, SEED = 3, 64, 0
RTOL = 2e-2
# Small models for the 8x8 digits: a dense 64-32-8 and a conv 8 -> 4 -> 2 with 16 and 32 channels.
MODELS = {
    "dense": ["model=ae32", "model.widths=[32]", "model.bottleneck=8"],
    "conv": ["model=conv", "model.widths=[16,32]", "model.bottleneck=8"],
}


def compose(*overrides: str) -> DictConfig:
    """aeexp's config as the command line composes it, with ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from aeexp.config import register_configs

    register_configs()
    with initialize_config_module(config_module="aeexp.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def train_losses(cfg: DictConfig, dataset: data.Dataset, device: torch.device, compile: bool, bf16: bool
                 ) -> tuple[list[float], loop.TrainingStep]:
    """Per-epoch training losses of the configured model trained on ``device``; on the CPU the float32 autograd
    step (the reference), on CUDA the step ``make_step`` chooses."""
    moved = dataset.to(device)
    torch.manual_seed(SEED)
    model = models.build(cfg.model, moved.image_shape).to(device)
    optimizer = optim.build_optimizer(cfg.optimizer, model)
    if device.type == "cpu":
        step: loop.TrainingStep = loop.AutogradStep(model, optimizer, device, compiled=False, mixed_precision=False)
    else:
        step = loop.make_step(model, optimizer, device, compile=compile, mixed_precision=bf16)
    history = loop.fit(model, moved.train, moved.val, epochs=EPOCHS, batch_size=BATCH_SIZE, optimizer=optimizer,
                       seed=SEED, step=step, progress=False)
    if any(p.device.type != device.type for p in model.parameters()):
        raise AssertionError(f"the model's parameters left {device}")
    return history.train_loss, step


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check")
        return 2
    cuda = torch.device("cuda")
    dataset = data.load(data.Digits())
    bf16 = torch.cuda.is_bf16_supported()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 supported: {bf16}")
    failed = 0
    for name, overrides in MODELS.items():
        cfg = compose("dataset=digits", *overrides, "optimizer=adam", "scheduler=none")
        reference, _ = train_losses(cfg, dataset, torch.device("cpu"), compile=False, bf16=False)
        for compile in (False, True):
            losses, step = train_losses(cfg, dataset, cuda, compile=compile, bf16=True)
            what = f"{name} on CUDA ({step.path} path, bf16 {step.bf16}, compile {compile})"
            try:
                assert step.path == "autograd", f"{what}: expected the autograd path"
                assert step.bf16 == bf16, f"{what}: expected bf16 autocast to be {'on' if bf16 else 'off'}"
                np.testing.assert_allclose(losses, reference, rtol=RTOL, err_msg=what)
            except AssertionError as err:
                print(f"FAILED {err}")
                failed += 1
                continue
            print(f"{what}: losses {np.round(losses, 4).tolist()} track the CPU's float32 "
                  f"{np.round(reference, 4).tolist()} within {RTOL:.0%}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
