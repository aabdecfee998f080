"""Continuing a run: which run, its checkpoint, and its config with the few changes a resume may make."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from aeexp import tracking
from aeexp.config import flatten, from_stored, plain
from aeexp.errors import ConfigError
from aeexp.training import checkpoint

log = logging.getLogger(__name__)

# What a resumed run may change: how long it trains and how, the views of its codes, where MLflow is. Anything
# else (data, model, optimiser, seed) would make it a different run.
CHANGEABLE = ("trainer.epochs", "trainer.early_stopping", "trainer.progress", "trainer.device", "trainer.compile",
              "trainer.mixed_precision", "trainer.checkpoint_every", "trainer.threads", "embed", "tracking.uri")


def resolve_run_id(resume: str) -> str:
    """``resume=<run id>`` as given, ``resume=last``: the latest run (any experiment) with a checkpoint."""
    if resume != "last":
        return resume
    run_id = tracking.latest_run_with_tag(tracking.CHECKPOINT_TAG)
    if run_id is None:
        raise checkpoint.CheckpointError(
            "resume=last: no run with a checkpoint in this tracking store; check tracking.uri or give the run id")
    return run_id


def find_checkpoint(run: tracking.RunRecord) -> checkpoint.Checkpoint:
    """The run's latest usable checkpoint: the local file its tag names, else (that file gone, damaged or another
    run's) the copy logged to MLflow; CheckpointError, in one line saying what was tried, if neither can be used."""
    problems: list[str] = []
    local = run.tags.get(tracking.CHECKPOINT_TAG)
    if local and Path(local).is_file():
        found = _usable(Path(local), run.run_id, problems)
        if found is not None:
            return found
    elif local:
        problems.append(f"{local} is gone")
    logged = run.tags.get(checkpoint.ARTIFACT_TAG, checkpoint.LEGACY_ARTIFACT)
    with tempfile.TemporaryDirectory(prefix="aeexp-resume-") as download_dir:
        path = tracking.download_artifact(run.run_id, logged, Path(download_dir))
        found = _usable(path, run.run_id, problems, f"{logged} (logged to MLflow)") if path is not None else None
    if found is not None:
        if problems:
            log.warning("%s; resuming from the copy logged to MLflow instead", "; ".join(problems))
        return found
    if path is None:
        problems.append("none was logged to MLflow")
    raise checkpoint.CheckpointError(f"run {run.run_id} has no checkpoint to resume from ({'; '.join(problems)}); "
                                     "start a new run instead")


def _usable(path: Path, run_id: str, problems: list[str], name: str | None = None) -> checkpoint.Checkpoint | None:
    """The checkpoint at ``path`` if it loads and belongs to run ``run_id``; else None, with the reason added to
    ``problems`` (naming the file ``name``, by default its path)."""
    try:
        found = checkpoint.load(path)
    except checkpoint.CheckpointError as err:
        problems.append(str(err).replace(str(path), name or str(path)))
        return None
    if found.run_id != run_id:
        problems.append(f"{name or path} belongs to run {found.run_id}")
        return None
    log.info("resuming run %s from its checkpoint after epoch %d (%s)", run_id, found.epoch, path)
    return found


def changed_settings(logged_params: Mapping[str, str], cfg: DictConfig) -> dict[str, str]:
    """The settings of the resumed ``cfg`` that differ from the params the run logged when it started (MLflow params
    cannot change): ``{"trainer.epochs": "30", ...}``, to be recorded as ``resumed.<key>`` tags."""
    now = {key: tracking.redact(value) for key, value in flatten(cfg).items()}  # as params are logged
    return {key: value for key, value in now.items()
            if key != "resume" and logged_params.get(key) != value[:tracking.MAX_PARAM_LENGTH]}


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
    stored = from_stored(stored_yaml)
    for override in overrides:
        key = _key(override)
        if key == "resume" or key.startswith(("hydra", "sweep.")):  # how to run it, not what it is
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
