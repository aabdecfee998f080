#!/usr/bin/env python
"""Speed of aeexp against baselines measured in the same process: prints a table, writes it to BENCHMARKS.md.

    python scripts/bench.py                                                   # Fashion-MNIST, full sizes
    python scripts/bench.py --epochs 2 --repeats 1 --embed-n 2000 --run-epochs 1 --no-write   # quick check

Three parts, each a median over repeats and a ratio against a baseline timed in this process, interleaved
with it so that other load on the machine hits both alike:

1. training epochs of the seed-000 model (dense 784-128-64-32, batch 256, Adam, BCE) through ``aeexp.train.fit``
   against a bare eager PyTorch loop over preloaded float tensors (same model, same Glorot init, torch.optim.Adam)
   and against Keras 3 on the torch backend when it is installed; plus each one's test loss after the same epochs;
2. the 2-D embedding of test codes through ``aeexp.embed.embed_2d`` against ``sklearn.manifold.TSNE`` with its
   defaults: seconds, trustworthiness (k=10, on a fixed sample) and 5-NN accuracy (5-fold CV) in 2-D;
3. whole runs (``python -m aeexp ...``) against the sum of their own training and embedding parts (read back from
   MLflow), and their peak RSS. They log to an MLflow store created (migrated) before the first run, as a user's
   second run would find it; once with an empty cache (the PCA baseline computed) and once with it cached.

Only the part of BENCHMARKS.md between the two ``bench:`` markers is rewritten; the notes around it stay.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aeexp import data, embed, metrics, models, train
from aeexp.config import EmbedConfig

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
WIDTHS, BOTTLENECK, LR = [128, 64], 32, 1e-3

TARGET_TRAIN_RATIO, TARGET_TRAIN_LOSS = 0.6, 0.01
TARGET_EMBED_RATIO, TARGET_TRUST, TARGET_KNN = 0.33, 0.002, 0.01
TARGET_OVERHEAD_S, TARGET_RSS_GB = 5.0, 1.5


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# --------------------------------------------------------------------------------------------- training


class BareLoop:
    """The loop a careful engineer writes by hand: float tensors preloaded once, index batches, eager PyTorch."""

    def __init__(self, train_images: torch.Tensor, seed: int, batch_size: int) -> None:
        torch.manual_seed(seed)
        sizes = [train_images[0].numel(), *WIDTHS, BOTTLENECK, *reversed(WIDTHS), train_images[0].numel()]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i not in (len(WIDTHS), len(sizes) - 2):  # linear code, logits out
                layers.append(nn.ReLU())
        self.model = nn.Sequential(*layers)
        for layer in self.model:
            if isinstance(layer, nn.Linear):  # Glorot / zeros like aeexp and Keras: compare speed, not inits
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.x = train_images.flatten(1).float().div(255.0)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_size = batch_size

    def epoch(self) -> float:
        started = time.perf_counter()
        order = torch.randperm(len(self.x), generator=self.generator)
        total = torch.zeros(())
        for start in range(0, len(self.x), self.batch_size):
            batch = self.x[order[start:start + self.batch_size]]
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(self.model(batch), batch)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(batch)
        float(total)
        return time.perf_counter() - started

    @torch.no_grad()
    def test_loss(self, images: torch.Tensor) -> float:
        x = images.flatten(1).float().div(255.0)
        return float(F.binary_cross_entropy_with_logits(self.model(x), x))


class KerasLoop:
    """Keras 3 on the torch backend: the same layers, Glorot init, Adam and BCE on logits; ``fit`` one epoch."""

    def __init__(self, keras, train_images: torch.Tensor, seed: int, batch_size: int) -> None:
        keras.utils.set_random_seed(seed)
        dim = train_images[0].numel()
        self.keras = keras
        self.model = keras.Sequential([
            keras.Input((dim,)),
            *[keras.layers.Dense(w, activation="relu") for w in WIDTHS],
            keras.layers.Dense(BOTTLENECK),
            *[keras.layers.Dense(w, activation="relu") for w in reversed(WIDTHS)],
            keras.layers.Dense(dim),
        ])
        self.model.compile(optimizer=keras.optimizers.Adam(LR),
                           loss=keras.losses.BinaryCrossentropy(from_logits=True))
        self.x = train_images.flatten(1).float().div(255.0).numpy()
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
        x = images.flatten(1).float().div(255.0)
        logits = torch.as_tensor(np.asarray(self.model.predict(x.numpy(), batch_size=4096, verbose=0)))
        return float(F.binary_cross_entropy_with_logits(logits.float(), x))


def load_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return None
    return keras if keras.backend.backend() == "torch" else None


@dataclass
class TrainingResult:
    epochs: dict[str, list[float]] = field(default_factory=dict)  # name -> epoch seconds, all repeats, epoch >= 2
    first: dict[str, list[float]] = field(default_factory=dict)  # name -> first-epoch seconds
    ratios: dict[str, list[float]] = field(default_factory=dict)  # name -> paired ratio to bare, epoch >= 2
    test_loss: dict[str, list[float]] = field(default_factory=dict)
    codes: np.ndarray | None = None


def bench_training(ds: data.Dataset, args: argparse.Namespace) -> TrainingResult:
    keras = None if args.no_keras else load_keras()
    result = TrainingResult()
    names = ["aeexp", "bare", *(["keras"] if keras else [])]
    for name in names:
        result.epochs[name], result.first[name], result.test_loss[name] = [], [], []
        result.ratios[name] = []
    for repeat in range(args.repeats):
        seed = repeat
        baselines = {"bare": BareLoop(ds.train.images, seed, args.batch_size)}
        if keras:
            baselines["keras"] = KerasLoop(keras, ds.train.images, seed, args.batch_size)
        torch.manual_seed(seed)
        model = models.build(ds.image_shape, WIDTHS, BOTTLENECK)
        optimizer = train.make_optimizer(model, "adam", LR, 0.0)
        per_epoch: dict[str, list[float]] = {name: [] for name in names}

        def between_epochs(epoch: int, values: dict[str, float], per_epoch=per_epoch, baselines=baselines,
                           repeat=repeat) -> None:
            per_epoch["aeexp"].append(values["epoch_time"])
            order = list(baselines.items())
            if epoch % 2:
                order.reverse()
            for name, loop in order:
                per_epoch[name].append(loop.epoch())
            print(f"  repeat {repeat + 1} epoch {epoch}: "
                  + "  ".join(f"{n} {per_epoch[n][-1]:.2f}s" for n in names), flush=True)

        train.fit(model, ds.train, ds.val, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                  loss="bce", seed=seed, progress=False, on_epoch_end=between_epochs,
                  compile={"auto": None, "on": True, "off": False}[args.compile])
        for name in names:
            result.first[name].append(per_epoch[name][0])
            steady = per_epoch[name][1:] or per_epoch[name]
            result.epochs[name].extend(steady)
            bare = per_epoch["bare"][1:] or per_epoch["bare"]
            result.ratios[name].extend(a / b for a, b in zip(steady, bare, strict=True))
        result.test_loss["aeexp"].append(train.evaluate_loss(model, ds.test.images, "bce"))
        for name, loop in baselines.items():
            result.test_loss[name].append(loop.test_loss(ds.test.images))
        result.codes = train.encode_all(model, ds.test.images).numpy()
    return result


# -------------------------------------------------------------------------------------------- embedding


@dataclass
class EmbedResult:
    seconds: dict[str, list[float]] = field(default_factory=dict)
    trust: dict[str, list[float]] = field(default_factory=dict)
    knn: dict[str, list[float]] = field(default_factory=dict)
    ratios: list[float] = field(default_factory=list)
    n: int = 0
    trust_n: int = 0


def bench_embedding(codes: np.ndarray, labels: np.ndarray, args: argparse.Namespace) -> EmbedResult:
    from sklearn.manifold import TSNE

    chosen = metrics.stratified_sample(labels, args.embed_n, 0)
    codes, labels = codes[chosen].astype(np.float32), labels[chosen]
    sample = np.sort(np.random.default_rng(0).choice(len(codes), min(args.trust_n, len(codes)), replace=False))
    defaults = EmbedConfig()
    methods = {
        "aeexp": lambda seed: embed.embed_2d(codes, "tsne", defaults.perplexity, seed, n_iter=defaults.n_iter,
                                             early_exaggeration_iter=defaults.early_exaggeration_iter),
        "sklearn": lambda seed: TSNE(random_state=seed).fit_transform(codes),
    }
    result = EmbedResult(n=len(codes), trust_n=len(sample))
    for name in methods:
        result.seconds[name], result.trust[name], result.knn[name] = [], [], []
    embed.embed_2d(codes[:200], "tsne", 30.0, 0)  # imports and first-call costs out of the timings
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
            print(f"  repeat {repeat + 1} {name}: {took[name]:.1f}s trust {result.trust[name][-1]:.4f} "
                  f"5-NN {result.knn[name][-1]:.4f}", flush=True)
        result.ratios.append(took["aeexp"] / took["sklearn"])
    return result


# ---------------------------------------------------------------------------------------------- whole run


@dataclass
class RunResult:
    wall: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    embed: list[float] = field(default_factory=list)
    rss_gb: list[float] = field(default_factory=list)
    imports: list[float] = field(default_factory=list)  # a process importing what a run imports, timed alongside
    command: str = ""

    @property
    def overhead(self) -> list[float]:
        return [w - t - e for w, t, e in zip(self.wall, self.train, self.embed, strict=True)]


def top_level_imports(report: str) -> list[str]:
    """The modules a process imported at top level, in order, from ``python -X importtime``'s report (nested
    imports come with them); ``__main__`` modules left out, as importing them would run them."""
    names = []
    for line in report.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[0].strip().isdigit():
            name = fields[2]
            if name[:1] == " " and name[1:2] != " " and not name.strip().endswith("__main__"):
                names.append(name.strip())
    return names


# Imports the modules named on the command line (each as a run imported it, a failure skipped), then exits
# at once, as a run's process does.
IMPORT_ONLY = ("import importlib, os, sys\n"
               "for name in sys.argv[1:]:\n"
               "    try:\n"
               "        importlib.import_module(name)\n"
               "    except Exception:\n"
               "        pass\n"
               "sys.stdout.flush(); os._exit(0)")


# Runs the command and reports its wall time and peak RSS. A small process in between matters: Linux counts into a
# child's ru_maxrss the RSS of the process it was spawned from (vfork + exec), which would be this big bench.
MEASURE = ("import resource, subprocess, sys, time; started = time.perf_counter(); "
           "code = subprocess.call(sys.argv[1:]); "
           "print('@@bench', time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
           "file=sys.stderr); sys.exit(code)")


def measured(name: str, command: list[str], cwd: str, env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of ``command``, run under ``MEASURE``; the bench stops if it fails."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    line = [line.split() for line in done.stderr.splitlines() if line.startswith("@@bench ")][-1]
    return float(line[1]), int(line[2])


def bench_runs(args: argparse.Namespace) -> dict[str, RunResult]:
    """Whole runs, interleaved: ``"cold"`` with an empty cache (the PCA baseline is computed, as in the first run
    on a dataset and bottleneck size), ``"cached"`` with the baseline of an earlier run cached (a sweep's later
    runs, a rerun)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    results = {"cold": RunResult(), "cached": RunResult()}
    with tempfile.TemporaryDirectory(prefix="aeexp-bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        MlflowClient(uri).search_experiments()  # creates and migrates the store before the timed runs
        overrides = [f"dataset={args.dataset}", f"dataset.root={args.root}", "dataset.download=false", "model=ae32",
                     f"trainer.epochs={args.run_epochs}", f"trainer.batch_size={args.batch_size}",
                     "trainer.progress=false", f"tracking.uri={uri}"]
        command = "python -m aeexp " + " ".join(o for o in overrides if not o.startswith("tracking.uri"))
        shared_cache = f"{tmp}/cache-shared"
        # Untimed: fills the shared cache and tells which modules a run imports.
        warm_up = subprocess.run([sys.executable, "-X", "importtime", "-m", "aeexp", *overrides, "trainer.epochs=1",
                                  f"hydra.run.dir={tmp}/outputs/warm-up"], cwd=tmp, capture_output=True, text=True,
                                 check=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                                                  "AEEXP_CACHE_DIR": shared_cache})
        modules = top_level_imports(warm_up.stderr)
        for repeat in range(args.repeats):
            for kind, result in results.items():
                result.command = command
                cache = f"{tmp}/cache-{repeat}" if kind == "cold" else shared_cache
                env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "AEEXP_CACHE_DIR": cache}
                wall, peak_kib = measured("the run", [sys.executable, "-m", "aeexp", *overrides,
                                                      f"hydra.run.dir={tmp}/outputs/{kind}-{repeat}"], tmp, env)
                mlflow.set_tracking_uri(uri)
                run = MlflowClient(uri).search_runs(
                    [MlflowClient(uri).get_experiment_by_name(args.dataset).experiment_id],
                    order_by=["attributes.start_time DESC"], max_results=1)[0]
                epochs = MlflowClient(uri).get_metric_history(run.info.run_id, "epoch_time")
                result.wall.append(wall)
                result.train.append(sum(m.value for m in epochs))
                result.embed.append(run.data.metrics["embed_time"])
                result.rss_gb.append(peak_kib / 2**20)  # KiB -> GiB
                print(f"  run {repeat + 1} ({kind}): wall {wall:.1f}s training {result.train[-1]:.1f}s embedding "
                      f"{result.embed[-1]:.1f}s peak RSS {result.rss_gb[-1]:.2f} GB", flush=True)
                result.imports.append(measured("importing what a run imports", [sys.executable, "-c", IMPORT_ONLY,
                                                                               *modules], tmp, env)[0])
                print(f"  importing what a run imports ({len(modules)} modules): {result.imports[-1]:.1f}s",
                      flush=True)
    return results


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
        f"CPU {cpu}, {cores} cores, {mem:.0f} GiB; torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads; CUDA {'yes' if torch.cuda.is_available() else 'no'}",
        f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}, openTSNE {openTSNE.__version__}"
        + (f", Keras {keras.__version__} (torch backend)" if keras else ", Keras not installed"),
    ]


def fmt(values: list[float], digits: int = 2) -> str:
    return f"{median(values):.{digits}f}" if values else "-"


def report(args, ds, training, embedding, runs, load_before, load_after) -> tuple[str, list[tuple[str, bool]]]:
    lines = [f"Machine: {m}" if i == 0 else f"  {m}" for i, m in enumerate(machine())]
    lines += [f"Load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} (other processes share "
              "the cores: figures are medians, ratios are paired with a baseline timed alongside)", ""]
    targets: list[tuple[str, bool]] = []
    if training:
        bare_loss = median(training.test_loss["bare"])
        lines += [f"Training: {args.dataset}, dense 784-128-64-32, batch {args.batch_size}, Adam lr {LR}, BCE, "
                  f"{args.epochs} epochs x {args.repeats} repeats (seed = repeat); s/epoch is the median over "
                  "epochs 2.. of all repeats; ratio is the median of per-epoch ratios to the bare loop.", "",
                  "| training | s/epoch | fastest epoch s | first epoch s | x bare loop | x bare loop, fastest epochs "
                  "| test BCE after the same epochs |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        labels = {"aeexp": f"aeexp train.fit (compile={args.compile})", "bare": "bare eager PyTorch loop",
                  "keras": "Keras 3, torch backend"}
        for name in training.epochs:
            fastest = min(training.epochs[name]) / min(training.epochs["bare"])
            lines.append(f"| {labels[name]} | {fmt(training.epochs[name])} | {min(training.epochs[name]):.2f} | "
                         f"{fmt(training.first[name])} | {fmt(training.ratios[name])} | {fastest:.2f} | "
                         f"{fmt(training.test_loss[name], 4)} |")
        ratio = median(training.ratios["aeexp"])
        loss_ok = median(training.test_loss["aeexp"]) <= bare_loss * (1 + TARGET_TRAIN_LOSS)
        targets.append((f"training epoch <= {TARGET_TRAIN_RATIO}x bare loop: {ratio:.2f}x",
                        ratio <= TARGET_TRAIN_RATIO))
        targets.append((f"test BCE within {TARGET_TRAIN_LOSS:.0%} of the bare loop: "
                        f"{median(training.test_loss['aeexp']):.4f} vs {bare_loss:.4f}", loss_ok))
        lines.append("")
    if embedding:
        lines += [f"Embedding: {embedding.n} test codes of the model above -> 2-D, {args.repeats} repeats; "
                  f"trustworthiness k=10 on a fixed sample of {embedding.trust_n}; 5-NN accuracy 5-fold CV in 2-D.",
                  "", "| embedding | seconds | x sklearn | trustworthiness | 5-NN accuracy |",
                  "| --- | --- | --- | --- | --- |"]
        d = EmbedConfig()
        labels = {"aeexp": f"aeexp embed_2d (openTSNE, {d.early_exaggeration_iter}+{d.n_iter} iterations)",
                  "sklearn": "sklearn TSNE defaults"}
        for name in embedding.seconds:
            ratio = fmt(embedding.ratios) if name == "aeexp" else "1.00"
            lines.append(f"| {labels[name]} | {fmt(embedding.seconds[name], 1)} | {ratio} | "
                         f"{fmt(embedding.trust[name], 4)} | {fmt(embedding.knn[name], 4)} |")
        ratio = median(embedding.ratios)
        trust_gap = median(embedding.trust["sklearn"]) - median(embedding.trust["aeexp"])
        knn_gap = median(embedding.knn["sklearn"]) - median(embedding.knn["aeexp"])
        targets.append((f"embedding <= {TARGET_EMBED_RATIO}x sklearn: {ratio:.2f}x", ratio <= TARGET_EMBED_RATIO))
        targets.append((f"trustworthiness within {TARGET_TRUST} of sklearn: {-trust_gap:+.4f}",
                        trust_gap <= TARGET_TRUST))
        targets.append((f"5-NN accuracy within {TARGET_KNN * 100:.0f} point of sklearn: {-knn_gap * 100:+.2f} points",
                        knn_gap <= TARGET_KNN))
        lines.append("")
    if runs:
        cold = runs["cold"]
        lines += [f"Whole run: `{cold.command}`, {args.repeats} repeats of each kind, interleaved, logging to an "
                  "MLflow sqlite store that exists already (created and migrated before the first run); training and "
                  "embedding are the run's own `epoch_time` (summed) and `embed_time` metrics; the fixed overhead is "
                  "the rest (imports, data loading, final metrics and the PCA baseline, MLflow, figures, the explorer "
                  "page, model logging). \"First run\": an empty cache, the PCA baseline is computed; \"baseline "
                  "cached\": it was computed by an earlier run on the same data and bottleneck size (a sweep's "
                  "other runs, a rerun). \"Of which imports\": a process that only imports the modules a run "
                  "imports (read from `python -X importtime` of an untimed run) and exits, timed after each run; "
                  "\"after imports\" is the overhead less that.", "",
                  "| whole run | wall s | training s | embedding s | fixed overhead s | of which imports s "
                  "| after imports s | x (training + embedding) | peak RSS GB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        names = {"cold": "first run", "cached": "baseline cached"}
        for kind, result in runs.items():
            parts = [t + e for t, e in zip(result.train, result.embed, strict=True)]
            after = [o - i for o, i in zip(result.overhead, result.imports, strict=True)]
            lines.append(f"| aeexp, {args.run_epochs} epochs, {names[kind]} | {fmt(result.wall, 1)} | "
                         f"{fmt(result.train, 1)} | {fmt(result.embed, 1)} | {fmt(result.overhead, 1)} | "
                         f"{fmt(result.imports, 1)} | {fmt(after, 1)} | "
                         f"{median([w / p for w, p in zip(result.wall, parts, strict=True)]):.2f} | "
                         f"{fmt(result.rss_gb)} |")
        for kind, result in runs.items():
            targets.append((f"fixed overhead of a run ({names[kind]}) <= {TARGET_OVERHEAD_S:.0f} s: "
                            f"{median(result.overhead):.1f} s", median(result.overhead) <= TARGET_OVERHEAD_S))
        peak = max(median(result.rss_gb) for result in runs.values())
        targets.append((f"peak RSS of a run <= {TARGET_RSS_GB} GB: {peak:.2f} GB", peak <= TARGET_RSS_GB))
        lines.append("")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist", help="an aeexp dataset name (default fashion_mnist)")
    parser.add_argument("--root", default="./data", help="dataset.root; Debian's Fashion-MNIST is found when empty")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per repeat (default 10)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every part (default 3)")
    parser.add_argument("--embed-n", type=int, default=10_000, help="test codes embedded (default 10000)")
    parser.add_argument("--trust-n", type=int, default=5_000, help="sample for trustworthiness (default 5000)")
    parser.add_argument("--run-epochs", type=int, default=10, help="epochs of each whole run (default 10)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="aeexp's trainer.compile")
    parser.add_argument("--no-keras", action="store_true", help="leave Keras out even when installed")
    parser.add_argument("--skip", nargs="*", default=[], choices=["training", "embedding", "run"])
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    ds = data.load(args.dataset, args.root, False, 0.1, 0)
    training = embedding = runs = None
    if "training" not in args.skip or "embedding" not in args.skip:
        print(f"training ({args.epochs} epochs x {args.repeats}) ...", flush=True)
        training = bench_training(ds, args)
    if "embedding" not in args.skip:
        print(f"embedding ({args.embed_n} codes x {args.repeats}) ...", flush=True)
        assert training is not None and training.codes is not None
        embedding = bench_embedding(training.codes, ds.test.labels.numpy(), args)
    if "training" in args.skip:
        training = None
    if "run" not in args.skip:
        print(f"whole runs ({args.run_epochs} epochs x {args.repeats}) ...", flush=True)
        runs = bench_runs(args)
    text, _ = report(args, ds, training, embedding, runs, load_before, os.getloadavg()[0])
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
