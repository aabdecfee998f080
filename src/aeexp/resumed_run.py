"""The run a resume continues, as the tracking store has it: its id (``resume=last``), its latest usable checkpoint
(the local file, else the copy logged to MLflow), and the settings the resume changes of the params it logged.

What a resume may change of the run's config is :mod:`aeexp.training.resume`'s; this is the tracking store's side.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from aeexp import tracking
from aeexp.config import flatten
from aeexp.training import checkpoint

log = logging.getLogger(__name__)


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
