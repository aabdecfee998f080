"""A run's record in MLflow, as a run keeps it: its tags, its params and config at the start (or, resumed, what
changed), each metric once per step, and its checkpoint saved every epoch and logged to MLflow now and then.
Everything here talks to MLflow through :mod:`aeexp.tracking`."""

from __future__ import annotations

import dataclasses
import logging
import platform
import re
from pathlib import Path

import torch
from omegaconf import DictConfig

from aeexp import threads, tracking
from aeexp.naming import model_label
from aeexp.resumed_run import changed_settings
from aeexp.training import checkpoint
from aeexp.training.loop import History

log = logging.getLogger(__name__)

SKIPPED_TAG_PREFIX = "skipped."  # skipped.<name>: what the evaluation could not compute, and why
DATA_HASH_TAG = "data.hash"  # of the decoded arrays the run trained and was tested on (aeexp.data.digest)
VERSIONED_PACKAGES = ("numpy", "scikit-learn", "openTSNE", "umap-learn")  # besides aeexp, torch, mlflow and hydra


def _git_commit() -> dict[str, str]:
    """The project's git commit (and whether the tree had changes), when aeexp runs from a git checkout."""
    import subprocess

    where = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    """``versions.<package>`` of the installed packages that shape a run's numbers besides aeexp, torch and mlflow
    (``none`` for one not installed)."""
    from importlib import metadata

    found = {}
    for package in VERSIONED_PACKAGES:
        try:
            found[f"versions.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[f"versions.{package}"] = "none"
    return found


def run_tags(cfg: DictConfig, device: torch.device, path: str, bf16: bool, data_digest: str = "") -> dict[str, str]:
    """The tags every run gets: what it trained and how, on which data (``data.hash``), the versions it ran with, the
    user's ``tags``."""
    import hydra

    import aeexp

    return {
        "dataset": cfg.dataset.name,
        **({DATA_HASH_TAG: data_digest} if data_digest else {}),
        "model": model_label(cfg),
        "device": str(device),
        "train.path": path,
        "train.bf16": str(bf16).lower(),
        "threads": str(threads.current()),
        "versions.aeexp": aeexp.__version__,
        "versions.torch": torch.__version__,
        "versions.mlflow": tracking.MLFLOW_VERSION,
        "versions.hydra": hydra.__version__,
        **package_versions(),
        "host.python": platform.python_version(),
        **_git_commit(),
        **{str(k): str(v) for k, v in cfg.tags.items()},
    }


class Checkpoints:
    """The run's checkpoint: saved locally after every epoch (whole or not at all), logged to MLflow every
    ``trainer.checkpoint_every`` epochs and when the run ends or stops.

    Each MLflow copy goes to a folder of its own epoch, and only once it is whole does the tag
    ``aeexp.checkpoint.logged`` name it; then the copy before it is deleted. A run stopped during an upload keeps
    its last whole copy, whatever the artifact store.
    """

    def __init__(self, path: Path, every: int, logged: str | None) -> None:
        self.path, self.every = path, every
        self.saved_epoch: int | None = None
        self.named = False  # whether the tag aeexp.checkpoint names self.path
        self.logged = logged  # the artifact path of the latest whole copy in MLflow, if any
        self.logged_epoch = _artifact_epoch(logged)

    def save(self, state: checkpoint.Checkpoint) -> None:
        checkpoint.save(state, self.path)
        self.saved_epoch = state.epoch

    def name_in_run(self) -> None:
        """Tag the run with the local checkpoint once it exists."""
        if not self.named and self.saved_epoch is not None:
            tracking.set_tags({tracking.CHECKPOINT_TAG: str(self.path)})
            self.named = True

    def after_epoch(self, epoch: int) -> None:
        if self.every and epoch % self.every == 0:
            self.upload()

    def upload(self) -> None:
        """Log the latest saved checkpoint to MLflow unless it already is; a failure is a warning (the local file
        stays)."""
        epoch = self.saved_epoch
        if epoch is None or epoch == self.logged_epoch:
            return
        folder = checkpoint.artifact_folder(epoch)
        try:
            tracking.log_artifact(self.path, folder)
            tracking.set_tags({checkpoint.ARTIFACT_TAG: f"{folder}/{checkpoint.FILENAME}"})
        except Exception as err:
            log.warning("could not log the checkpoint of epoch %d to MLflow (%s); it stays in %s", epoch,
                        tracking.short_error(err), self.path)
            return
        previous = self.logged_epoch
        self.logged, self.logged_epoch = f"{folder}/{checkpoint.FILENAME}", epoch
        if previous is not None:
            try:
                tracking.delete_artifacts(checkpoint.artifact_folder(previous))
            except Exception as err:  # a store that cannot delete keeps both copies
                log.debug("could not delete the checkpoint of epoch %d in MLflow: %s", previous, err)


def _artifact_epoch(artifact: str | None) -> int | None:
    """The epoch of a checkpoint logged to ``checkpoint/epoch-<k>/...``; None for none or the older layout."""
    match = re.fullmatch(r"checkpoint/epoch-(\d+)/.*", artifact or "")
    return int(match.group(1)) if match else None


class MetricLog:
    """The run's metrics in MLflow, each (metric, step) logged once: a resume logs what its checkpoint's history
    holds and MLflow lacks (epochs a kill or a lost store kept from MLflow), and nothing twice. They go to the
    active run, or to run ``run_id`` without making it active (``aeexp evaluate``: its status stays as it is)."""

    def __init__(self, logged: dict[str, set[int]] | None = None, run_id: str | None = None) -> None:
        self.logged = logged or {}
        self.run_id = run_id

    def log(self, values: dict[str, float], step: int) -> dict[str, float]:
        """Log those of ``values`` not yet logged at ``step``; return them."""
        missing = {key: value for key, value in values.items() if step not in self.logged.get(key, set())}
        if missing:
            if self.run_id is None:
                tracking.log_metrics(missing, step=step)
            else:
                tracking.log_metrics_to(self.run_id, missing, step=step)
            for key in missing:
                self.logged.setdefault(key, set()).add(step)
        return missing

    def backfill(self, history: History) -> None:
        for epoch, values in enumerate(history.epochs, start=1):
            self.log(values, epoch)


def begin(run_id: str, cfg: DictConfig, config_yaml: str, output_dir: Path, params: dict[str, str],
          resumed: checkpoint.Checkpoint | None = None, record: tracking.RunRecord | None = None
          ) -> tuple[Checkpoints, MetricLog]:
    """Record the run's start in MLflow: its ``params`` (a new run), or (one ``resumed`` from its checkpoint, as MLflow
    had it: ``record``) what changed, the metrics its checkpoint holds that MLflow lacks, and a copy of the
    checkpoint in this run's output folder."""
    path = checkpoint.local_path(output_dir, run_id)
    every = cfg.trainer.checkpoint_every
    if resumed is None or record is None:
        tracking.log_params(params)
        checkpoints, metric_log = Checkpoints(path, every, None), MetricLog()
    else:
        _record_resume(record, resumed.epoch, run_id, cfg)
        checkpoints = Checkpoints(path, every, record.tags.get(checkpoint.ARTIFACT_TAG))
        checkpoints.save(dataclasses.replace(resumed, config=config_yaml))  # the tag names a file that exists
        checkpoints.name_in_run()
        metric_log = MetricLog(tracking.metric_steps(run_id, record.metrics))
        metric_log.backfill(resumed.history)
    tracking.log_text(config_yaml, "config.yaml")
    return checkpoints, metric_log


def _record_resume(record: tracking.RunRecord, epoch: int, run_id: str, cfg: DictConfig) -> None:
    """Tags that describe the resumed run as it now is: ``resumed_from_epoch``, ``resumed.<key>`` for each setting
    that differs from its params (which MLflow keeps as they were logged), and no ``error`` of an earlier failure nor
    ``skipped.*`` or ``latent.alarm`` of an earlier evaluation (it is evaluated anew)."""
    changed = changed_settings(record.params, cfg)
    tracking.set_tags({"resumed_from_epoch": str(epoch),
                       **{f"resumed.{key}": value[:5000] for key, value in changed.items()}})
    stale = [key for key in record.tags if key in ("error", "latent.alarm") or key.startswith(SKIPPED_TAG_PREFIX)
             or (key.startswith("resumed.") and key.removeprefix("resumed.") not in changed)]
    for key in stale:
        tracking.delete_tag(run_id, key)
