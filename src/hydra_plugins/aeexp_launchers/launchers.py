"""Hydra's joblib and submitit launchers, with a job whose process dies recorded as a lost job, not a traceback, and
each of the jobs they run side by side on this machine given its share of the cores (:mod:`aeexp.threads`);
Hydra's basic launcher, with its jobs noted.

A job killed by the OS (the OOM killer's SIGKILL) cannot end its MLflow run, and the plugins then raise from inside
Hydra: joblib a 50-line ``TerminatedWorkerError`` (after loky has killed the pool's other workers too), submitit an
``UncompletedJobError`` while its other jobs go on unwatched. These subclasses tell the sweep (:mod:`aeexp.sweep`)
which jobs were lost and why, so that it marks their runs FAILED and goes on to its report and one closing line;
on Ctrl-C/SIGTERM the submitit ones cancel the jobs they started. A sweep uses them in place of the plugins'
classes (``hydra/launcher=basic``, ``joblib``, ``submitit_local``, ``submitit_slurm`` name them: :mod:`.config`);
any other launcher is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher as HydraBasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as PluginJoblibLauncher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import DictConfig, OmegaConf

from aeexp import sweep as sweeps
from aeexp import threads

log = logging.getLogger(__name__)

SELF_STOP_WAIT_S = 3.0  # how long an interrupted sweep waits for its submitit jobs to stop by themselves
CANCEL_WAIT_S = 15.0  # and then for the jobs it cancelled to end their runs


def lost_job(overrides: Sequence[str]) -> JobReturn:
    """What a lost job returns to the sweeper: NaN, as a job that failed in aeexp does (an Optuna trial fails)."""
    result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    result.return_value = math.nan
    return result


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class BasicLauncher(HydraBasicLauncher):
    """Hydra's default launcher (its jobs one after another in this process), its jobs noted first: those a stop
    leaves unrun are then named and counted in the sweep's closing line."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweeps.note_launched(initial_job_idx, job_overrides)
        return super().launch(job_overrides, initial_job_idx)


class JoblibLauncher(PluginJoblibLauncher):
    """The joblib launcher; a broken worker pool (a worker killed) ends the jobs it ran as lost jobs."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweeps.note_launched(initial_job_idx, job_overrides)
        task_function = self.task_function
        self.task_function = threads.WithShare(task_function, threads.share(self._jobs_at_once(len(job_overrides))))
        try:
            return super().launch(job_overrides, initial_job_idx)
        except (BrokenProcessPool, multiprocessing.TimeoutError) as err:
            cause = self._why(err)
        finally:
            self.task_function = task_function
        sweeps.record_lost_jobs(range(initial_job_idx, initial_job_idx + len(job_overrides)), cause)
        return [lost_job(overrides) for overrides in job_overrides]

    def _jobs_at_once(self, jobs: int) -> int:
        """How many of ``jobs`` run side by side: at most ``n_jobs`` as joblib reads it (``-1``: one per core)."""
        import joblib

        return max(1, min(jobs, joblib.effective_n_jobs(int(self.joblib.get("n_jobs") or 1))))

    def _why(self, err: BaseException) -> str:
        if isinstance(err, multiprocessing.TimeoutError):
            return (f"a job ran past hydra.launcher.timeout={self.joblib.get('timeout')} s and joblib stopped "
                    "every job of its pool")
        codes = re.search(r"exit codes of the workers are (\{[^}]*\})", str(err))
        if codes:
            return (f"a joblib worker process was killed (exit codes {codes.group(1)}; SIGKILL is what the OOM "
                    "killer sends: out of memory?) and loky stopped every job of its pool with it")
        return f"the joblib worker pool broke ({_first_line(err)}), which stops every job it ran"


class _SubmititJobsWatched:
    """The submitit launchers' ``launch`` with each job waited for on its own: a job that ends without a result is
    one lost job while the others go on; Ctrl-C/SIGTERM cancels the jobs. (Mixed into the plugin's classes.)"""

    _EXECUTOR: str
    params: dict[str, Any]
    config: DictConfig | None
    task_function: Any

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweeps.note_launched(initial_job_idx, job_overrides)
        try:
            jobs = self._submit(job_overrides, initial_job_idx)
        except Exception as err:  # e.g. no Slurm here: "Could not detect "srun""
            sweeps.abort_open_sweep(f"submitit's {self._EXECUTOR} executor could not start the jobs "
                                    f"({_first_line(err)}); check hydra.launcher.* and where the command runs")
        try:
            return [self._result(job, num, overrides) for num, (job, overrides) in
                    enumerate(zip(jobs, job_overrides, strict=True), start=initial_job_idx)]
        except KeyboardInterrupt:
            _cancel(jobs)
            raise

    def _result(self, job: Any, num: int, overrides: Sequence[str]) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as err:  # submitit's UncompletedJobError (no result: killed) or FailedJobError
            what = ("ended without a result (killed? SIGKILL is what the OOM killer sends)"
                    if "has not produced any output" in str(err) else f"failed ({_first_line(err)})")
            cause = f"submitit job {job.job_id} {what}; its log: {job.paths.stdout}"
            sweeps.record_lost_jobs([num], cause)
            return lost_job(overrides)

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        """Submit the jobs as the plugin does (hydra-submitit-launcher 1.2's ``launch`` up to ``map_array``)."""
        import submitit

        assert self.config is not None
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"], **{
            f"{self._EXECUTOR}_{key}": value for key, value in self.params.items() if key == "max_num_timeout"})
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in queue_keys else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items() if key not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        params = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
            params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        share = self._share(len(params))
        task_function = self.task_function
        if share is not None:  # (self, the callable submitit runs, is pickled with the wrapped function)
            self.task_function = threads.WithShare(task_function, share)
        try:
            with _output_of_new_processes_to(Path(self.params["submitit_folder"]).parent / "controllers.log"):
                return list(executor.map_array(self, *zip(*params, strict=True)))
        finally:
            self.task_function = task_function

    def _share(self, jobs: int) -> int | None:
        """Each job's cores, where its jobs share this machine; None where each has a machine's share of its own."""
        return None


@contextlib.contextmanager
def _output_of_new_processes_to(path: Path) -> Iterator[None]:
    """Processes started in the block inherit ``path`` as their stdout and stderr instead of this process's. For the
    processes submitit starts on this machine to watch its jobs (each job writes to its own log): their only output
    is a traceback when a Ctrl-C stops them, which would bury the sweep's closing line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with path.open("ab") as output:
            os.dup2(output.fileno(), 1)
            os.dup2(output.fileno(), 2)
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)


def _cancel(jobs: Sequence[Any]) -> None:
    """Stop the jobs on a Ctrl-C/SIGTERM: those still running after a moment (a Ctrl-C at a terminal reaches local
    jobs too, and they stop by themselves) are cancelled (SIGINT for a local job, scancel on Slurm), then given a
    few seconds to end their runs."""
    _wait_until_done(jobs, SELF_STOP_WAIT_S)
    for job in jobs:
        try:
            if not job.done():
                job.cancel(check=False)
        except Exception as err:  # e.g. scancel not found: say so and cancel the others
            log.warning("could not cancel submitit job %s: %s", job.job_id, _first_line(err))
    _wait_until_done(jobs, CANCEL_WAIT_S)


def _wait_until_done(jobs: Sequence[Any], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if all(job.done() for job in jobs):
                return
        except Exception:  # the scheduler cannot be asked: nothing to wait for
            return
        time.sleep(0.2)


class SubmititLocalLauncher(_SubmititJobsWatched, LocalLauncher):
    """hydra/launcher=submitit_local, each job waited for on its own; its jobs all start at once on this machine and
    share its cores."""

    def _share(self, jobs: int) -> int | None:
        return threads.share(jobs)


class SubmititSlurmLauncher(_SubmititJobsWatched, SlurmLauncher):
    """hydra/launcher=submitit_slurm (and aeexp's slurm preset), each job waited for on its own."""

