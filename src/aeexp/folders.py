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


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes to <output dir>/.hydra/


def remove_unused(directory: Path, log_name: str) -> bool:
    """Remove the output folder of a run refused before it began, when it holds only what Hydra wrote as the job
    started (``.hydra/`` and the job's log ``log_name``), and Hydra's default ``outputs/<date>/`` folders above it that
    this leaves empty. A folder holding anything else is left as it is; returns whether it was removed."""
    directory = directory.resolve()
    hydra_folder = directory / ".hydra"
    try:
        if {p.name for p in directory.iterdir()} - {".hydra", log_name} or (
                hydra_folder.is_dir() and {p.name for p in hydra_folder.iterdir()} - set(HYDRA_FILES)):
            return False
        for name in HYDRA_FILES:
            (hydra_folder / name).unlink(missing_ok=True)
        (directory / log_name).unlink(missing_ok=True)
        if hydra_folder.is_dir():
            hydra_folder.rmdir()
        directory.rmdir()
    except OSError:  # gone already, or not ours to remove: leave what is left
        return False
    default = Path.cwd() / "outputs"
    for parent in (directory.parent, default):
        if directory.parent.parent != default:
            break
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
    return True
