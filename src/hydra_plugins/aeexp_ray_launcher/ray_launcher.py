"""The Hydra Launcher class: each job is a Ray task running the Hydra job as the basic launcher would, with its share
of the cores (:mod:`aeexp.threads`)."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from aeexp import threads
from aeexp.errors import AeexpError

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 60  # after Ctrl-C: how long the jobs get to end their runs KILLED


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of an address such as ``10.0.0.5:6379`` or ``ray://head:10001``; None for ``auto``."""
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def check_address(address: str | None, timeout_s: float) -> None:
    """AeexpError if nothing answers at the cluster's ``host:port`` within ``timeout_s``."""
    target = _host_port(address) if address else None
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as err:
        raise AeexpError(f"hydra.launcher.address={address}: no Ray cluster answers there ({type(err).__name__}); "
                         f"start one with `ray start --head --port {target[1]}`, or leave hydra.launcher.address "
                         "null to start Ray on this machine") from None


def _run_job_in_ray(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction,
                    singleton_state: dict[Any, Any], cwd: str) -> JobReturn:
    """In a Ray worker: the Hydra job, set up as in the process that launched it (its cwd where it exists)."""
    if Path(cwd).is_dir():
        os.chdir(cwd)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


class AeexpRayLauncher(Launcher):
    """Runs a sweep's jobs as Ray tasks (see :mod:`hydra_plugins.aeexp_ray_launcher.config` for its settings)."""

    def __init__(self, address: str | None, num_cpus: int | None, remote: Any, init: Any,
                 connect_timeout_s: float) -> None:
        self.address, self.num_cpus, self.connect_timeout_s = address, num_cpus, connect_timeout_s
        self.remote = OmegaConf.to_container(remote) if OmegaConf.is_config(remote) else dict(remote or {})
        self.init = OmegaConf.to_container(init) if OmegaConf.is_config(init) else dict(init or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    @staticmethod
    def preflight(config: DictConfig) -> None:
        """Refuse a cluster address that does not answer before the sweep's parent run exists (aeexp.sweep)."""
        launcher = config.hydra.launcher
        check_address(launcher.address, float(launcher.connect_timeout_s))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _start_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        check_address(self.address, self.connect_timeout_s)
        arguments = {"address": self.address, "include_dashboard": False, **self.init}
        if self.address is None and self.num_cpus is not None:
            arguments["num_cpus"] = self.num_cpus
        log.info("Ray: %s", f"connecting to {self.address}" if self.address else "starting on this machine")
        try:
            ray.init(**arguments)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise AeexpError(f"Ray: cannot {'connect to ' + self.address if self.address else 'start'} "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:300]})") from None

    def _job_cores(self, jobs: int) -> int | None:
        """Each job's share of the cores: on a Ray instance of this machine, its cores divided among the jobs it runs
        at once (its CPUs over the CPUs each asks for, at most ``jobs``); on a cluster, the CPUs each job asks for
        (None when it asks for none: its node's)."""
        per_job = float(self.remote.get("num_cpus", 1) or 0)  # Ray's default for a task: 1
        if self.address is None:
            capacity = self.num_cpus or threads.usable_cores()
            return threads.share(jobs if per_job <= 0 else min(jobs, max(1, math.floor(capacity / per_job))))
        return max(1, math.floor(per_job)) if per_job > 0 else None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self._start_ray()
        log.info("Ray launcher: %d jobs, sweep output dir %s", len(job_overrides), sweep_dir)
        run = ray.remote(**self.remote)(_run_job_in_ray) if self.remote else ray.remote(_run_job_in_ray)
        cores = self._job_cores(len(job_overrides))
        task_function = threads.WithShare(self.task_function, cores) if cores else self.task_function
        futures = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"ray_{number}"
                sweep_config.hydra.job.num = number
                sweep_config.hydra.sweep.dir = str(sweep_dir.resolve())  # the same folder from any worker
            futures.append(run.remote(self.hydra_context, sweep_config, task_function, Singleton.get_state(),
                                      os.getcwd()))
        try:
            return ray.get(futures)
        except KeyboardInterrupt:  # stop the jobs (each ends its run KILLED), then stop the sweep
            for future in futures:
                ray.cancel(future)
            ray.wait(futures, num_returns=len(futures), timeout=CANCEL_WAIT_S)
            raise
