"""Sweeps as MLflow parent/child runs: a Hydra callback opens the parent, each job finds it in the sweep dir.

The parent's id is written to ``<sweep dir>/.aeexp_sweep.json``, so jobs find it whichever launcher runs them:
in this process (basic), in worker processes (joblib), as submitit jobs, or on a cluster sharing the disk.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import filter_overrides
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aeexp import sweep_resume
from aeexp.config import TrackingConfig
from aeexp.errors import AeexpError

log = logging.getLogger(__name__)

SWEEP_FILE = ".aeexp_sweep.json"
REPORT_DIR = "comparison"  # in the sweep dir, and the parent run's artifact folder
PRUNED_TAG = "pruned_at_epoch"  # a child an Optuna pruner stopped: KILLED, not failed
DEFAULT_EXPERIMENT = TrackingConfig.experiment  # the schema's: the dataset's name


@dataclass
class Sweep:
    """Where a sweep's runs go."""

    parent_run_id: str
    experiment: str
    tracking_uri: str
    name: str
    directory: str
    swept: list[str] = field(default_factory=list)
    # A resumed sweep's earlier jobs (aeexp.sweep_resume): job key -> run id, status, val_loss
    earlier: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Outcome:
    """How the last sweep of this process ended (read by the CLI for its closing line and exit code)."""

    name: str = ""
    status: str = ""
    jobs: int = 0  # every job known: those that ran and those that did not
    finished: int = 0
    failed: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    parent_run_id: str = ""
    report_dir: str = ""

    @property
    def complete(self) -> bool:
        """Every job ran and finished."""
        return not (self.failed or self.killed or self.not_run)

    @property
    def ran(self) -> int:
        """The jobs that have a run (finished, failed, stopped or pruned)."""
        return self.jobs - len(self.not_run)

    @property
    def pruned(self) -> int:
        """The jobs an Optuna pruner stopped (KILLED on purpose: neither failed nor stopped)."""
        return self.ran - self.finished - len(self.failed) - len(self.killed)

    def counts(self) -> str:
        """Every job counted: ``3 jobs: 1 finished, 0 failed, 1 stopped, 1 did not run``."""
        pruned = f", {self.pruned} pruned" if self.pruned else ""
        return (f"{self.jobs} jobs: {self.finished} finished, {len(self.failed)} failed, {len(self.killed)} stopped"
                f"{pruned}, {len(self.not_run)} did not run")

    def problems(self) -> str:
        """Which of all the jobs failed, were stopped or did not run, and why, in a line (empty when all finished)."""
        parts = []
        if self.failed:
            parts.append(f"{len(self.failed)} of {self.jobs} jobs failed ({', '.join(self.failed)})")
        if self.killed:
            parts.append(f"{len(self.killed)} of {self.jobs} jobs were stopped and marked KILLED "
                         f"({', '.join(self.killed)})")
        if self.not_run:
            parts.append(f"{len(self.not_run)} of {self.jobs} did not run ({'; '.join(self.not_run)})")
        if parts and self.finished:
            parts.append(f"{self.finished} finished")
        if parts and self.pruned:
            parts.append(f"{self.pruned} pruned")
        text = ", ".join(parts)
        if text and self.causes:
            text += ": " + "; ".join(self.causes)
        return text

    def where(self) -> str:
        """Where to look: the parent run, its status and the report; for a sweep that did not finish, how to."""
        report = f"report in {self.report_dir}" if self.ran else "no report (no job ran)"
        finish = (f"; finish it with the same command and sweep.resume={self.parent_run_id}"
                  if self.status in ("FAILED", "KILLED") and self.parent_run_id else "")
        return f"parent run {self.parent_run_id} is {self.status}, {report}{finish}"


@dataclass
class _OpenSweep:
    """The sweep this process opened: where it goes, the jobs aeexp's launchers started (number -> swept
    overrides, and -> job key, which a resumed sweep's earlier runs are matched by) and why jobs were lost (a
    killed worker, say)."""

    sweep: Sweep
    launched: dict[int, str] = field(default_factory=dict)
    launched_keys: dict[int, str] = field(default_factory=dict)
    causes: list[str] = field(default_factory=list)


last_outcome: Outcome | None = None
_open: _OpenSweep | None = None
ORPHANED = "its process ended without ending its MLflow run (killed, e.g. by the OOM killer, or crashed)"


def _sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides: the command line's and those in ``hydra.sweeper.params``."""
    overrides = [str(o) for o in config.hydra.overrides.task]
    params = config.hydra.sweeper.get("params") or {}
    overrides += [f"{key}={value}" for key, value in params.items()]
    return overrides


def _swept_keys(config: DictConfig) -> list[str]:
    """Keys the sweep varies: sweep overrides on the command line and every ``hydra.sweeper.params`` key."""
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(
        [str(o) for o in config.hydra.overrides.task]) if o.is_sweep_override()]
    keys += [str(k) for k in (config.hydra.sweeper.get("params") or {}) if str(k) not in keys]
    return keys


def _swept_values(overrides: list[str], keys: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group in keys:
            try:
                found = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
                    str(override.value())]
            except Exception:  # ranges and intervals: not a list of names
                found = []
            values += [v for v in found if v not in values]
    return values


def sweep_experiment(config: DictConfig) -> str:
    """The one experiment of a sweep: ``tracking.experiment`` if set, else the name(s) of the dataset(s) its jobs
    run on: ``dataset.name``'s values when it is given (``dataset=folder dataset.name=pets``: ``pets``), else the
    ``dataset`` presets'."""
    raw = OmegaConf.to_container(config.tracking, resolve=False)["experiment"]
    if raw != DEFAULT_EXPERIMENT:
        return str(config.tracking.experiment)
    overrides = _sweep_overrides(config)
    datasets = _swept_values(overrides, ("dataset.name",)) or _swept_values(overrides, ("dataset",))
    return "+".join(datasets) if len(datasets) > 1 else str(config.dataset.name)


def sweep_name(config: DictConfig) -> str:
    """The preset's name (``experiment=`` or ``hparams_search=``), else the overrides of the sweep."""
    choices = config.hydra.runtime.choices
    for group in ("hparams_search", "experiment"):
        if choices.get(group):
            return str(choices[group])
    swept = set(_swept_keys(config))
    shown = [o for o in _sweep_overrides(config) if o.split("=", 1)[0].lstrip("+~") in swept]
    return ("sweep " + " ".join(shown))[:250]


def preflight(config: DictConfig) -> None:
    """Let the sweeper and the launcher refuse a setting that cannot work (an Optuna storage that cannot be opened,
    a Ray cluster that does not answer) before the parent run exists: a class of theirs may define a static
    ``preflight(config)`` that raises AeexpError."""
    from hydra.utils import get_class

    for node in (config.hydra.sweeper, config.hydra.launcher):
        target = node.get("_target_") if node is not None else None
        check = getattr(get_class(target), "preflight", None) if target else None
        if callable(check):
            check(config)


def _open_parent(config: DictConfig, experiment: str, name: str, directory: Path) -> str:
    """A new parent run for the sweep; its id."""
    from aeexp import tracking

    overrides = " ".join(_sweep_overrides(config))
    tags = {"sweep.name": name, "sweep.dir": str(directory), "sweep.overrides": overrides,
            "sweep.launcher": str(config.hydra.runtime.choices.get("hydra/launcher")),
            "sweep.sweeper": str(config.hydra.runtime.choices.get("hydra/sweeper"))}
    return tracking.open_run(experiment, name, tags, {"sweep.overrides": overrides, "sweep.dir": str(directory)})


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent run before the first job and closes it, with a comparison report, after the last."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _open, last_outcome
        from aeexp import tracking

        directory = Path(config.hydra.sweep.dir)
        directory.mkdir(parents=True, exist_ok=True)
        earlier: dict[str, dict[str, Any]] = {}
        try:
            preflight(config)
            if sweep_resume.requested(config):
                uri = tracking.configure_uri(config.tracking.uri)
                parent, experiment, earlier = sweep_resume.reopen(sweep_resume.requested(config), directory.resolve(),
                                                                  _sweep_overrides(config))
                uri, run_id, name = tracking.configure(uri, experiment), parent.run_id, parent.name
            else:
                experiment = sweep_experiment(config)
                uri = tracking.configure(config.tracking.uri, experiment)
                name = sweep_name(config)
                run_id = _open_parent(config, experiment, name, directory.resolve())
                sweep_resume.hold(directory.resolve(), f"sweep {name!r}")
        except AeexpError as err:
            log.error("error: %s", err)
            sys.exit(1)
        except Exception as err:  # MLflow's own (Hydra would only warn, and run the jobs without their sweep)
            log.error("error: the sweep could not start in MLflow (%s: %s)", type(err).__name__,
                      str(err).strip().splitlines()[0] if str(err).strip() else "")
            sys.exit(1)
        sweep = Sweep(run_id, experiment, uri, name, str(directory.resolve()), _swept_keys(config), earlier)
        _open, last_outcome = _OpenSweep(sweep), None
        _write_sweep_file(directory, sweep)
        log.info("sweep %r: parent run %s in experiment %r at %s", name, run_id, experiment, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        close_open_sweep()


def note_launched(first_job: int, job_overrides: Sequence[Sequence[str]]) -> None:
    """Remember the jobs a launcher starts (numbered from ``first_job``), to name those that never ran."""
    if _open is None:
        return
    swept = set(_open.sweep.swept)
    for num, overrides in enumerate(job_overrides, start=first_job):
        shown = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept]
        _open.launched[num] = " ".join(shown or filter_overrides(overrides))
        _open.launched_keys[num] = sweep_resume.job_key(list(overrides))


def record_lost_jobs(job_nums: Iterable[int], cause: str) -> None:
    """Jobs whose process ended without a result (killed, e.g. by the OOM killer): the runs they left RUNNING are
    marked FAILED with ``cause`` as their error, and the sweep's closing line gives the cause."""
    if _open is None:
        return
    if cause not in _open.causes:
        _open.causes.append(cause)
    _end_running_children(_open.sweep, "FAILED", cause, {str(num) for num in job_nums})


def abort_open_sweep(message: str) -> NoReturn:
    """Stop the sweep on an error of its own (its jobs cannot be started, say): the parent run ends FAILED with
    ``message`` as its error, which is also the one line said; exit code 1."""
    close_open_sweep(cause=message)
    log.error("error: %s", message)
    sys.exit(1)


def _end_running_children(sweep: Sweep, status: str, reason: str, job_nums: set[str] | None = None) -> None:
    """Mark the sweep's child runs still RUNNING (of ``job_nums`` only, when given) ``status``, with ``reason`` as
    their ``error`` tag: their process is gone (killed, or stopped with the sweep) and cannot do it itself."""
    from aeexp import tracking

    for child in tracking.child_runs(sweep.parent_run_id):
        if child.status != "RUNNING" or (job_nums is not None and child.tags.get("sweep.job") not in job_nums):
            continue
        checkpoint = child.tags.get(tracking.CHECKPOINT_TAG)
        hint = (f"; continue it with `python -m aeexp resume={child.run_id} tracking.uri={sweep.tracking_uri}`"
                if checkpoint and Path(checkpoint).is_file() else "")
        tracking.set_run_tag(child.run_id, "error", reason + hint)
        tracking.end_run_by_id(child.run_id, status)
        log.debug("job run %s (%s) marked %s: %s", child.run_id, child.name, status, reason)


def close_open_sweep(interrupted: str | None = None, cause: str = "") -> Outcome | None:
    """End the open sweep's parent run, if any: mark the runs its jobs left RUNNING (KILLED when ``interrupted``,
    the signal, e.g. ``SIGINT received``; else FAILED with ``cause``), write the report, then end the parent
    FINISHED, FAILED if a job did not finish, or KILLED."""
    global _open, last_outcome
    if _open is None:
        return None
    state, _open = _open, None
    sweep = state.sweep
    from aeexp import tracking

    if cause and cause not in state.causes:
        state.causes.append(cause)
    if interrupted is not None:
        _end_running_children(sweep, "KILLED", f"interrupted ({interrupted}): the sweep was stopped while this job ran")
    else:
        _end_running_children(sweep, "FAILED", "; ".join(state.causes) or ORPHANED)
    children = sweep_resume.counted(tracking.child_runs(sweep.parent_run_id))  # not those run again
    ran = {child.tags.get("sweep.job") for child in children}
    ran_keys = {sweep_resume.job_key(child.tags.get("sweep.job_overrides", "").split()) for child in children}
    not_run = [shown for num, shown in sorted(state.launched.items())
               if str(num) not in ran and state.launched_keys.get(num) not in ran_keys]
    outcome = Outcome(sweep.name, "", len(children) + len(not_run),
                      finished=sum(c.status == "FINISHED" for c in children),
                      failed=[c.name for c in children if c.status not in ("FINISHED", "KILLED")],
                      # (a child an Optuna pruner stopped is KILLED on purpose: neither failed nor stopped)
                      killed=[c.name for c in children if c.status == "KILLED" and PRUNED_TAG not in c.tags],
                      not_run=not_run, causes=state.causes, parent_run_id=sweep.parent_run_id,
                      report_dir=str(Path(sweep.directory) / REPORT_DIR))
    _write_report(sweep, children, Path(outcome.report_dir))
    if not outcome.complete:
        tracking.set_run_tag(sweep.parent_run_id, "error", outcome.problems())
    outcome.status = ("KILLED" if interrupted is not None else
                      "FINISHED" if outcome.complete and children else "FAILED")
    tracking.end_run_by_id(sweep.parent_run_id, outcome.status)
    sweep_resume.release_all()  # closed: another process may finish it now
    last_outcome = outcome
    log.info("sweep %r %s: %s; %s", sweep.name, outcome.status, outcome.counts(), outcome.where())
    _say_where_in_the_ui(sweep)
    return outcome


def _say_where_in_the_ui(sweep: Sweep) -> None:
    """Log the link to the sweep's runs in the MLflow UI (the parent's + unfolds its jobs)."""
    from aeexp import mlflow_ui, tracking

    try:
        experiment_id = tracking.experiment_id(sweep.experiment)
        link = mlflow_ui.experiment_link(mlflow_ui.ui_address(sweep.tracking_uri), experiment_id)
    except Exception:  # the store went away: the closing line has said what matters
        return
    log.info("the sweep in the MLflow UI: %s (its parent run's + unfolds the jobs)", link)


def _write_report(sweep: Sweep, children: Sequence[Any], report_dir: Path) -> None:
    """The comparison report, in the sweep dir and logged to the parent; a failure is noted, never raised (it must
    not leave the parent RUNNING)."""
    from aeexp import compare, tracking

    try:
        if children:
            compare.write_report(children, report_dir, title=compare.sweep_title(sweep.name))
            tracking.log_artifacts_to(sweep.parent_run_id, report_dir, REPORT_DIR)
    except Exception as err:
        log.warning("comparison report failed: %s", err)
        tracking.set_run_tag(sweep.parent_run_id, "report_error", f"{type(err).__name__}: {err}")


def _write_sweep_file(directory: Path, sweep: Sweep) -> None:
    """``.aeexp_sweep.json`` in the sweep dir, its tracking URI without credentials: each job takes them from its own
    config (:func:`current_sweep`), which the same command line made."""
    from aeexp.redaction import redact

    (directory / SWEEP_FILE).write_text(json.dumps(asdict(sweep) | {"tracking_uri": redact(sweep.tracking_uri)}))


def _with_credentials(stored: str, cfg: DictConfig) -> str:
    """The sweep's tracking URI as the job's own config (or ``MLFLOW_TRACKING_URI``) gives it, credentials and all,
    when that is the URI the sweep file holds masked; else the one it holds."""
    from aeexp.redaction import redact

    for own in (OmegaConf.select(cfg, "tracking.uri", default=None), os.environ.get("MLFLOW_TRACKING_URI")):
        if own and redact(str(own)) == stored:
            return str(own)
    return stored


def current_sweep(cfg: DictConfig | None = None) -> Sweep | None:
    """The sweep this job (whose config is ``cfg``) belongs to, or None for a single run (or a sweep without aeexp's
    callback)."""
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return None
    sweep = load_sweep(hydra_config.sweep.dir)
    if sweep is not None and cfg is not None:
        sweep.tracking_uri = _with_credentials(sweep.tracking_uri, cfg)
    return sweep


def load_sweep(directory: str | Path) -> Sweep | None:
    """The sweep whose folder is ``directory`` (from its ``.aeexp_sweep.json``), or None."""
    path = Path(directory) / SWEEP_FILE
    if not path.is_file():
        return None
    return Sweep(**json.loads(path.read_text()))


def job_tags() -> dict[str, str]:
    """Tags that tie a job's run to its place in the sweep and to the process that ran it (a host and pid to match
    with the kernel's log of an OOM kill)."""
    hydra_config = HydraConfig.get()
    return {"sweep.job": str(hydra_config.job.num), "sweep.job_overrides": " ".join(hydra_config.overrides.task),
            "sweep.host": socket.gethostname(), "sweep.pid": str(os.getpid())}


def prepare_job_process() -> None:
    """Ready this process for a sweep's job: progress bars take a thread lock, not tqdm's default inter-process
    semaphore, which a worker killed mid-run (the OOM killer) would leave behind with a warning at exit. (Each job's
    share of the cores is :mod:`aeexp.threads`'.)"""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def record_failed_job(sweep: Sweep, cfg: DictConfig, run_name: str, error: BaseException) -> None:
    """Make sure a failed job shows as a FAILED child run, also when it failed before its run started."""
    from aeexp import tracking
    from aeexp.config import flatten

    tags = job_tags()
    tracking.configure(sweep.tracking_uri, sweep.experiment)
    for child in sweep_resume.counted(tracking.child_runs(sweep.parent_run_id)):
        if child.tags.get("sweep.job") == tags["sweep.job"]:
            return  # the run exists and was marked FAILED when the error went through it
    try:
        params = flatten(cfg)
    except Exception:
        params = {}
    tracking.record_failed_run(sweep.experiment, run_name, tags, params, f"{type(error).__name__}: {error}",
                               sweep.parent_run_id)
