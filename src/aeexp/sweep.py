"""Sweeps as MLflow parent/child runs: a Hydra callback opens the parent, each job finds it in the sweep dir.

The parent's id is written to ``<sweep dir>/.aeexp_sweep.json``, so jobs find it whichever launcher runs them:
in this process (basic), in worker processes (joblib), as submitit jobs, or on a cluster sharing the disk.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aeexp import sweep_resume
from aeexp.errors import AeexpError

log = logging.getLogger(__name__)

SWEEP_FILE = ".aeexp_sweep.json"
REPORT_DIR = "comparison"  # in the sweep dir, and the parent run's artifact folder
PRUNED_TAG = "pruned_at_epoch"  # a child an Optuna pruner stopped: KILLED, not failed
DEFAULT_EXPERIMENT = "${dataset.name}"


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
    """How the last sweep of this process ended (read by the CLI for its exit code)."""

    jobs: int = 0
    failed: list[str] = field(default_factory=list)
    parent_run_id: str = ""
    report_dir: str = ""


last_outcome: Outcome | None = None
_open: Sweep | None = None


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
    """The one experiment of a sweep: ``tracking.experiment`` if set, else the dataset(s) swept over."""
    raw = OmegaConf.to_container(config.tracking, resolve=False)["experiment"]
    if raw != DEFAULT_EXPERIMENT:
        return str(config.tracking.experiment)
    datasets = _swept_values(_sweep_overrides(config), ("dataset", "dataset.name"))
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
                parent, experiment, earlier = sweep_resume.reopen(sweep_resume.requested(config), directory.resolve())
                uri, run_id, name = tracking.configure(uri, experiment), parent.run_id, parent.name
            else:
                experiment = sweep_experiment(config)
                uri = tracking.configure(config.tracking.uri, experiment)
                name = sweep_name(config)
                run_id = _open_parent(config, experiment, name, directory.resolve())
        except AeexpError as err:
            log.error("error: %s", err)
            sys.exit(1)
        _open = Sweep(run_id, experiment, uri, name, str(directory.resolve()), _swept_keys(config), earlier)
        last_outcome = None
        (directory / SWEEP_FILE).write_text(json.dumps(asdict(_open)))
        log.info("sweep %r: parent run %s in experiment %r at %s", name, run_id, experiment, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        close_open_sweep(interrupted=False)


def close_open_sweep(interrupted: bool) -> None:
    """End the open sweep's parent run: report, then FINISHED, FAILED if a job failed, KILLED if cut short."""
    global _open, last_outcome
    if _open is None:
        return
    sweep, _open = _open, None
    from aeexp import compare, tracking

    children = sweep_resume.counted(tracking.child_runs(sweep.parent_run_id))
    failed = [child.name for child in children if child.status != "FINISHED" and PRUNED_TAG not in child.tags]
    report_dir = Path(sweep.directory) / REPORT_DIR
    try:
        if children:
            compare.write_report(children, report_dir, title=sweep.name)
            tracking.log_artifacts_to(sweep.parent_run_id, report_dir, REPORT_DIR)
    except Exception as err:  # a report must not leave the parent RUNNING
        log.warning("comparison report failed: %s", err)
        tracking.set_run_tag(sweep.parent_run_id, "report_error", f"{type(err).__name__}: {err}")
    if failed:
        tracking.set_run_tag(sweep.parent_run_id, "error", f"{len(failed)} of {len(children)} jobs failed: "
                             + ", ".join(failed))
    status = "KILLED" if interrupted else "FAILED" if failed or not children else "FINISHED"
    tracking.end_run_by_id(sweep.parent_run_id, status)
    last_outcome = Outcome(len(children), failed, sweep.parent_run_id, str(report_dir))
    log.info("sweep %r %s: %d jobs, %d failed; report in %s", sweep.name, status, len(children), len(failed),
             report_dir)
    if interrupted:
        log.error("the sweep was cut short: finish it with the same command and sweep.resume=%s",
                  sweep.parent_run_id)


def current_sweep() -> Sweep | None:
    """The sweep this job belongs to, or None for a single run (or a sweep without aeexp's callback)."""
    hydra_config = HydraConfig.get()
    if hydra_config.mode != RunMode.MULTIRUN:
        return None
    return load_sweep(hydra_config.sweep.dir)


def load_sweep(directory: str | Path) -> Sweep | None:
    """The sweep whose folder is ``directory`` (from its ``.aeexp_sweep.json``), or None."""
    path = Path(directory) / SWEEP_FILE
    if not path.is_file():
        return None
    return Sweep(**json.loads(path.read_text()))


def job_tags() -> dict[str, str]:
    """Tags that tie a job's run to its place in the sweep."""
    hydra_config = HydraConfig.get()
    return {"sweep.job": str(hydra_config.job.num),
            "sweep.job_overrides": " ".join(hydra_config.overrides.task)}


NAMED_KEYS = {"model", "model.name", "model.bottleneck", "dataset", "dataset.name"}  # already in the run name


def job_run_name(base: str, sweep: Sweep, cfg: DictConfig) -> str:
    """``base`` plus the swept values it does not show, e.g. ``ae32-b8-digits lr=0.003``."""
    extra = []
    for key in sweep.swept:
        if key in NAMED_KEYS or key.startswith("hydra"):
            continue
        value = HydraConfig.get().runtime.choices.get(key) or OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        elif isinstance(value, float):
            value = f"{value:.4g}"
        extra.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join([base, *extra])


def limit_threads_for_parallel_jobs() -> None:
    """Under the joblib launcher, give each of the parallel jobs its share of the cores."""
    import torch

    hydra_config = HydraConfig.get()
    launcher = str(hydra_config.launcher.get("_target_", ""))
    if "joblib" not in launcher.lower():
        return
    n_jobs = int(hydra_config.launcher.get("n_jobs") or 1)
    cores = os.cpu_count() or 1
    parallel = cores if n_jobs < 0 else min(n_jobs, cores)
    torch.set_num_threads(max(1, cores // max(1, parallel)))


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
