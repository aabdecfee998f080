"""The Hydra entry point: compose the config, run one experiment (or a sweep's job), report where it went."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from aeexp import preflight, run_hooks, sweep_resume, threads
from aeexp import sweep as sweeps
from aeexp.config import refuse_moved, register_configs, validate
from aeexp.errors import AeexpError, ConfigError, DataError
from aeexp.folders import remove_unused
from aeexp.redaction import mask_credentials_in_logs
from aeexp.training import interrupt

if TYPE_CHECKING:
    from aeexp.experiment import RunResult

log = logging.getLogger("aeexp")
HYDRA_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job logging (its default)

register_configs()
mask_credentials_in_logs()  # from the first line on: a password in dataset.path or tracking.uri is never shown

# The errors that refuse a run before it begins (a bad setting, data that cannot be read). An unusable tracking store
# keeps its folder: Hydra's log there says which store, with its credentials masked.
REFUSALS = (ConfigError, DataError)


def _ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """How to look at the experiment's runs: its runs table in the MLflow UI, and the command serving it."""
    from aeexp import mlflow_ui

    link = mlflow_ui.experiment_link(mlflow_ui.ui_address(tracking_uri), experiment_id)
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {link}"
    return f"mlflow ui --app-name aeexp --workers 1 --backend-store-uri {tracking_uri}  (then open {link})"


def _run_job(cfg: DictConfig, sweep: sweeps.Sweep | None) -> float:
    interrupt.check()  # a stop requested between a sweep's jobs
    validate(cfg)  # before the heavy imports below: a bad value is refused in a second
    threads.apply(threads.budget(cfg.trainer.threads))  # before torch, BLAS and OpenMP make their thread pools
    if sweep is None and sweep_resume.requested(cfg):
        raise AeexpError("sweep.resume finishes a sweep: give it with the sweep's own command line and -m")
    if sweep is not None and sweep.earlier:  # a resumed sweep: this job may be done, or continue its earlier run
        done = sweep_resume.before_job(sweep.earlier, sweep.tracking_uri, cfg)
        if done is not None:
            return done
    # before the heavy imports below; a resumed run takes its config, checked there, from its checkpoint
    checked = None if cfg.get("resume") else preflight.check_components(cfg)
    if checked is not None and sweep is not None:  # a job run again (a Ray task retried): it continues its own run
        sweep_resume.continue_lost_attempt(sweep.parent_run_id, sweep.tracking_uri, cfg)
    from aeexp import experiment

    if sweep is not None:
        sweeps.prepare_job_process()
    hydra_config = HydraConfig.get()
    with interrupt.deferred():  # Ctrl-C/SIGTERM stop the run at its next safe point
        result = experiment.run(cfg, Path(hydra_config.runtime.output_dir), sweep, list(hydra_config.overrides.task),
                                checked)
    log.info("run %s in experiment %r at %s", result.run_id, result.experiment, result.tracking_uri)
    _describe_in_the_ui(result, sweep is None)
    return result.val_loss


def _describe_in_the_ui(result: RunResult, say_where: bool) -> None:
    """Put the run's summary at the top of its page in the MLflow UI; with ``say_where``, say how to open the UI.
    A store that fails now loses the summary only: the run is logged already."""
    from aeexp import mlflow_ui, tracking

    try:
        tracking.describe_run(result.run_id, mlflow_ui.run_summary(result.metrics))
        if say_where:
            log.info("to compare runs: %s", _ui_hint(result.tracking_uri, tracking.experiment_id(result.experiment)))
    except Exception as err:
        log.warning("could not describe run %s in MLflow: %s", result.run_id, tracking.short_error(err))


@hydra.main(version_base="1.3", config_path="pkg://aeexp.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    """One run; returns the final validation loss (what an Optuna sweep minimises)."""
    sweep = sweeps.current_sweep(cfg)
    try:
        return _run_job(cfg, sweep)
    except run_hooks.RunPruned as err:  # (an Optuna sweeper's pruner stopped it: its trial is told so)
        log.info("job %s stopped: %s", HydraConfig.get().job.num, err)
        return math.nan
    except Exception as err:
        if sweep is None:
            if isinstance(err, AeexpError):
                log.error("error: %s", err)
                if isinstance(err, REFUSALS):  # refused before a run began: no folder of it is left
                    hydra_config = HydraConfig.get()
                    remove_unused(Path(hydra_config.runtime.output_dir), f"{hydra_config.job.name}.log")
                sys.exit(1)
            raise
        # In a sweep a failed job is recorded and the sweep goes on with the next one.
        if isinstance(err, AeexpError):
            log.error("job %s failed: %s", HydraConfig.get().job.num, err)
        else:
            log.exception("job %s failed", HydraConfig.get().job.num)
        from aeexp.naming import run_name

        try:
            sweeps.record_failed_job(sweep, cfg, run_name(cfg, sweep.swept), err)
        except Exception as tracking_err:  # e.g. the server went away: say so, keep the sweep going
            log.error("could not record job %s as FAILED in MLflow: %s", HydraConfig.get().job.num, tracking_err)
        return math.nan


def main() -> None:
    """Console-script entry point: ``aeexp [overrides]`` as ``python -m aeexp``; ``aeexp compare|encode|evaluate|rerun
    ...``."""
    threads.let_waiting_threads_sleep()  # before any OpenMP library loads, for every command
    if sys.argv[1:2] == ["compare"]:
        from aeexp import compare

        sys.exit(compare.main(sys.argv[2:]))
    if sys.argv[1:2] == ["encode"]:
        from aeexp import encode

        sys.exit(encode.main(sys.argv[2:]))
    if sys.argv[1:2] == ["evaluate"]:
        from aeexp import evaluate

        sys.exit(evaluate.main(sys.argv[2:]))
    if sys.argv[1:2] == ["rerun"]:
        from aeexp import rerun

        sys.exit(rerun.main(sys.argv[2:]))
    try:
        refuse_moved(sys.argv[1:])
    except AeexpError as err:  # before Hydra composes (and sets up logging): as its log would say it
        logging.basicConfig(format=HYDRA_LOG_FORMAT)
        log.error("error: %s", err)
        sys.exit(1)
    # SIGTERM as Ctrl-C: a run stops at a safe point and ends KILLED, a sweep's parent run is closed.
    interrupt.install()
    try:
        _hydra_main()
    except KeyboardInterrupt as err:
        log.error("error: %s", _interrupted(err))
        sys.exit(130)
    finally:  # a sweep still open here stopped on an error Hydra has reported (joblib's own, say)
        _close_sweep(cause="the sweep stopped on the error above")
    outcome = sweeps.last_outcome
    if outcome is not None and outcome.status != "FINISHED":
        log.error("error: %s; %s", outcome.problems() or "the sweep ran no job", outcome.where())
        sys.exit(1)


def _close_sweep(interrupted: str | None = None, cause: str = "") -> sweeps.Outcome | None:
    """Close the sweep left open, if any (see :func:`aeexp.sweep.close_open_sweep`); never raises."""
    try:
        return sweeps.close_open_sweep(interrupted, cause)
    except Exception as err:  # e.g. the tracking server went away
        log.error("could not close the sweep's parent run in MLflow: %s", err)
        return None


def _marked_killed(run_id: str) -> bool:
    """Whether MLflow holds run ``run_id`` as KILLED (asked of the store: what the closing line says is so)."""
    from aeexp import tracking

    try:
        return tracking.get_run(run_id).status == "KILLED"
    except AeexpError:
        return False


def _interrupted(err: KeyboardInterrupt) -> str:
    """The one line for a Ctrl-C/SIGTERM: where a run stopped and how MLflow recorded it, that none had started, or
    what became of the sweep and its jobs."""
    run_stopped = isinstance(err, interrupt.RunInterrupted)  # it names the run, where it stopped, how to go on
    signal = "a stop request" if run_stopped else str(err) or "Ctrl-C"
    outcome = _close_sweep(interrupted=signal)
    if outcome is None:
        if isinstance(err, interrupt.RunInterrupted):
            return err.line(_marked_killed(err.run_id))
        return f"interrupted ({signal}) before its MLflow run began; no run was started or changed"
    message = str(err) if run_stopped else f"interrupted ({signal})"
    return f"{message}; sweep {outcome.name!r} stopped: {outcome.problems() or 'no job had started'}; {outcome.where()}"


def entry() -> None:
    """The ``aeexp`` console script and ``python -m aeexp``: :func:`main`, then a quick exit."""
    from aeexp.shutdown import run_and_exit

    run_and_exit(main)


if __name__ == "__main__":
    entry()
