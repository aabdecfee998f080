#!/usr/bin/env python
r"""What latent health costs: the per-epoch health list against a training epoch of the dense ae32 on
Fashion-MNIST (a paired ratio, measured in one process, interleaved), and the end-of-run additions (the test codes'
health, traversals.png, test_errors.npy) in seconds on its 10,000 test images.

    python scripts/health_cost.py                         # 5 epochs, all 54,000 training images (on an idle machine)
    python scripts/health_cost.py --epochs 1 --train-n 5000   # a quick check of the script itself

The issue's targets: at most 3% of an epoch, at most 2 s at the end of a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from aeexp import data, models
from aeexp.evaluation import health, lists, pictures
from aeexp.models.inference import encode_all
from aeexp.training import loop, optim


def _model(image_shape: tuple[int, ...]) -> models.Autoencoder:
    config = lists.compose(["dataset=fashion_mnist", "model=ae32"])
    return models.build(config.model, image_shape)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-n", type=int, default=None, help="training images kept (default: all)")
    args = parser.parse_args()
    dataset = data.load(data.preset("fashion_mnist", download=False))
    if args.train_n:
        dataset = dataclasses.replace(dataset, train=data.Split(dataset.train.images[:args.train_n], None))
    torch.manual_seed(0)
    model = _model(dataset.image_shape)
    optimizer = optim.build_optimizer(lists.compose(["optimizer=adamw"]).optimizer, model)
    each_epoch = health.EpochHealth(lists.shipped().health, dataset.val.images)
    epoch_seconds, health_seconds = [], []

    def after(epoch: int, values: dict[str, float]) -> None:
        started = time.perf_counter()
        each_epoch(model)
        health_seconds.append(time.perf_counter() - started)
        epoch_seconds.append(values["epoch_time"])

    loop.fit(model, dataset.train, dataset.val, epochs=args.epochs, batch_size=256, optimizer=optimizer, seed=0,
             progress=False, on_epoch_end=after)
    ratios = [h / e for h, e in zip(health_seconds, epoch_seconds, strict=True)]
    print(f"per epoch: health {statistics.median(health_seconds) * 1000:.1f} ms, epoch "
          f"{statistics.median(epoch_seconds):.2f} s: {statistics.median(ratios):.2%} of an epoch (target <= 3%)")

    started = time.perf_counter()
    codes = encode_all(model, dataset.test.images).numpy()
    encoded = time.perf_counter() - started
    subject = pictures.Subject(model, dataset, "ae32", 0)
    started = time.perf_counter()
    health.measure(lists.shipped().health, model, dataset.test.images, codes, "test", each_epoch.skips)
    for make in (*pictures.health_contents(subject, codes).values(),
                 pictures.reconstruction_contents(subject)["test_errors.npy"]):
        make()
    print(f"end of run: {time.perf_counter() - started:.2f} s on {len(dataset.test)} test images (target <= 2 s; "
          f"the test codes themselves, computed anyway: {encoded:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
