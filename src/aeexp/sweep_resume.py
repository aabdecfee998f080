"""Finishing a sweep that died: ``sweep.resume=<parent run id>|last`` on the sweep's command line puts its jobs back
into the same parent run.

A job whose earlier child FINISHED is not run again (its result is reused); one whose child FAILED, was KILLED or
was left RUNNING by a killed process continues that child from its checkpoint, or, without a checkpoint, runs anew
(the old child is then tagged ``sweep.superseded`` and left out of the report and of the parent's status); a job
that never ran runs. Jobs are matched by their overrides, in any order, ``sweep.resume`` left out.

The same holds within one attempt for a job run again after its process was lost (Ray retries a task whose worker
died): it continues its own RUNNING child (:func:`continue_lost_attempt`), so the sweep counts each job once.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from aeexp.errors import ConfigError, TrackingError

if TYPE_CHECKING:  # aeexp.tracking imports MLflow (seconds): imported where a sweep is under way
    from aeexp.tracking import RunRecord

log = logging.getLogger(__name__)

RESUME_KEY = "sweep.resume"
PARENT_TAG = "sweep.name"  # every sweep's parent run has it
SUPERSEDED_TAG = "sweep.superseded"


def requested(config: DictConfig) -> str | None:
    """The ``sweep.resume`` of the command line, or None."""
    value = OmegaConf.select(config, RESUME_KEY, default=None)
    return None if value is None else str(value)


NOT_THE_JOB = (RESUME_KEY, "tracking.uri")  # how a sweep is run and where it is found, not what its jobs are


def job_key(overrides: Sequence[str]) -> str:
    """A job's identity across attempts: its overrides sorted, credentials masked as in its ``sweep.job_overrides``
    tag, ``sweep.resume`` and ``tracking.uri`` left out."""
    from aeexp.redaction import redact

    return " ".join(sorted(redact(o) for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_THE_JOB))


def counted(children: Sequence[RunRecord]) -> list[RunRecord]:
    """The children that stand for their job: not those a later attempt replaced."""
    return [child for child in children if SUPERSEDED_TAG not in child.tags]


def find_parent(resume: str) -> tuple[RunRecord, str]:
    """The parent run ``resume`` names (``last``: the latest sweep parent) and its experiment; ConfigError if there
    is none or the run is not a sweep's parent."""
    from aeexp import tracking

    uri = tracking.current_uri()
    run_id = resume
    if resume == "last":
        run_id = tracking.latest_run_with_tag(PARENT_TAG)
        if run_id is None:
            raise ConfigError(f"sweep.resume=last: there is no sweep in {uri}; check tracking.uri")
    try:
        record, experiment = tracking.find_run(run_id)
    except TrackingError:
        raise ConfigError(f"sweep.resume={resume}: no run {run_id!r} at {uri}; give the id of a sweep's parent run "
                          "(the MLflow UI shows it) or sweep.resume=last, and check tracking.uri") from None
    if PARENT_TAG not in record.tags:
        parent = record.tags.get("mlflow.parentRunId")
        hint = (f"it is a job of the sweep whose parent run is {parent}: give sweep.resume={parent}" if parent else
                "give the id of the run the sweep's jobs are nested under, or sweep.resume=last")
        raise ConfigError(f"sweep.resume={resume}: run {run_id} ({record.name}) is not a sweep's parent run; {hint}")
    if record.deleted:
        raise ConfigError(f"sweep.resume={resume}: the sweep's parent run {run_id} ({record.name}) was deleted; "
                          f"restore it first (`mlflow runs restore --run-id {run_id}`), or start the sweep anew "
                          "without sweep.resume")
    return record, experiment


def _comparable(overrides: Sequence[str]) -> list[str]:
    """A sweep's overrides as its parent's tag ``sweep.overrides`` holds them (credentials masked), without those
    that do not change its jobs (:data:`NOT_THE_JOB`)."""
    from aeexp.redaction import redact

    return sorted(o for o in redact(" ".join(overrides)).split() if o.split("=", 1)[0].lstrip("+~") not in NOT_THE_JOB)


def check_same_sweep(parent: RunRecord, resume: str, overrides: Sequence[str]) -> None:
    """Refuse (one line saying what differs) a resume whose command line is not the sweep's: its jobs would not be
    the sweep's, and would be added to its parent as new ones."""
    recorded = parent.tags.get("sweep.overrides", parent.params.get("sweep.overrides"))
    if recorded is None:  # (every aeexp sweep records it)
        return
    before, now = _comparable(recorded.split()), _comparable(overrides)
    if before == now:
        return
    gone, added = [o for o in before if o not in now], [o for o in now if o not in before]
    differs = "; ".join(part for part in (f"the sweep had {' '.join(gone)}" if gone else "",
                                          f"this command line has {' '.join(added)}" if added else "") if part)
    raise ConfigError(f"sweep.resume={resume}: this is not the command line of sweep {parent.name!r} ({differs}), so "
                      "its jobs would not be the sweep's; give the sweep's own command line (its parent run's tag "
                      "sweep.overrides), or start a new sweep without sweep.resume")


def earlier_jobs(parent_run_id: str) -> dict[str, dict[str, Any]]:
    """The parent's children by job key (the latest attempt of each): run id, status and final ``val_loss``."""
    from aeexp import tracking

    earlier: dict[str, dict[str, Any]] = {}
    for child in counted(tracking.child_runs(parent_run_id)):  # oldest first: a later attempt wins
        key = job_key(child.tags.get("sweep.job_overrides", "").split())
        earlier[key] = {"run_id": child.run_id, "status": child.status, "name": child.name,
                        "val_loss": child.metrics.get("val_loss", math.nan)}
    return earlier


def reopen(resume: str, directory: Path, overrides: Sequence[str]) -> tuple[RunRecord, str, dict[str, dict[str, Any]]]:
    """Reopen the parent run ``resume`` names (RUNNING again, its ``sweep.dir`` now ``directory``) if ``overrides``
    are the sweep's and no other process runs it now (:func:`hold`); return it, its experiment and its earlier
    jobs."""
    from aeexp import tracking

    parent, experiment = find_parent(resume)
    check_same_sweep(parent, resume, overrides)
    hold(Path(parent.params.get("sweep.dir") or parent.tags["sweep.dir"]), f"sweep.resume={resume}")
    earlier = earlier_jobs(parent.run_id)
    tracking.reopen_run(parent.run_id)
    tracking.set_run_tag(parent.run_id, "sweep.dir", str(directory))
    attempts = int(parent.tags.get("sweep.attempts", "1")) + 1
    tracking.set_run_tag(parent.run_id, "sweep.attempts", str(attempts))
    finished = sum(job["status"] == "FINISHED" for job in earlier.values())
    log.info("sweep.resume: parent run %s (%s), attempt %d: %d earlier jobs, %d of them FINISHED", parent.run_id,
             parent.name, attempts, len(earlier), finished)
    return parent, experiment, earlier


LOCK_FILE = ".aeexp_sweep.lock"
_held: dict[Path, int] = {}  # the sweeps this process runs: lock file -> its open descriptor


def hold(directory: Path, what: str) -> None:
    """Hold, while this process runs the sweep whose first folder is ``directory`` (the parent's param
    ``sweep.dir``), an exclusive lock on its ``.aeexp_sweep.lock``: a second process finishing the same sweep at the
    same time is refused in one line (ConfigError naming ``what``). The kernel releases the lock when the process
    ends, however it ends. Where the folder cannot be made or locked (a file system without flock), the sweep goes
    on unlocked."""
    import fcntl

    from aeexp import processes

    path = directory / LOCK_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        log.warning("%s: cannot lock %s (%s); two processes finishing the sweep at once would not be stopped", what,
                    path, err.strerror)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        if isinstance(err, BlockingIOError):
            raise ConfigError(f"{what}: {holder} is running this sweep now (it holds {path}); wait for it to end, "
                              "or stop it, then give the command again") from None
        return  # no flock here
    os.ftruncate(descriptor, 0)
    host, _, pid = processes.me().rpartition(" ")
    os.pwrite(descriptor, f"process {pid} on {host}".encode(), 0)
    _held[path] = descriptor


def release_all() -> None:
    """Release the sweep locks this process holds (:func:`hold`): its sweep is closed."""
    while _held:
        os.close(_held.popitem()[1])


def _has_checkpoint(run: RunRecord) -> bool:
    """Whether the run has a checkpoint to continue from: its local file, or the whole copy logged to MLflow (the
    one the tag ``aeexp.checkpoint.logged`` names; runs of older aeexp logged ``checkpoint/checkpoint.pt``)."""
    from aeexp import tracking
    from aeexp.training import checkpoint

    local = run.tags.get(tracking.CHECKPOINT_TAG)
    logged = run.tags.get(checkpoint.ARTIFACT_TAG, checkpoint.LEGACY_ARTIFACT)
    return bool(local and Path(local).is_file()) or tracking.has_artifact(run.run_id, logged)


def before_job(earlier: dict[str, dict[str, Any]], tracking_uri: str, cfg: DictConfig) -> float | None:
    """Decide this job of a resumed sweep: the earlier ``val_loss`` if its child FINISHED (the job is done), else
    None after pointing ``cfg.resume`` at the child to continue from its checkpoint, or superseding a child that
    has none (the job then runs anew)."""
    from aeexp import tracking

    tracking.use_uri(tracking_uri)
    hydra_config = HydraConfig.get()
    job = earlier.get(job_key(list(hydra_config.overrides.task)))
    if job is None:
        return None
    if job["status"] == "FINISHED":
        log.info("job %s: run %s (%s) FINISHED before; reusing it", hydra_config.job.num, job["run_id"], job["name"])
        return float(job["val_loss"])
    _continue_or_run_anew(tracking.get_run(job["run_id"]), cfg)
    return None


def continue_lost_attempt(parent_run_id: str, tracking_uri: str, cfg: DictConfig) -> None:
    """A job that already has a RUNNING child in this sweep ran before in a process that was lost, and is run
    again: Ray retries a task whose worker died, a scheduler requeues a job. Its child continues from its
    checkpoint (``cfg.resume``), or, without one, is superseded (the job runs anew), so that the sweep counts the job
    once. (One process at a time runs a sweep, :func:`hold`: no other live process runs this job.)"""
    from aeexp import tracking

    tracking.use_uri(tracking_uri)
    hydra_config = HydraConfig.get()
    key, number = job_key(list(hydra_config.overrides.task)), str(hydra_config.job.num)
    for child in counted(tracking.child_runs(parent_run_id)):
        if (child.status == "RUNNING" and child.tags.get("sweep.job") == number
                and job_key(child.tags.get("sweep.job_overrides", "").split()) == key):
            log.info("job %s ran before in process %s on %s, which was lost", number, child.tags.get("sweep.pid"),
                     child.tags.get("sweep.host"))
            _continue_or_run_anew(child, cfg)
            return


def _continue_or_run_anew(run: RunRecord, cfg: DictConfig) -> None:
    """Point ``cfg.resume`` at the job's earlier ``run`` to continue it from its checkpoint; without one, tag it
    superseded (ending it KILLED if a lost process left it RUNNING): the job then runs anew."""
    from aeexp import tracking

    hydra_config = HydraConfig.get()
    if _has_checkpoint(run):
        log.info("job %s: continuing run %s (%s, %s) from its checkpoint", hydra_config.job.num, run.run_id,
                 run.name, run.status)
        cfg.resume = run.run_id
        return
    log.info("job %s: run %s (%s, %s) has no checkpoint; running the job anew", hydra_config.job.num, run.run_id,
             run.name, run.status)
    tracking.set_run_tag(run.run_id, SUPERSEDED_TAG, f"run again by job {hydra_config.job.num} of "
                                                     f"{hydra_config.sweep.dir}")
    if run.status == "RUNNING":  # left so by a killed process
        tracking.end_run_by_id(run.run_id, "KILLED")
