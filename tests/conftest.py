"""Shared fixtures: tiny real IDX datasets, a real sqlite MLflow store, Hydra compose, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from idx import write_dataset
from omegaconf import DictConfig

from aeexp.config import register_configs

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

FAST = ["trainer.epochs=2", "trainer.progress=false", "embed.n_samples=200"]


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a tiny MNIST in torchvision's layout: gzipped train files, plain test files."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root / "MNIST" / "raw", gz={"train_images": True, "train_labels": True})
    return root


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh sqlite MLflow store in the test's temp dir."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def make_config() -> Callable[..., DictConfig]:
    """Compose aeexp's config from its packaged YAML files with overrides, as the CLI does."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module(config_module="aeexp.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m aeexp ARGS`` in a temp working dir, as a user would; returns the finished process."""

    def _run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, "-m", "aeexp", *args], cwd=cwd or tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return _run


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 for the whole session."""
    from mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
