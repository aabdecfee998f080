"""``aeexp evaluate``: real runs trained through the CLI in a real sqlite store, evaluated again by the real command.

One store for the module: a plain run and a two-job sweep, both trained with the PCA view only. The tests run in
file order; the last deletes the plain run's weights.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import references
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, runs_in

from aeexp import evaluate, tracking

TRAIN = ["dataset=digits", "model=ae32", "model.widths=[32]", "embed=pca", *FAST]


@dataclass
class Store:
    """Where the runs were trained: the folder, the store's URI, the plain run and the sweep's parent run."""

    cwd: Path
    uri: str
    run_id: str
    parent_id: str

    def children(self) -> list[str]:
        return [run.info.run_id for run in runs_in(self.uri, "digits")
                if run.data.tags.get("mlflow.parentRunId") == self.parent_id]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _aeexp(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aeexp", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A plain run (bottleneck 4) and a sweep over bottleneck 2 and 4, all on the digits, 2 epochs, PCA view."""
    cwd = tmp_path_factory.mktemp("evaluate")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    plain = _aeexp(cwd, *TRAIN, "model.bottleneck=4", f"tracking.uri={uri}")
    assert plain.returncode == 0, plain.stderr[-3000:]
    (run,) = runs_in(uri, "digits")
    sweep = _aeexp(cwd, "-m", *TRAIN, "model.bottleneck=2,4", f"tracking.uri={uri}")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (parent,) = [r for r in runs_in(uri, "digits") if "sweep.name" in r.data.tags]
    return Store(cwd, uri, run.info.run_id, parent.info.run_id)


@pytest.fixture(autouse=True)
def _reset_tracking_uri() -> Iterator[None]:
    """In-process calls point MLflow at the test store; leave MLflow as a fresh process finds it."""
    yield
    mlflow.set_tracking_uri(None)


def _steps(uri: str, run_id: str) -> dict[str, list[int]]:
    """Each metric's steps, in order, as MLflow holds them."""
    client = MlflowClient(uri)
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def _assert_one_value_per_step(uri: str, run_id: str) -> dict[str, list[int]]:
    steps = _steps(uri, run_id)
    repeated = {key: s for key, s in steps.items() if len(s) != len(set(s))}
    assert not repeated, f"metrics logged twice at a step: {repeated}"
    return steps


def test_a_plain_run_gets_the_views_it_lacks_and_keeps_what_it_has(store: Store) -> None:
    client = MlflowClient(store.uri)
    before = client.get_run(store.run_id)
    assert "tsne.png" not in artifact_paths(store.uri, store.run_id)

    done = _aeexp(store.cwd, "evaluate", store.run_id, "--embed", "tsne", "--tracking-uri", store.uri)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"run {store.run_id} (ae32-b4-digits) at step 2: added 3 metrics" in done.stdout, done.stdout
    after = client.get_run(store.run_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", before.info.end_time)  # not reopened
    assert after.data.tags[evaluate.EVALUATED_TAG]
    assert "tsne.png" in artifact_paths(store.uri, store.run_id)
    steps = _assert_one_value_per_step(store.uri, store.run_id)
    for key in ("knn_acc", "trust", "time"):
        assert steps[f"embed_tsne_{key}"] == [2]  # at the final step, the epochs trained
    # What the run had is as it was: the same values, the same steps.
    assert {k: v for k, v in after.data.metrics.items() if not k.startswith("embed_tsne_")} == before.data.metrics
    assert steps["train_loss"] == [1, 2] and steps["test_probe_acc"] == [2] and steps["embed_pca_trust"] == [2]

    # Measured again in this process: the same weights and data give the logged test and PCA metrics.
    tracking.use_existing_store(store.uri, "runs")
    again = evaluate.evaluate_run(store.run_id, store.uri, evaluate.evaluation_lists(["tsne"]))
    assert again.added == {} and again.figures == [] and again.skipped_views == ["tsne"]  # nothing twice
    compared = [key for key in before.data.metrics if key.startswith(("test_", "pca_"))]
    assert {"test_loss", "test_mse", "test_knn_acc", "test_knn1_acc", "test_knn20_acc", "test_probe_acc",
            "test_kmeans_nmi", "test_kmeans_ari", "pca_test_mse", "pca_probe_acc"} <= set(compared)
    for key in compared:
        assert again.measured[key] == pytest.approx(before.data.metrics[key], abs=1e-5), key
    # ...and what it measured is what scikit-learn computes from the logged model's codes, not only what aeexp logged.
    logged = references.logged_run(store.uri, store.run_id, store.cwd / "reference")
    references.assert_matches(replace(logged, metrics=again.measured), probe=True)
    _assert_one_value_per_step(store.uri, store.run_id)


def test_a_sweep_parent_gets_its_jobs_evaluated_and_its_report_written_anew(store: Store) -> None:
    children = store.children()
    assert len(children) == 2
    report_before = artifact_paths(store.uri, store.parent_id)
    assert "comparison" in report_before
    client = MlflowClient(store.uri)
    assert "comparison/tsne_panel.png" not in {a.path for a in client.list_artifacts(store.parent_id, "comparison")}

    done = _aeexp(store.cwd, "evaluate", "--parent-run", store.parent_id, "--embed", "tsne",
                  "--tracking-uri", store.uri)

    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.strip() == "", done.stderr
    for child in children:
        assert f"run {child} (" in done.stdout
        run = client.get_run(child)
        assert run.info.status == "FINISHED" and evaluate.EVALUATED_TAG in run.data.tags
        assert {"embed_tsne_knn_acc", "embed_tsne_trust", "test_probe_acc"} <= set(run.data.metrics)
        assert "tsne.png" in artifact_paths(store.uri, child)
        _assert_one_value_per_step(store.uri, child)
    assert "wrote the comparison report of sweep " in done.stdout and "sweep sweep" not in done.stdout
    # The report now has the t-SNE panel the jobs' new figures make.
    report = {a.path for a in client.list_artifacts(store.parent_id, "comparison")}
    assert {"comparison/tsne_panel.png", "comparison/report.html", "comparison/comparison.md"} <= report
    assert client.get_run(store.parent_id).info.status == "FINISHED"


def _artifact_folder(uri: str, run_id: str) -> Path:
    return Path(MlflowClient(uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))


def test_a_view_added_again_writes_the_explorer_page_only_where_the_run_has_none(store: Store) -> None:
    tracking.use_existing_store(store.uri, "runs")
    folder = _artifact_folder(store.uri, store.run_id)
    explorer_before = (folder / "explorer.html").read_bytes()
    (folder / "pca.png").unlink()

    assert evaluate.evaluate_run(store.run_id, store.uri, evaluate.evaluation_lists(["pca"])).figures == ["pca.png"]
    assert (folder / "explorer.html").read_bytes() == explorer_before  # the run's own page is kept

    (folder / "pca.png").unlink()
    (folder / "explorer.html").unlink()  # a run from before the explorer, or whose page was deleted
    evaluated = evaluate.evaluate_run(store.run_id, store.uri, evaluate.evaluation_lists(["pca"]))

    assert evaluated.figures == ["pca.png", "explorer.html"] and evaluated.added == {}
    page = (folder / "explorer.html").read_text(encoding="utf-8")
    assert "PCA of ae32 codes (bottleneck 4) on digits" in page and "data:image/png;base64," in page
    _assert_one_value_per_step(store.uri, store.run_id)


def _logged_model_folder(uri: str, run_id: str) -> Path:
    """Where the artifact store keeps run ``run_id``'s logged model (MLflow 3: a logged model of its own)."""
    client = MlflowClient(uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    (model,) = [m for m in client.search_logged_models(experiment_ids=[experiment_id]) if m.source_run_id == run_id]
    return Path(model.artifact_location.removeprefix("file://"))


def test_a_run_whose_model_is_gone_is_one_line_and_the_others_go_on(store: Store) -> None:
    weights = _logged_model_folder(store.uri, store.run_id) / "extra_files"
    assert (weights / "weights.pt").is_file()
    shutil.rmtree(weights)

    done = _aeexp(store.cwd, "evaluate", "--experiment", "digits", "--tracking-uri", store.uri)

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: run {store.run_id} (ae32-b4-digits): its model cannot be loaded")
    assert "weights.pt" in lines[0]
    for child in store.children():  # the sweep's jobs are evaluated all the same
        assert f"run {child} (" in done.stdout
    assert "evaluated 2 of 3 finished runs; 1 could not be" in done.stdout
    assert MlflowClient(store.uri).get_run(store.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(("args", "message"), [
    (["0123abcd"], "no run '0123abcd' at sqlite:///"),
    (["--parent-run", "0123abcd"], "no run '0123abcd' at sqlite:///"),
    (["--experiment", "nope"], "no experiment 'nope' at sqlite:///"),
])
def test_an_unknown_run_or_experiment_is_one_line(store: Store, capsys: pytest.CaptureFixture[str], args: list[str],
                                                  message: str) -> None:
    assert evaluate.main([*args, "--tracking-uri", store.uri]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


def test_a_sweep_job_given_as_parent_and_a_parent_given_as_run_are_refused(store: Store,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main([store.parent_id, "--tracking-uri", store.uri]) == 1
    assert f"give --parent-run {store.parent_id}" in capsys.readouterr().err
    assert evaluate.main(["--parent-run", store.run_id, "--tracking-uri", store.uri]) == 1
    assert "is not a sweep's parent run" in capsys.readouterr().err


def test_a_run_whose_data_is_gone_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (200, 8, 8), dtype=np.uint8), np.arange(200) % 3
    np.savez(tmp_path / "mine.npz", x_train=images[:140], x_test=images[140:], y_train=labels[:140],
             y_test=labels[140:])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = _aeexp(tmp_path, "dataset=arrays", "dataset.path=mine.npz", "dataset.name=mine", "model=ae32",
                     "model.widths=[16]", "model.bottleneck=2", "embed=pca", f"tracking.uri={uri}", *FAST)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = runs_in(uri, "mine")
    (tmp_path / "mine.npz").unlink()
    monkeypatch.chdir(tmp_path)  # where it trained: the config's relative dataset.path is found from here

    assert evaluate.main([run.info.run_id, "--tracking-uri", uri]) == 1

    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: run {run.info.run_id} (ae32-b2-mine): its data cannot be read again: "), line
    assert "mine.npz" in line
    assert evaluate.EVALUATED_TAG not in MlflowClient(uri).get_run(run.info.run_id).data.tags
