#!/usr/bin/env python
r"""Whole runs and sweeps through the command line, as a user starts them: wall time against their own training and
embedding, what their imports cost, and what running a sweep's jobs side by side gains.

    python scripts/bench_runs.py                 # the 1-epoch digits run and the 4-job digits sweeps, 3 repeats
    python scripts/bench_runs.py --repeats 1     # a quick check

Part of ``scripts/bench.py`` (``--skip digits-run sweep`` leaves these out there). Every run logs to an MLflow sqlite
store made and migrated beforehand (as a user's second run finds it); training and embedding are each run's own
``epoch_time`` (summed) and ``embed_time`` metrics, read back from MLflow. Repeats are interleaved, the order of the
kinds reversed every other repeat.

- Runs (``bench_runs``): each kind once per repeat, "first run" with an empty cache (the PCA baseline is computed)
  and "baseline cached"; after each, a process that only imports the modules a run imports (read from
  ``python -X importtime`` of an untimed run) and exits, timed: the run's imports. The same untimed run gives the
  import table: the self time of every module, summed by package.
- Sweeps (``bench_sweeps``): ``-m model.bottleneck=2,4,8,16 trainer.epochs=3`` on the digits with the default
  launcher (one job after another in one process) and with ``hydra/launcher=joblib hydra.launcher.n_jobs=2``, and
  the same command with one job (``model.bottleneck=2``), each with an empty cache. Jobs per minute, the parallel
  sweep's wall time over the sequential one's, the worker processes that ran the jobs (their ``sweep.pid`` tags),
  and the cost of each job beyond the first in the sequential sweep beyond its own training and embedding:
  ``(4-job wall - 1-job wall - the other 3 jobs' training and embedding) / 3``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from bench_process import (
    IMPORT_ONLY,
    fmt,
    imports_by_package,
    measured,
    median,
    migrated_store,
    run_environment,
    top_level_imports,
)

TARGET_OVERHEAD_S, TARGET_RSS_GB = 5.0, 1.5  # a whole Fashion-MNIST run
TARGET_DIGITS_RUN_S = 6.0  # a 1-epoch digits run, wall
TARGET_PARALLEL_RATIO = 0.65  # the joblib sweep's wall over the sequential one's
TARGET_JOB_OVERHEAD_S = 3.0  # each extra job of the sequential sweep, beyond its training and embedding
SWEEP = ["dataset=digits", "model.bottleneck=2,4,8,16", "trainer.epochs=3", "trainer.progress=false"]
PARALLEL = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
IMPORT_TABLE_ROWS = 14
Targets = list[tuple[str, bool]]  # (what was measured against what, whether it was met)


@dataclass
class RunResult:
    wall: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    embed: list[float] = field(default_factory=list)
    rss_gb: list[float] = field(default_factory=list)
    imports: list[float] = field(default_factory=list)  # a process importing what a run imports, timed alongside
    command: str = ""
    packages: list[tuple[str, int, float]] = field(default_factory=list)  # the untimed run's imports by package

    @property
    def overhead(self) -> list[float]:
        return [w - t - e for w, t, e in zip(self.wall, self.train, self.embed, strict=True)]


def _latest_run_parts(uri: str, experiment: str) -> tuple[float, float]:
    """Training (``epoch_time`` summed) and embedding seconds of the latest run of ``experiment``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    epochs = client.get_metric_history(run.info.run_id, "epoch_time")
    return sum(m.value for m in epochs), run.data.metrics["embed_time"]


def bench_runs(overrides: list[str], experiment: str, repeats: int) -> dict[str, RunResult]:
    """``python -m aeexp <overrides>`` runs, interleaved: ``"cold"`` with an empty cache (the PCA baseline is
    computed, as in the first run on a dataset and bottleneck size), ``"cached"`` with the baseline of an earlier run
    cached (a sweep's later runs, a rerun); ``experiment`` is the one they log to."""
    results = {"cold": RunResult(), "cached": RunResult()}
    with tempfile.TemporaryDirectory(prefix="aeexp-bench-") as tmp:
        uri = migrated_store(tmp)
        command = "python -m aeexp " + " ".join(overrides)
        overrides = [*overrides, f"tracking.uri={uri}"]
        shared_cache = f"{tmp}/cache-shared"
        # Untimed (one epoch): fills the shared cache and tells which modules a run imports and what they cost.
        warm_up = _run([*overrides, "trainer.epochs=1"], f"{tmp}/outputs/warm-up", tmp, run_environment(shared_cache),
                       "-X", "importtime")
        modules = top_level_imports(warm_up)
        for repeat in range(repeats):
            for kind in (["cold", "cached"] if repeat % 2 == 0 else ["cached", "cold"]):
                result = results[kind]
                result.command, result.packages = command, imports_by_package(warm_up)
                env = run_environment(f"{tmp}/cache-{repeat}" if kind == "cold" else shared_cache)
                wall, peak_kib = measured("the run", [sys.executable, "-m", "aeexp", *overrides,
                                                      f"hydra.run.dir={tmp}/outputs/{kind}-{repeat}"], tmp, env)
                train, embed = _latest_run_parts(uri, experiment)
                result.wall.append(wall)
                result.train.append(train)
                result.embed.append(embed)
                result.rss_gb.append(peak_kib / 2**20)  # KiB -> GiB
                print(f"  run {repeat + 1} ({kind}): wall {wall:.1f}s training {train:.1f}s embedding {embed:.1f}s "
                      f"peak RSS {result.rss_gb[-1]:.2f} GB", flush=True)
                result.imports.append(measured("importing what a run imports", [sys.executable, "-c", IMPORT_ONLY,
                                                                               *modules], tmp, env)[0])
                print(f"  importing what a run imports ({len(modules)} modules): {result.imports[-1]:.1f}s",
                      flush=True)
    return results


def _run(overrides: list[str], run_dir: str, cwd: str, env: dict[str, str], *python_options: str) -> str:
    """``python [options] -m aeexp <overrides>``, untimed; its standard error (Python's -X importtime report)."""
    done = subprocess.run([sys.executable, *python_options, "-m", "aeexp", *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"the untimed run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stderr


def runs_table(runs: dict[str, RunResult], label: str) -> list[str]:
    names = {"cold": "first run", "cached": "baseline cached"}
    lines = ["| whole run | wall s | training s | embedding s | fixed overhead s | of which imports s "
             "| after imports s | x (training + embedding) | peak RSS GB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, result in runs.items():
        parts = [t + e for t, e in zip(result.train, result.embed, strict=True)]
        after = [o - i for o, i in zip(result.overhead, result.imports, strict=True)]
        lines.append(f"| {label}, {names[kind]} | {fmt(result.wall, 1)} | {fmt(result.train, 1)} | "
                     f"{fmt(result.embed, 1)} | {fmt(result.overhead, 1)} | {fmt(result.imports, 1)} | "
                     f"{fmt(after, 1)} | {median([w / p for w, p in zip(result.wall, parts, strict=True)]):.2f} | "
                     f"{fmt(result.rss_gb)} |")
    return lines


RUNS_TEXT = ("{repeats} repeats of each kind, interleaved, logging to an MLflow sqlite store that exists already "
             "(created and migrated before the first run); training and embedding are the run's own `epoch_time` "
             "(summed) and `embed_time` metrics; the fixed overhead is the rest (imports, data loading, final metrics "
             "and the PCA baseline, MLflow, figures, the explorer page, model logging). \"First run\": an empty "
             "cache, the PCA baseline is computed; \"baseline cached\": it was computed by an earlier run on the same "
             "data and bottleneck size (a sweep's other runs, a rerun). \"Of which imports\": a process that only "
             "imports the modules a run imports (read from `python -X importtime` of an untimed run) and exits, timed "
             "after each run; \"after imports\" is the overhead less that.")


def whole_runs_report(runs: dict[str, RunResult], repeats: int, epochs: int) -> tuple[list[str], Targets]:
    """The Fashion-MNIST whole runs (``bench.py``'s ``run`` part) and their targets."""
    lines = [f"Whole run: `{runs['cold'].command}`, " + RUNS_TEXT.format(repeats=repeats), "",
             *runs_table(runs, f"aeexp, {epochs} epochs")]
    names = {"cold": "first run", "cached": "baseline cached"}
    targets = [(f"fixed overhead of a run ({names[kind]}) <= {TARGET_OVERHEAD_S:.0f} s: "
                f"{median(result.overhead):.1f} s", median(result.overhead) <= TARGET_OVERHEAD_S)
               for kind, result in runs.items()]
    peak = max(median(result.rss_gb) for result in runs.values())
    targets.append((f"peak RSS of a run <= {TARGET_RSS_GB} GB: {peak:.2f} GB", peak <= TARGET_RSS_GB))
    return lines, targets


def import_table(packages: list[tuple[str, int, float]], command: str) -> list[str]:
    """What a run's imports cost, by package (the most costly first, the rest summed in one row)."""
    total = sum(seconds for _, _, seconds in packages)
    lines = [f"Imports of `{command}`, from `python -X importtime` of an untimed run (its own overhead included): "
             "the self time of every module imported, summed by top-level package, so that each module counts once "
             f"whoever imported it first; {sum(n for _, n, _ in packages):,} modules, {total:.2f} s in all.", "",
             "| package | modules | seconds | share |", "| --- | --- | --- | --- |"]
    shown, rest = packages[:IMPORT_TABLE_ROWS], packages[IMPORT_TABLE_ROWS:]
    for package, modules, seconds in shown:
        lines.append(f"| {package} | {modules} | {seconds:.2f} | {seconds / total:.0%} |")
    if rest:
        seconds = sum(s for _, _, s in rest)
        lines.append(f"| {len(rest)} others | {sum(n for _, n, _ in rest)} | {seconds:.2f} | {seconds / total:.0%} |")
    return lines


def digits_run_report(runs: dict[str, RunResult], repeats: int) -> tuple[list[str], Targets]:
    """The 1-epoch digits run, its import table and its targets."""
    command = runs["cold"].command
    lines = [f"A short run: `{command}` (the digits, 1 epoch), " + RUNS_TEXT.format(repeats=repeats), "",
             *runs_table(runs, "aeexp, digits, 1 epoch"), "", *import_table(runs["cold"].packages, command)]
    names = {"cold": "first run", "cached": "baseline cached"}
    targets = [(f"a 1-epoch digits run ({names[kind]}) <= {TARGET_DIGITS_RUN_S:.0f} s wall, imports included: "
                f"{median(result.wall):.1f} s", median(result.wall) <= TARGET_DIGITS_RUN_S)
               for kind, result in runs.items()]
    return lines, targets


@dataclass
class SweepRuns:
    """One kind of sweep, per repeat: its wall time, its jobs' training + embedding (by bottleneck), the worker
    processes that ran them and the threads each job had."""

    wall: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)

    def jobs_per_minute(self) -> list[float]:
        return [60.0 * len(parts) / wall for wall, parts in zip(self.wall, self.parts, strict=True)]


SWEEP_KINDS = {  # kind -> (label, extra overrides)
    "sequential": ("4 jobs, default launcher (one after another, one process)", []),
    "joblib": ("4 jobs, `hydra/launcher=joblib hydra.launcher.n_jobs=2`", PARALLEL),
    "one": ("1 job (`model.bottleneck=2`), default launcher", ["model.bottleneck=2"]),
}


def _children(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def sweep_overrides(kind: str) -> list[str]:
    """The sweep's overrides and ``kind``'s own; a key both give takes ``kind``'s value."""
    extra = SWEEP_KINDS[kind][1]
    keys = {override.split("=", 1)[0] for override in extra}
    return [override for override in SWEEP if override.split("=", 1)[0] not in keys] + extra


def _sweep_once(kind: str, repeat: int, tmp: str, uri: str) -> tuple[float, list]:
    """One timed sweep of ``kind`` with an empty cache; its wall time and its child runs."""
    experiment = f"bench-{kind}-{repeat}"
    overrides = ["-m", *sweep_overrides(kind), f"tracking.uri={uri}", f"tracking.experiment={experiment}",
                 f"hydra.sweep.dir={tmp}/multirun/{experiment}"]
    wall, _ = measured(f"the {kind} sweep", [sys.executable, "-m", "aeexp", *overrides], tmp,
                       run_environment(f"{tmp}/cache-{experiment}"))
    return wall, _children(uri, experiment)


def bench_sweeps(repeats: int) -> dict[str, SweepRuns]:
    """The 4-job digits sweep sequentially and with joblib's 2 workers, and its 1-job twin, interleaved."""
    results = {kind: SweepRuns() for kind in SWEEP_KINDS}
    with tempfile.TemporaryDirectory(prefix="aeexp-bench-sweeps-") as tmp:
        uri = migrated_store(tmp)
        for repeat in range(repeats):
            for kind in (list(SWEEP_KINDS) if repeat % 2 == 0 else list(reversed(SWEEP_KINDS))):
                wall, children = _sweep_once(kind, repeat, tmp, uri)
                result = results[kind]
                result.wall.append(wall)
                result.parts.append({c.data.params["model.bottleneck"]: sum(
                    m.value for m in _history(uri, c.info.run_id)) + c.data.metrics["embed_time"] for c in children})
                result.workers.append(len({c.data.tags["sweep.pid"] for c in children}))
                result.threads.append(",".join(sorted({c.data.tags.get("threads", "?") for c in children})))
                print(f"  sweep {repeat + 1} ({kind}): wall {wall:.1f}s, {len(children)} jobs, training + embedding "
                      f"{sum(result.parts[-1].values()):.1f}s, {result.workers[-1]} worker processes, threads "
                      f"{result.threads[-1]}", flush=True)
    return results


def _history(uri: str, run_id: str) -> list:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_metric_history(run_id, "epoch_time")


def job_overheads(sweeps: dict[str, SweepRuns]) -> list[float]:
    """Per repeat: each job beyond the first of the sequential sweep, beyond its own training and embedding."""
    overheads = []
    for four, one, parts in zip(sweeps["sequential"].wall, sweeps["one"].wall, sweeps["sequential"].parts,
                                strict=True):
        extra = [seconds for bottleneck, seconds in parts.items() if bottleneck != "2"]
        overheads.append((four - one - sum(extra)) / len(extra))
    return overheads


def sweeps_report(sweeps: dict[str, SweepRuns], repeats: int) -> tuple[list[str], Targets]:
    sequential = sweeps["sequential"]
    lines = [f"Sweeps: `python -m aeexp -m {' '.join(SWEEP)}` on the digits, {repeats} repeats of each kind, "
             "interleaved, each with an empty cache, logging to an MLflow sqlite store that exists already; wall time "
             "of the whole command (the parent run, every job, the comparison report); \"x sequential\": median of the "
             "per-repeat ratios to the 4-job sweep on the default launcher; workers: the processes that ran the jobs "
             "(their `sweep.pid` tags); threads: each job's tag `threads`.", "",
             "| sweep | wall s | jobs per minute | x sequential | training + embedding s | worker processes | "
             "threads per job |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for kind, (label, _) in SWEEP_KINDS.items():
        result = sweeps[kind]
        ratio = fmt([w / s for w, s in zip(result.wall, sequential.wall, strict=True)]) if kind != "one" else "-"
        lines.append(f"| {label} | {fmt(result.wall, 1)} | {fmt(result.jobs_per_minute(), 1)} | {ratio} | "
                     f"{fmt([sum(p.values()) for p in result.parts], 1)} | {median(result.workers):.0f} | "
                     f"{'/'.join(sorted(set(result.threads)))} |")
    overhead = job_overheads(sweeps)
    lines += ["", f"Each job beyond the first of the sequential 4-job sweep took {fmt(overhead, 1)} s beyond its own "
              "training and embedding (median over repeats of (4-job wall - 1-job wall - the other jobs' training and "
              "embedding) / 3: Hydra's job set-up, the data, the model, the final metrics and the PCA baseline, the "
              "figures, the explorer page, MLflow, and its share of the report)."]
    ratio = median([p / s for p, s in zip(sweeps["joblib"].wall, sequential.wall, strict=True)])
    targets = [(f"4-job digits sweep with joblib n_jobs=2 <= {TARGET_PARALLEL_RATIO}x the sequential one's wall time: "
                f"{ratio:.2f}x ({1 / ratio:.2f}x the jobs per minute)", ratio <= TARGET_PARALLEL_RATIO),
               (f"each extra job of the sequential sweep <= {TARGET_JOB_OVERHEAD_S:.0f} s beyond its training and "
                f"embedding: {median(overhead):.1f} s", median(overhead) <= TARGET_JOB_OVERHEAD_S)]
    return lines, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = bench_runs(["trainer.epochs=1", "trainer.progress=false"], "digits", args.repeats)
    sweeps = bench_sweeps(args.repeats)
    lines, targets = digits_run_report(runs, args.repeats)
    more, more_targets = sweeps_report(sweeps, args.repeats)
    print("\n".join([*lines, "", *more, "", "| target | met |", "| --- | --- |",
                     *(f"| {text} | {'yes' if ok else 'NO'} |" for text, ok in targets + more_targets)]))


if __name__ == "__main__":
    main()
