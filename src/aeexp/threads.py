"""A job's thread budget: how many threads torch, BLAS/OpenMP, openTSNE and scikit-learn may use in this process.

One number per job, ``trainer.threads``; null means the cores this process may use (its CPU affinity, a container's or
Slurm's share; ``OMP_NUM_THREADS`` when the environment sets it lower) divided by the jobs running at once on this
machine. A launcher that runs jobs side by side says how many cores each job gets (:class:`WithShare`, around the
task function it sends to its workers); a single run and the basic launcher's jobs, one at a time, have them all.

Measured on 2 cores with other processes running (BENCHMARKS.md): at 2 threads a training step took 8-25x and a
t-SNE up to 20x its time at 1 thread, so every job takes its share and no more.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# What OpenMP, OpenBLAS, MKL, BLIS, Apple's Accelerate and numexpr read when they start (joblib's list, less numba's,
# which is read once at numba's import): set for the libraries loaded after the budget is applied.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


# OpenMP's threads, waiting for the next parallel region, sleep rather than spin (libgomp's default spins for a while):
# with other processes on the cores a spinning thread burns the time slice its partner needs to reach the region, and
# measured on 2 busy cores a dense AE's training step took 0.6-0.8 s at 2 spinning threads, 0.02-0.04 s at 2 sleeping
# ones, 0.04 s at 1. An OMP_WAIT_POLICY of the environment's own is kept.
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


def _environment_limit() -> int | None:
    """``OMP_NUM_THREADS`` as this process found it (read once, before :func:`apply` sets it), if a positive integer."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


_ENVIRONMENT_LIMIT = _environment_limit()
_launcher_share: int | None = None  # cores a launcher gave this process's current job (WithShare)
_applied: int | None = None  # the budget last applied in this process


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (a container's or Slurm's share, else all), at most
    ``OMP_NUM_THREADS`` when the environment set it when the process started."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, _ENVIRONMENT_LIMIT) if _ENVIRONMENT_LIMIT else cores


def share(jobs_at_once: int) -> int:
    """Each job's cores when ``jobs_at_once`` jobs run side by side on this machine (at least 1)."""
    return max(1, usable_cores() // max(1, jobs_at_once))


def default_budget() -> int:
    """``trainer.threads=null``: the share of the cores a launcher gave this job, else all this process may use."""
    return _launcher_share or usable_cores()


def budget(setting: int | None) -> int:
    """The threads of a job whose ``trainer.threads`` is ``setting``: an explicit value wins."""
    return int(setting) if setting else default_budget()


def apply(count: int) -> None:
    """Let this process's thread pools use ``count`` threads from now on: torch's intra-op threads, every BLAS and
    OpenMP library loaded (threadpoolctl) and, through the environment, those loaded later; openTSNE's and
    scikit-learn's ``n_jobs`` read :func:`current`; waiting OpenMP threads sleep (:func:`let_waiting_threads_sleep`).
    """
    global _applied
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    let_waiting_threads_sleep()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(count)
    threadpool_limits(limits=count)
    _applied = count


def let_waiting_threads_sleep() -> None:
    """:data:`WAIT_POLICY` for the OpenMP libraries this process loads from now on (torch's, scikit-learn's,
    openTSNE's: libgomp reads it once, when it loads); an ``OMP_WAIT_POLICY`` of the environment's own is kept."""
    os.environ.setdefault(*WAIT_POLICY)


def current() -> int:
    """The budget in force: the one last applied in this process, else the default (``n_jobs`` of openTSNE and
    scikit-learn outside a run, e.g. ``aeexp evaluate``)."""
    return _applied or default_budget()


@dataclass(frozen=True)
class WithShare:
    """A sweep job's task function, run with ``cores`` as its share of the cores (the launcher that runs jobs side by
    side wraps Hydra's task function in it; it travels to the worker process with the job)."""

    task_function: Callable[[Any], Any]
    cores: int

    def __call__(self, config: Any) -> Any:
        global _launcher_share
        _launcher_share = max(1, int(self.cores))
        try:
            return self.task_function(config)
        finally:
            _launcher_share = None
