"""The run's output folder (Hydra's ``hydra.run.dir`` / ``hydra.sweep.dir``) checked before anything starts."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aeexp.errors import ConfigError

log = logging.getLogger("aeexp")


def ensure_writable_folder(path: Path, key: str) -> None:
    """Create ``path`` if needed and check a file can be written there; ConfigError naming ``key`` if not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"{key}={path}: cannot write there ({err.strerror or err}); choose a writable folder, "
                          f"e.g. {key}=./outputs/run") from None


class OutputFolderCheck(Callback):
    """Refuse an unwritable output folder with one line, before Hydra fails on it with a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")

    @staticmethod
    def _check(path: Path, key: str) -> None:
        try:
            ensure_writable_folder(path, key)
        except ConfigError as err:
            log.error("error: %s", err)
            sys.exit(1)
