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
from mlflow_store import migrated_template, new_store
from omegaconf import DictConfig

from aeexp.config import register_configs

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel test workers (`make test` runs pytest -n): one thread each, for this process and the runs it
    # starts, or every worker's OpenMP threads compete for the same cores and all of them wait on each other.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

FAST = ["trainer.epochs=2", "trainer.progress=false", "embed.n_samples=200"]


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """aeexp's cache (PCA baselines) in a temp dir for the session, for this process and the runs it starts."""
    os.environ["AEEXP_CACHE_DIR"] = str(tmp_path_factory.mktemp("aeexp-cache"))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a tiny MNIST in torchvision's layout: gzipped train files, plain test files."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root / "MNIST" / "raw", gz={"train_images": True, "train_labels": True})
    return root


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow sqlite store made once per test process (see ``mlflow_store.new_store``), or the one
    named by ``AEEXP_TEST_STORE_TEMPLATE``: ``make mutate`` makes it once for the thousands of test sessions it runs."""
    given = os.environ.get("AEEXP_TEST_STORE_TEMPLATE")
    if given:
        return Path(given)
    return migrated_template(tmp_path_factory.mktemp("store-template"))


@pytest.fixture
def new_sqlite_store(store_template: Path) -> Callable[[Path], str]:
    """``new_sqlite_store(path)``: a fresh, empty MLflow sqlite store at ``path``; returns its URI."""
    return lambda path: new_store(path, store_template)


@pytest.fixture
def tracking_uri(tmp_path: Path, new_sqlite_store: Callable[[Path], str]) -> str:
    """A fresh sqlite MLflow store in the test's temp dir."""
    return new_sqlite_store(tmp_path / "mlflow.db")


@pytest.fixture
def make_config() -> Callable[..., DictConfig]:
    """Compose aeexp's config from its packaged YAML files with overrides, as the CLI does."""
    register_configs()

    def _compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
        with initialize_config_module(config_module="aeexp.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m aeexp ARGS`` in a temp working dir, as a user would; returns the finished process. ``env``:
    variables to set (or override) in the process's environment, e.g. ``{"PYTHONPATH": folder}``."""

    def _run(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run([sys.executable, "-m", "aeexp", *args], cwd=cwd or tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return _run


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 for the whole session."""
    from mlflow_server import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), store_template) as uri:
        yield uri
