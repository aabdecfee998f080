#!/usr/bin/env python
r"""A folder of images as a dataset: aeexp's first and cached load against torchvision's ImageFolder + DataLoader.

    python scripts/bench_folder.py                      # Fashion-MNIST's 60,000 training images, 3 repeats
    python scripts/bench_folder.py --n 5000 --repeats 1  # a quick check

Part of ``scripts/bench.py`` (``--skip folder`` leaves it out there). The dataset's training images are written
once as PNG files in class folders (torchvision's ImageFolder layout) into a temporary folder; every load then runs
in a fresh process (as a run would), timed from after its imports to uint8 tensors in memory:

- aeexp, first load: ``data.load(FolderDataset(folder))`` with an empty cache: list the files, read their headers,
  decode every file, write the memory-mapped cache, split;
- aeexp, cached load: the same with the cache of the first load: list the files, read the cache, split;
- torchvision ``ImageFolder(folder, loader=<PIL, grey>, transform=PILToTensor())`` iterated once by a
  ``DataLoader(batch_size=256)`` with ``num_workers=0`` and with ``num_workers=2``; the faster is the fair baseline.

The files are in the OS's page cache for every load (just written, then read again and again): this measures
decoding and bookkeeping, not the disk. Repeats are interleaved, the order reversed every other repeat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TARGET_CACHED_S = 1.0

# Each prints "@@load <seconds> <images> <peak RSS KiB>"; the clock starts after the imports.
AEEXP_LOAD = """
import resource, sys, time
from aeexp import data
from aeexp.data import FolderDataset
import torch
started = time.perf_counter()
ds = data.load(FolderDataset(sys.argv[1]))
took = time.perf_counter() - started
print("@@load", took, len(ds.train) + len(ds.val) + len(ds.test), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
IMAGEFOLDER_LOAD = """
import resource, sys, time
from PIL import Image
from aeexp.tv import torchvision
import torch
tv = torchvision()

def grey(path):
    with Image.open(path) as image:
        return image.convert("L")

started = time.perf_counter()
folder = tv.datasets.ImageFolder(sys.argv[1], loader=grey, transform=tv.transforms.PILToTensor())
loader = torch.utils.data.DataLoader(folder, batch_size=256, num_workers=int(sys.argv[2]))
n = sum(len(images) for images, _ in loader)
took = time.perf_counter() - started
print("@@load", took, n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
LOADS = {
    "aeexp, first load (empty cache)": (AEEXP_LOAD, []),
    "aeexp, cached load": (AEEXP_LOAD, []),
    "torchvision ImageFolder + DataLoader, num_workers=0": (IMAGEFOLDER_LOAD, ["0"]),
    "torchvision ImageFolder + DataLoader, num_workers=2": (IMAGEFOLDER_LOAD, ["2"]),
}
FIRST, CACHED = list(LOADS)[:2]
BASELINES = list(LOADS)[2:]
# Runs a command from a small process: Linux counts into a child's ru_maxrss the RSS of the process it was spawned
# from (vfork + exec), which would be this bench's.
THROUGH_SMALL_PROCESS = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


@dataclass
class FolderResult:
    n_images: int
    size: tuple[int, int]
    write_s: float
    seconds: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in LOADS})
    rss_gb: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in LOADS})

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    @property
    def baseline(self) -> str:
        """The faster ImageFolder loop in this run."""
        return min(BASELINES, key=self.median)


def write_pngs(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    """Grey images ``(N, 1, H, W)`` as ``folder/<label>/<i>.png``."""
    from PIL import Image

    for label in np.unique(labels):
        (folder / str(label)).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image[0]).save(folder / str(label) / f"{i:05d}.png")


def timed_load(name: str, folder: Path, cache: Path) -> tuple[float, int, float]:
    """Seconds, images and peak RSS (GB) of one load, in a fresh process."""
    code, extra = LOADS[name]
    env = {**os.environ, "AEEXP_CACHE_DIR": str(cache)}
    command = [sys.executable, "-c", THROUGH_SMALL_PROCESS, sys.executable, "-c", code, str(folder), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    line = [line.split() for line in done.stdout.splitlines() if line.startswith("@@load ")][-1]
    return float(line[1]), int(line[2]), int(line[3]) / 2**20


def bench_folder(dataset: str, root: str, repeats: int, n: int | None = None) -> FolderResult:
    """Write the training images of ``dataset`` (the first ``n``) as PNGs, then time each load ``repeats`` times."""
    from aeexp import data

    arrays = data.preset(dataset, root=root, download=False).read()
    images, labels = arrays.train_images[:n], arrays.train_labels[:n]
    with tempfile.TemporaryDirectory(prefix="aeexp-bench-folder-") as tmp:
        folder = Path(tmp) / "images"
        started = time.perf_counter()
        write_pngs(images, labels, folder)
        result = FolderResult(len(images), images.shape[2:], time.perf_counter() - started)
        print(f"  wrote {len(images)} PNGs in {result.write_s:.1f}s", flush=True)
        for repeat in range(repeats):
            cache = Path(tmp) / f"cache-{repeat}"
            order = [FIRST, CACHED, *BASELINES]  # the cached load needs the first one's cache
            if repeat % 2:
                order = [*reversed(BASELINES), FIRST, CACHED]
            for name in order:
                seconds, count, rss = timed_load(name, folder, cache)
                assert count == len(images), (name, count)
                result.seconds[name].append(seconds)
                result.rss_gb[name].append(rss)
                print(f"  {name}: {seconds:.2f}s, peak RSS {rss:.2f} GB", flush=True)
    return result


def folder_report(result: FolderResult) -> tuple[list[str], list[tuple[str, bool]]]:
    """Markdown lines of the table and the targets with whether each was met."""
    fair = result.baseline
    height, width = result.size
    lines = [f"Folder: {result.n_images:,} {height}x{width} grey PNGs (the training images) in class folders, "
             f"written in {result.write_s:.0f} s; each load in a fresh process, timed from after its imports to uint8 "
             "tensors in memory, the files in the OS page cache; medians of "
             f"{len(result.seconds[FIRST])} interleaved repeats; \"x fair baseline\": against the faster of the two "
             "ImageFolder loops in this run.", "",
             "| load | seconds | images/s | x fair baseline | peak RSS GB |", "| --- | --- | --- | --- | --- |"]
    for name in LOADS:
        seconds = result.median(name)
        marker = " **fair baseline**" if name == fair else ""
        lines.append(f"| {name}{marker} | {seconds:.2f} | {result.n_images / seconds:,.0f} | "
                     f"{seconds / result.median(fair):.2f} | {statistics.median(result.rss_gb[name]):.2f} |")
    cached = result.median(CACHED)
    return lines, [(f"cached load of the folder <= {TARGET_CACHED_S:.0f} s: {cached:.2f} s", cached <= TARGET_CACHED_S)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default="./data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="only the first N training images (default all)")
    args = parser.parse_args()
    lines, targets = folder_report(bench_folder(args.dataset, args.root, args.repeats, args.n))
    print("\n".join(lines))
    print("\n".join(f"{text}: {'yes' if ok else 'NO'}" for text, ok in targets))


if __name__ == "__main__":
    main()
