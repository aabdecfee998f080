"""Everything that talks to MLflow: where runs go, runs, params, metrics, figures, the model."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from aeexp.errors import TrackingError

log = logging.getLogger(__name__)
# MLflow's SQL store logs every failed statement with its traceback (dozens of lines each) before raising it as an
# MlflowException, which aeexp reports in one line: the log adds nothing but noise.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

MLFLOW_VERSION = mlflow.__version__
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
SERVER_CHECK_TIMEOUT_S = 5.0


def _check_server(uri: str) -> None:
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=SERVER_CHECK_TIMEOUT_S)
    except requests.RequestException as err:
        raise TrackingError(
            f"tracking server {uri} is unreachable ({type(err).__name__}); start it with "
            f"`mlflow server --host 127.0.0.1 --port {urlparse(uri).port or 5000}` or set tracking.uri"
        ) from None
    if response.status_code != 200:
        raise TrackingError(
            f"{uri} does not answer like an MLflow tracking server (GET /health -> HTTP "
            f"{response.status_code}); check tracking.uri"
        )


def _check_sqlite(uri: str) -> None:
    if not uri.startswith("sqlite:///"):
        return  # in-memory or unusual forms: let MLflow judge
    path = Path(uri[len("sqlite:///"):])  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise TrackingError(f"tracking.uri={uri}: folder {directory} does not exist; create it first")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrackingError(f"tracking.uri={uri}: {path} is not writable; choose another place")
    try:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as err:
        raise TrackingError(f"tracking.uri={uri}: cannot open {path} as SQLite ({err})") from None


def use_uri(uri: str | None) -> str:
    """Point MLflow at ``uri`` (None: its default) without checking it; return the URI in force."""
    mlflow.set_tracking_uri(uri or None)
    return mlflow.get_tracking_uri()


def configure_uri(uri: str | None) -> str:
    """Point MLflow at ``uri`` (None: MLflow's default) after checking it can be used; return the URI in force."""
    if uri:
        scheme = urlparse(uri).scheme
        if scheme in ("http", "https"):
            _check_server(uri)
        elif scheme == "sqlite":
            _check_sqlite(uri)
        mlflow.set_tracking_uri(uri)
    else:
        mlflow.set_tracking_uri(None)
    resolved = mlflow.get_tracking_uri()
    if not uri and resolved.startswith("sqlite"):
        _check_sqlite(resolved)
    return resolved


def configure(uri: str | None, experiment: str) -> str:
    """Point MLflow at ``uri`` (None: MLflow's default) and ``experiment``; fail fast if unusable.

    Returns the tracking URI in force.
    """
    resolved = configure_uri(uri)
    try:
        mlflow.set_experiment(experiment)
    except Exception as err:
        raise TrackingError(f"cannot use experiment {experiment!r} at {resolved}: {err}") from None
    return resolved


@dataclass
class RunRecord:
    """What the comparison report needs of one run, without MLflow types."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def _record(run: Any) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or run.info.run_id, run.info.status,
                     dict(run.data.params), dict(run.data.metrics), dict(run.data.tags))


@contextlib.contextmanager
def start_run(run_name: str | None, tags: Mapping[str, str], parent_run_id: str | None = None,
              run_id: str | None = None) -> Iterator[str]:
    """An MLflow run around the block: FINISHED if it ends normally, KILLED on Ctrl-C/SIGTERM, else FAILED with
    the error as a tag.

    With ``parent_run_id`` it is a child of that run (also when the parent lives in another process); with
    ``run_id`` the existing run is continued (resumed) instead of a new one started.
    """
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(dict(tags))
    else:
        run = mlflow.start_run(run_name=run_name, tags=dict(tags), parent_run_id=parent_run_id)
    try:
        yield run.info.run_id
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):
            mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
        try:
            mlflow.end_run(status=status)
        except Exception as tracking_err:  # e.g. the server went away: keep the original error
            log.error("could not mark run %s %s in MLflow: %s", run.info.run_id, status, short_error(tracking_err))
        raise
    mlflow.end_run(status="FINISHED")


CHECKPOINT_TAG = "aeexp.checkpoint"


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log one local file to the active run."""
    mlflow.log_artifact(str(path), artifact_path)


def find_run(run_id: str) -> tuple[RunRecord, str]:
    """Run ``run_id`` and the name of its experiment; TrackingError naming the store if there is none."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:
        raise TrackingError(f"no run {run_id!r} at {mlflow.get_tracking_uri()}; check the id (mlflow ui shows it) "
                            "and tracking.uri") from None
    return _record(run), client.get_experiment(run.info.experiment_id).name


def latest_run_with_tag(tag: str) -> str | None:
    """The id of the most recently started run, in any experiment, that has the tag ``tag``."""
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    runs = client.search_runs(ids, filter_string=f"tags.`{tag}` LIKE '%'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _param_batches(params: Mapping[str, Any]) -> Iterator[dict[str, str]]:
    """Params as batches within MLflow's limits (100 per call, 6000 chars per value)."""
    items = [(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        yield dict(items[start:start + MAX_PARAMS_PER_BATCH])


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run, in batches within MLflow's limits."""
    for batch in _param_batches(params):
        mlflow.log_params(batch)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, str]) -> None:
    mlflow.set_tags(dict(tags))


def log_text(text: str, filename: str) -> None:
    mlflow.log_text(text, filename)


def log_model(model: Any, example_input: Any) -> None:
    """Log a torch autoencoder as the run's ``model`` (loadable with ``mlflow.pytorch.load_model``)."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model.eval()
    import torch

    with torch.no_grad():
        example_output = model(torch.as_tensor(example_input)).numpy()
    signature = infer_signature(example_input, example_output)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    # Pickle keeps the whole module (encode/decode included); pt2 would keep only forward().
    pytorch_logger = logging.getLogger("mlflow.pytorch")
    level = pytorch_logger.level
    pytorch_logger.setLevel(logging.ERROR)  # its pickle-safety warning is noise for our own models
    try:
        with _requirements_unchecked():
            mlflow.pytorch.log_model(model, name="model", signature=signature, pip_requirements=requirements,
                                     serialization_format="pickle")
    finally:
        pytorch_logger.setLevel(level)


@contextlib.contextmanager
def _requirements_unchecked() -> Iterator[None]:
    """Skip MLflow's check of a logged model's requirements against the installed packages, inside the block.

    The check reads the file list of every installed distribution (0.5 s a run on 2 cores), and ours were just read
    from the running torch and MLflow, so it cannot fail. MLflow has no switch for it: this swaps its private
    checker for a no-op and puts it back after; where that checker is not found (another MLflow), nothing changes.
    """
    from mlflow.utils import environment

    checker = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if checker is None:
        yield
        return
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = checker


def load_model(model_uri: str) -> Any:
    """A logged autoencoder back as a torch module."""
    import mlflow.pytorch

    return mlflow.pytorch.load_model(model_uri, map_location="cpu")


def open_run(experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Create a run that outlives this call and is not the active run (a sweep's parent); end it with
    :func:`end_run_by_id`."""
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    for batch in _param_batches(params):
        client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in batch.items()])
    return run.info.run_id


def record_failed_run(experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any],
                      error: str, parent_run_id: str | None) -> str:
    """A run that failed before it could start (e.g. a sweep job with invalid values), marked FAILED."""
    all_tags = {**tags, "error": error[:5000]}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run_id = open_run(experiment, run_name, all_tags, params)
    end_run_by_id(run_id, "FAILED")
    return run_id


def end_run_by_id(run_id: str, status: str) -> None:
    MlflowClient().set_terminated(run_id, status=status)


def set_run_tag(run_id: str, key: str, value: str) -> None:
    MlflowClient().set_tag(run_id, key, value[:5000])


def get_run(run_id: str) -> RunRecord:
    try:
        return _record(MlflowClient().get_run(run_id))
    except Exception as err:
        raise TrackingError(f"no run {run_id!r} at {mlflow.get_tracking_uri()} ({type(err).__name__})") from None


def child_runs(parent_run_id: str) -> list[RunRecord]:
    """The runs whose parent is ``parent_run_id``, oldest first."""
    parent = MlflowClient().get_run(parent_run_id)
    runs = MlflowClient().search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                      order_by=["attributes.start_time ASC"], max_results=10_000)
    return [_record(run) for run in runs]


def experiment_runs(experiment: str) -> list[RunRecord]:
    """All runs of an experiment, oldest first."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} at {mlflow.get_tracking_uri()}")
    runs = MlflowClient().search_runs([found.experiment_id], order_by=["attributes.start_time ASC"],
                                      max_results=10_000)
    return [_record(run) for run in runs]


def download_artifact(run_id: str, path: str, destination: Path) -> Path | None:
    """A run's artifact copied under ``destination``; None when the run has no such artifact."""
    try:
        return Path(MlflowClient().download_artifacts(run_id, path, str(destination)))
    except Exception:
        return None


def log_artifacts_to(run_id: str, directory: Path, artifact_path: str) -> None:
    """Log every file of ``directory`` to run ``run_id`` (which need not be the active run)."""
    MlflowClient().log_artifacts(run_id, str(directory), artifact_path)


def short_error(err: BaseException) -> str:
    """An MLflow error in one line: the database's own error for an SQL store (whose messages go on with the
    statement and its parameters), else the first line."""
    lines = str(err).splitlines() or [type(err).__name__]
    database_error = next((line for line in lines if line.startswith("(") and "Error)" in line), lines[0])
    return database_error[:300]


def metric_steps(run_id: str, keys: Iterable[str]) -> dict[str, set[int]]:
    """The steps at which run ``run_id`` has logged each metric of ``keys``."""
    client = MlflowClient()
    return {key: {metric.step for metric in client.get_metric_history(run_id, key)} for key in keys}


def delete_tag(run_id: str, key: str) -> None:
    MlflowClient().delete_tag(run_id, key)


def delete_artifacts(artifact_path: str) -> None:
    """Delete a file or folder of the active run's artifacts (where the artifact store allows it)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(mlflow.get_artifact_uri()).delete_artifacts(artifact_path)
