"""Continuing a run: which run, its checkpoint, and its config with the few changes a resume may make."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from aeexp import tracking
from aeexp.config import Config, plain
from aeexp.errors import ConfigError
from aeexp.training import checkpoint

log = logging.getLogger(__name__)

# What a resumed run may change: how long it trains and how, the views of its codes, where MLflow is. Anything
# else (data, model, optimiser, seed) would make it a different run.
CHANGEABLE = ("trainer.epochs", "trainer.early_stopping", "trainer.progress", "trainer.device", "trainer.compile",
              "trainer.mixed_precision", "embed", "tracking.uri")


def resolve_run_id(resume: str) -> str:
    """``resume=<run id>`` as given, ``resume=last``: the latest run (any experiment) with a checkpoint."""
    if resume != "last":
        return resume
    run_id = tracking.latest_run_with_tag(tracking.CHECKPOINT_TAG)
    if run_id is None:
        raise checkpoint.CheckpointError(
            "resume=last: no run with a checkpoint in this tracking store; check tracking.uri or give the run id")
    return run_id


def find_checkpoint(run: tracking.RunRecord, download_dir: Path) -> checkpoint.Checkpoint:
    """The run's latest checkpoint: the local file it names, else the copy logged to MLflow."""
    local = run.tags.get(tracking.CHECKPOINT_TAG)
    path = Path(local) if local and Path(local).is_file() else None
    if path is None:
        path = tracking.download_artifact(run.run_id, f"checkpoint/{checkpoint.FILENAME}", download_dir)
    if path is None:
        where = f"{local} is gone and " if local else ""
        raise checkpoint.CheckpointError(
            f"run {run.run_id} has no checkpoint to resume from ({where}none was logged to MLflow); "
            "start a new run instead")
    found = checkpoint.load(path)
    if found.run_id != run.run_id:
        raise checkpoint.CheckpointError(f"checkpoint {path} belongs to run {found.run_id}, not {run.run_id}")
    log.info("resuming run %s from its checkpoint after epoch %d (%s)", run.run_id, found.epoch, path)
    return found


def _key(override: str) -> str:
    """``+model.widths=[1]`` -> ``model.widths``; ``dataset@x=mnist`` -> ``dataset``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _changeable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in CHANGEABLE)


def resumed_config(cfg: DictConfig, stored_yaml: str, overrides: Sequence[str], run_id: str,
                   epochs_done: int) -> DictConfig:
    """The stored config of run ``run_id`` with the command line's changeable ``overrides`` applied.

    An override of anything else must agree with the stored value, or the resume is refused.
    """
    stored = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(stored_yaml))
    for override in overrides:
        key = _key(override)
        if key == "resume" or key.startswith("hydra"):
            continue
        wanted = OmegaConf.select(cfg, key, default=None)
        if _changeable(key):
            OmegaConf.update(stored, key, wanted, merge=False)
            continue
        have = OmegaConf.select(stored, key, default=None)
        if plain(wanted) != plain(have):
            raise ConfigError(
                f"resume: {override} would change run {run_id}, which has {key}={plain(have)}; a resumed run "
                f"keeps its config (only {', '.join(CHANGEABLE)} may change). Drop it, or start a new run "
                "without resume=")
    stored.tracking.uri = cfg.tracking.uri  # where the run was found
    stored.resume = cfg.resume
    if stored.trainer.epochs < epochs_done:
        raise ConfigError(f"resume: trainer.epochs={stored.trainer.epochs} is below the {epochs_done} epochs run "
                          f"{run_id} has done; give trainer.epochs={epochs_done} or more")
    return stored
