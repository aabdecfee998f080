#!/usr/bin/env python
r"""aeexp on shared cores: its training epoch and its t-SNE idle and with competing processes, beside a bare loop.

    python scripts/bench_load.py                    # --load 2 on a 2-core machine: one spinning process per core
    python scripts/bench_load.py --repeats 1 --epochs 1 --train-n 5000   # a quick check

Part of ``scripts/bench.py`` (``--load 0`` leaves it out there). Each measurement runs in a fresh process, as a user
starts one:

- aeexp: the process sets its thread budget first, as ``python -m aeexp`` does (``threads.apply`` of
  ``trainer.threads``' default: this machine's cores, no sweep sharing them; waiting OpenMP threads sleep), then
  trains the dense row's network (``model=ae32 model.code_norm=none optimizer=adam``) with ``loop.fit`` and embeds
  3,000 of its test codes with aeexp's t-SNE view (``conf/embed/tsne.yaml``'s settings);
- a bare eager loop with ``torch.optim.Adam(fused=True)`` at torch's defaults (its threads: all cores; OpenMP's
  waiting threads spin for a while, libgomp's default), the same network.

Each is timed idle and with ``--load`` single-threaded CPU-bound processes (``while True: pass``) running, started
by this script and stopped after each loaded measurement. Epoch figures are the median epoch after a first one left
out; "loaded / idle" is the median over repeats of each repeat's ratio. Repeats alternate the order of idle and
loaded, and of the two processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench_process import competing_load, fmt, median

TARGET_LOADED_RATIO = 3.0  # loaded / idle, aeexp's epoch and its t-SNE, with one competing process per core
TSNE_POINTS = 3_000
HERE = Path(__file__).resolve()


@dataclass
class LoadResult:
    processes: int
    epochs: int
    threads: int = 0  # aeexp's budget
    bare_threads: int = 0  # torch's default
    seconds: dict[str, list[float]] = field(default_factory=dict)  # "<what> <idle|loaded>" -> one per repeat


def _child_aeexp(args: argparse.Namespace) -> dict[str, float | list[float]]:
    """In a fresh process: aeexp's budget applied first, as the CLI does; then its epochs and its t-SNE."""
    from aeexp import threads

    threads.apply(threads.budget(None))
    import bench  # (torch and the rest only now)
    import numpy as np

    from aeexp.data import sampling
    from aeexp.evaluation import lists
    from aeexp.models import inference
    from aeexp.training import loop

    ds = bench.load_dataset(args.dataset, args.root, args.train_n)
    aeexp = bench.build_aeexp(bench.dense_config(args.dataset), ds, 0, args.epochs + 1, bench.BATCH)
    times: list[float] = []
    loop.fit(aeexp.model, ds.train, ds.val, epochs=args.epochs + 1, batch_size=bench.BATCH, optimizer=aeexp.optimizer,
             seed=0, schedule=aeexp.schedule, step=aeexp.step, progress=False,
             on_epoch_end=lambda epoch, values: times.append(values["epoch_time"]))
    codes = inference.encode_all(aeexp.model, ds.test.images).numpy()
    codes = codes[sampling.stratified_sample(ds.test.labels.numpy(), TSNE_POINTS, 0)].astype(np.float32)
    tsne = lists.shipped("tsne").views["tsne"]  # as a run makes it: conf/embed/tsne.yaml's settings
    tsne(codes=codes[:200], seed=0)  # first-call costs out of the timing
    started = bench.time.perf_counter()
    tsne(codes=codes, seed=0)
    return {"epochs": times[1:], "tsne": bench.time.perf_counter() - started, "threads": threads.current()}


def _child_bare(args: argparse.Namespace) -> dict[str, float | list[float]]:
    """In a fresh process at torch's defaults: the bare fused-Adam loop's epochs."""
    import bench
    import torch

    ds = bench.load_dataset(args.dataset, args.root, args.train_n)
    cfg = bench.dense_config(args.dataset)
    torch.manual_seed(0)
    net = bench.dense_network(ds.input_dim, list(cfg.model.widths), int(cfg.model.bottleneck))
    optimizer = torch.optim.Adam(net.parameters(), lr=float(cfg.optimizer.lr), fused=True)
    timed = bench.BareLoop(net, optimizer, bench.preload(ds.train.images, flat=True), 0, bench.BATCH)
    times = [timed.epoch() for _ in range(args.epochs + 1)]
    return {"epochs": times[1:], "threads": torch.get_num_threads()}


def _measure(who: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(HERE), "--child", who, "--dataset", args.dataset, "--root", args.root,
               "--epochs", str(args.epochs), *(["--train-n", str(args.train_n)] if args.train_n else [])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env=dict(os.environ))
    lines = [line for line in done.stdout.splitlines() if line.startswith("@@load ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"the {who} process failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("@@load "))


def bench_load(dataset: str, root: str, processes: int, repeats: int, epochs: int, train_n: int | None
               ) -> LoadResult:
    """aeexp's and the bare loop's epochs, and aeexp's t-SNE, idle and with ``processes`` competing processes."""
    # The children run in scripts/ (to import bench): the root made absolute.
    args = argparse.Namespace(dataset=dataset, root=os.path.abspath(root), epochs=epochs, train_n=train_n)
    result = LoadResult(processes, epochs)
    for repeat in range(repeats):
        for phase in (["idle", "loaded"] if repeat % 2 == 0 else ["loaded", "idle"]):
            who_first = ["aeexp", "bare"] if repeat % 2 == 0 else ["bare", "aeexp"]
            with competing_load(processes if phase == "loaded" else 0):
                measured = {who: _measure(who, args) for who in who_first}
            aeexp, bare = measured["aeexp"], measured["bare"]
            result.threads, result.bare_threads = int(aeexp["threads"]), int(bare["threads"])
            for key, value in (("aeexp", median(aeexp["epochs"])), ("bare", median(bare["epochs"])),
                               ("tsne", aeexp["tsne"])):
                result.seconds.setdefault(f"{key} {phase}", []).append(float(value))
            print(f"  load {repeat + 1} ({phase}): aeexp epoch {median(aeexp['epochs']):.2f}s, bare epoch "
                  f"{median(bare['epochs']):.2f}s, aeexp t-SNE {aeexp['tsne']:.1f}s", flush=True)
    return result


def ratios(result: LoadResult, key: str) -> list[float]:
    """Per repeat, loaded over idle."""
    return [b / a for a, b in zip(result.seconds[f"{key} idle"], result.seconds[f"{key} loaded"], strict=True)]


def load_report(result: LoadResult) -> tuple[list[str], list[tuple[str, bool]]]:
    n = result.processes
    labels = {"aeexp": f"aeexp's dense epoch ({result.threads} threads: `trainer.threads` null; waiting threads "
                       "sleep)",
              "bare": f"bare eager loop's epoch, `Adam(fused=True)`, torch's defaults ({result.bare_threads} threads)",
              "tsne": f"aeexp's t-SNE of {TSNE_POINTS:,} codes ({result.threads} threads)"}
    lines = [f"Shared cores: each measured in a fresh process idle and with {n} competing single-threaded CPU-bound "
             f"process{'es' if n != 1 else ''} (started by the bench), {len(result.seconds['aeexp idle'])} repeats; "
             "aeexp sets its thread budget first, as `python -m aeexp` does; the bare loop runs at torch's defaults. "
             f"The dense row's network; epochs: the median of {result.epochs} after a first one left out.", "",
             f"| measured | idle s | with {n} competing processes s | loaded / idle |", "| --- | --- | --- | --- |"]
    for key, label in labels.items():
        lines.append(f"| {label} | {fmt(result.seconds[f'{key} idle'])} | {fmt(result.seconds[f'{key} loaded'])} | "
                     f"{fmt(ratios(result, key))} |")
    idle = [a / b for a, b in zip(result.seconds["aeexp idle"], result.seconds["bare idle"], strict=True)]
    lines += ["", f"Idle, aeexp's epoch was {fmt(idle)}x the bare loop's (separate processes, not interleaved)."]
    bare = f" (the bare loop's epoch: {median(ratios(result, 'bare')):.2f}x)"
    targets = [(f"with {n} competing processes, {what} <= {TARGET_LOADED_RATIO:.0f}x its idle time: "
                f"{median(ratios(result, key)):.2f}x{bare if key == 'aeexp' else ''}",
                median(ratios(result, key)) <= TARGET_LOADED_RATIO)
               for key, what in (("aeexp", "aeexp's dense epoch"), ("tsne", f"t-SNE of {TSNE_POINTS:,} codes"))]
    return lines, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default="./data")
    parser.add_argument("--load", type=int, default=len(os.sched_getaffinity(0)),
                        help="competing processes (default: one per core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed after the first (default 3)")
    parser.add_argument("--train-n", type=int, default=None)
    parser.add_argument("--child", choices=["aeexp", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("@@load " + json.dumps((_child_aeexp if args.child == "aeexp" else _child_bare)(args)), flush=True)
        return
    lines, targets = load_report(bench_load(args.dataset, args.root, args.load, args.repeats, args.epochs,
                                            args.train_n))
    print("\n".join([*lines, "", *(f"| {text} | {'yes' if ok else 'NO'} |" for text, ok in targets)]))


if __name__ == "__main__":
    main()
