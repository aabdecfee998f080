"""What the bench's parts share about processes: timing a command (wall and peak RSS), what a process imports and
what each package of it costs (``python -X importtime``), a migrated MLflow store, and competing CPU load."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator, Sequence

# Runs the command and reports its wall time and peak RSS. A small process in between matters: Linux counts into a
# child's ru_maxrss the RSS of the process it was spawned from (vfork + exec), which would be this big bench.
MEASURE = ("import resource, subprocess, sys, time; started = time.perf_counter(); "
           "code = subprocess.call(sys.argv[1:]); "
           "print('@@bench', time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
           "file=sys.stderr); sys.exit(code)")

# Imports the modules named on the command line (each as a run imported it, a failure skipped), then exits
# at once, as a run's process does.
IMPORT_ONLY = ("import importlib, os, sys\n"
               "for name in sys.argv[1:]:\n"
               "    try:\n"
               "        importlib.import_module(name)\n"
               "    except Exception:\n"
               "        pass\n"
               "sys.stdout.flush(); os._exit(0)")

# One single-threaded CPU-bound process: what --load starts, one per core it is asked for.
SPIN = "while True:\n    pass"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt(values: Sequence[float], digits: int = 2) -> str:
    return f"{median(values):.{digits}f}" if values else "-"


def measured(name: str, command: list[str], cwd: str, env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of ``command``, run under ``MEASURE``; the bench stops if it fails."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    line = [line.split() for line in done.stderr.splitlines() if line.startswith("@@bench ")][-1]
    return float(line[1]), int(line[2])


def _import_lines(report: str) -> Iterator[tuple[int, str]]:
    """(self microseconds, the name as indented) of each line of ``python -X importtime``'s report."""
    for line in report.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[0].strip().isdigit():
            yield int(fields[0]), fields[2]


def top_level_imports(report: str) -> list[str]:
    """The modules a process imported at top level, in order, from ``python -X importtime``'s report (nested
    imports come with them); ``__main__`` modules left out, as importing them would run them."""
    return [name.strip() for _, name in _import_lines(report)
            if name[:1] == " " and name[1:2] != " " and not name.strip().endswith("__main__")]


def imports_by_package(report: str) -> list[tuple[str, int, float]]:
    """(package, modules, seconds) for each top-level package a process imported, the most costly first: the self
    times of its modules summed (the cost of each module counted once, in the package it belongs to)."""
    seconds: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    for micros, name in _import_lines(report):
        package = name.strip().split(".")[0]
        seconds[package] += micros / 1e6
        modules[package] += 1
    return [(package, modules[package], total) for package, total in seconds.most_common()]


def run_environment(cache: str) -> dict[str, str]:
    """The environment of a timed ``python -m aeexp``: this one, MLflow's telemetry off, its own cache folder."""
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "AEEXP_CACHE_DIR": cache}


def migrated_store(folder: str) -> str:
    """An MLflow sqlite store in ``folder``, created and migrated (as a user's second run finds it); its URI."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder}/mlflow.db"
    MlflowClient(uri).search_experiments()
    return uri


@contextlib.contextmanager
def competing_load(processes: int) -> Iterator[list[int]]:
    """``processes`` single-threaded CPU-bound processes running for the block (their pids); stopped after it."""
    started = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for _ in range(processes)]
    try:
        yield [process.pid for process in started]
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
