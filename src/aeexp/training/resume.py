"""Continuing a run: its stored config with the few changes a resume may make. (Which run, and its checkpoint,
come from the tracking store: :mod:`aeexp.resumed_run`.)"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from aeexp import stored_config
from aeexp.config import plain
from aeexp.errors import ConfigError

# What a resumed run may change: how long it trains and how, the views, metrics and latent health of its codes (this
# command's where it gives them: aeexp.evaluation.lists.for_resumed_run), where MLflow is. Anything else (data, model,
# optimiser, seed) would make it a different run.
CHANGEABLE = ("trainer.epochs", "trainer.early_stopping", "trainer.progress", "trainer.device", "trainer.compile",
              "trainer.mixed_precision", "trainer.checkpoint_every", "trainer.threads", "embed", "metrics", "health",
              "tracking.uri", stored_config.ALLOW_KEY)


def _key(override: str) -> str:
    """``+model.widths=[1]`` -> ``model.widths``; ``dataset@x=mnist`` -> ``dataset``."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _changeable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in CHANGEABLE)


def resumed_config(cfg: DictConfig, stored_yaml: str, overrides: Sequence[str], run_id: str,
                   epochs_done: int) -> DictConfig:
    """The stored config of run ``run_id`` with the command line's changeable ``overrides`` applied.

    An override of anything else must agree with the stored value, or the resume is refused. The stored config is
    data (:mod:`aeexp.stored_config`): an interpolation in it, or a ``_target_`` that is neither aeexp's own nor
    named again by ``cfg`` nor in its ``allow_targets``, is refused before anything is built.
    """
    where = f"the config in run {run_id}'s checkpoint"
    allowed = OmegaConf.select(cfg, stored_config.ALLOW_KEY, default=None) or ()
    stored = stored_config.with_schema(stored_config.read(stored_yaml, where, current=cfg, allowed=allowed), where)
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
