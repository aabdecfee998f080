"""Reading a real MLflow store back in tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient


def migrated_template(directory: Path) -> Path:
    """An empty sqlite store created (and schema-migrated) by MLflow itself in ``directory``: every
    :func:`new_store` copied from it saves a test MLflow's ~3 s of migrations."""
    path = directory / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables, runs the migrations
    return path


def new_store(path: Path, template: Path) -> str:
    """A fresh, empty MLflow sqlite store at ``path`` (a copy of ``template``); its tracking URI."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def runs_in(tracking_uri: str, experiment: str | None = None) -> list[Run]:
    """All runs of ``experiment`` (every experiment when None) in the store at ``tracking_uri``."""
    client = MlflowClient(tracking_uri)
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments if experiment is None or e.name == experiment]
    return list(client.search_runs(ids)) if ids else []


def assert_no_running(tracking_uri: str) -> None:
    """No run in the store is left RUNNING (a store that was never created holds none)."""
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if not path.exists():
        return
    stuck = [r.info.run_id for r in runs_in(tracking_uri) if r.info.status == "RUNNING"]
    assert not stuck, f"runs left RUNNING: {stuck}"


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of a metric, in step order."""
    history = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def artifact_paths(tracking_uri: str, run_id: str) -> set[str]:
    """Top-level artifact paths of a run."""
    return {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id)}


if __name__ == "__main__":  # make mutate: one template for every test session of a mutation run
    import sys

    print(migrated_template(Path(sys.argv[1])))
