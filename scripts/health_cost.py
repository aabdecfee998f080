#!/usr/bin/env python
r"""What latent health costs: the per-epoch health list against a training epoch of the dense ae32 on
Fashion-MNIST (a paired ratio: each epoch's health against that epoch, measured in one process), and the end-of-run
additions (the test codes' health, traversals.png, test_errors.npy) in seconds on its 10,000 test images.
``scripts/bench.py`` runs it as its ``health`` part; it also runs alone:

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

TARGET_EPOCH_SHARE, TARGET_END_SECONDS = 0.03, 2.0


@dataclasses.dataclass(frozen=True)
class HealthCost:
    """Per-epoch seconds of the health list and of the epoch itself, and the end-of-run additions."""

    health_seconds: list[float]
    epoch_seconds: list[float]
    end_seconds: float
    encode_seconds: float
    test_images: int

    @property
    def epoch_share(self) -> float:
        return statistics.median(h / e for h, e in zip(self.health_seconds, self.epoch_seconds, strict=True))


def _model(image_shape: tuple[int, ...]) -> models.Autoencoder:
    config = lists.compose(["dataset=fashion_mnist", "model=ae32"])
    return models.build(config.model, image_shape)


def measure(dataset: data.Dataset, epochs: int) -> HealthCost:
    """Train a dense ae32 ``epochs`` epochs with the health list measured after each, then time the end of run."""
    torch.manual_seed(0)
    model = _model(dataset.image_shape)
    optimizer = optim.build_optimizer(lists.compose(["optimizer=adamw"]).optimizer, model)
    shipped_health = lists.shipped().health
    each_epoch = health.EpochHealth(shipped_health, dataset.val.images)
    epoch_seconds, health_seconds = [], []

    def after(epoch: int, values: dict[str, float]) -> None:
        started = time.perf_counter()
        each_epoch(model)
        health_seconds.append(time.perf_counter() - started)
        epoch_seconds.append(values["epoch_time"])

    loop.fit(model, dataset.train, dataset.val, epochs=epochs, batch_size=256, optimizer=optimizer, seed=0,
             progress=False, on_epoch_end=after)
    started = time.perf_counter()
    codes = encode_all(model, dataset.test.images).numpy()
    encoded = time.perf_counter() - started
    subject = pictures.Subject(model, dataset, "ae32", 0)
    started = time.perf_counter()
    health.measure(shipped_health, model, dataset.test.images, codes, "test", each_epoch.skips)
    for make in (*pictures.health_contents(subject, codes).values(),
                 pictures.reconstruction_contents(subject)["test_errors.npy"]):
        make()
    return HealthCost(health_seconds, epoch_seconds, time.perf_counter() - started, encoded, len(dataset.test))


def report(cost: HealthCost, dataset: str = "fashion_mnist") -> tuple[list[str], list[tuple[str, bool]]]:
    """The bench's section: its lines and its targets."""
    lines = [f"Latent health (dense ae32, {dataset}; the health list after each epoch, on the first "
             f"{health.EPOCH_IMAGES:,} validation images):",
             f"- per epoch: {statistics.median(cost.health_seconds) * 1000:.1f} ms against an epoch of "
             f"{statistics.median(cost.epoch_seconds):.2f} s: {cost.epoch_share:.2%} of an epoch",
             f"- end of run (the test codes' health, traversals and the other health figures, test_errors.npy): "
             f"{cost.end_seconds:.2f} s on {cost.test_images:,} test images (the test codes themselves, computed "
             f"anyway: {cost.encode_seconds:.2f} s)"]
    targets = [(f"latent health per epoch <= {TARGET_EPOCH_SHARE:.0%} of an ae32 epoch "
                f"({cost.epoch_share:.2%})", cost.epoch_share <= TARGET_EPOCH_SHARE),
               (f"end-of-run health additions <= {TARGET_END_SECONDS:.0f} s ({cost.end_seconds:.2f} s)",
                cost.end_seconds <= TARGET_END_SECONDS)]
    return lines, targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-n", type=int, default=None, help="training images kept (default: all)")
    parser.add_argument("--root", default="./data", help="dataset.root; Debian's Fashion-MNIST is found when empty")
    args = parser.parse_args()
    import bench  # scripts/, beside this file: the dataset as its rows load it

    lines, targets = report(measure(bench.load_dataset("fashion_mnist", args.root, args.train_n), args.epochs))
    print("\n".join(lines))
    for text, ok in targets:
        print(f"{'met' if ok else 'NOT MET'}: {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
