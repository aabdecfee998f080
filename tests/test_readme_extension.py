"""The README's "Adding a metric" and "Adding a view", run as they are written there: the files are taken from the
README's own code blocks (a user metric with numpy, Isomap from scikit-learn, their YAML entries) into a folder
outside the package, and its three commands run through the real CLI against a real sqlite store, with the test's
quick settings added. One run logs the metric, its ``pca_`` twin, the view's figure and metrics; ``aeexp evaluate``
adds both to a run logged without them; a 2-job sweep's report has the metric as a column and a plot."""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, runs_in

README = Path(__file__).resolve().parents[1] / "README.md"
HOME = "~/aeexp-ext"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    return text[start:text.index("\n## ", start + 1)]


def _files(section: str) -> dict[str, str]:
    """The files a section shows: a code block right after a line ending in ```~/aeexp-ext/<path>`:``."""
    return dict(re.findall(rf"`{re.escape(HOME)}/([\w/.]+)`:\n\n```(?:python|yaml)\n(.*?)```", section, re.S))


def _commands(section: str) -> list[str]:
    """The section's shell commands (``PYTHONPATH=~/aeexp-ext python -m aeexp ...``), what follows ``python``."""
    return re.findall(rf"^PYTHONPATH={re.escape(HOME)} python (-m aeexp.*)$", section, re.M)


@pytest.fixture(scope="module")
def extension(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's files, written where it says, under a temp folder standing for ``~``."""
    home = tmp_path_factory.mktemp("home") / "aeexp-ext"
    files = {**_files(_section("Adding a metric")), **_files(_section("Adding a view"))}
    assert set(files) == {"mymetrics.py", "configs/metrics/correlation.yaml", "myviews.py",
                          "configs/embed/isomap.yaml"}
    for path, text in files.items():
        (home / path).parent.mkdir(parents=True, exist_ok=True)
        (home / path).write_text(text)
    return home


def _run(command: str, home: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python <command> <extra>`` as a shell would run it, ``~/aeexp-ext`` being ``home``."""
    args = shlex.split(command.replace(HOME, shlex.quote(str(home))))
    env = {**os.environ, "PYTHONPATH": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, *args, *extra], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    return done


def test_the_readme_s_metric_and_view_reach_a_run_evaluate_and_a_sweep(extension: Path, tmp_path: Path,
                                                                       new_sqlite_store) -> None:
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    run, evaluate, sweep = _commands(_section("Adding a metric"))
    quick = [f"tracking.uri={uri}", *FAST]

    _run(run, extension, tmp_path, *quick)
    (logged,) = runs_in(uri, "digits")
    metrics = logged.data.metrics
    assert 0 <= metrics["test_code_correlation"] <= 1 and 0 <= metrics["pca_code_correlation"] <= 1
    assert {"test_knn_acc", "pca_knn_acc", "embed_tsne_trust"} <= set(metrics)  # aeexp's own, beside them
    assert {f"embed_isomap_{key}" for key in ("knn_acc", "trust", "time")} <= set(metrics)
    assert metrics["embed_knn_acc"] == metrics["embed_tsne_knn_acc"]  # t-SNE first: the headline view
    assert {"isomap.png", "tsne.png", "explorer.html"} <= artifact_paths(uri, logged.info.run_id)
    assert logged.data.params["metrics.code_correlation._target_"] == "mymetrics.code_correlation"

    _run("-m aeexp embed=pca tracking.experiment=older", extension, tmp_path, *quick)  # an older run
    (older,) = runs_in(uri, "older")
    assert "test_code_correlation" not in older.data.metrics
    _run(evaluate.replace("<run id>", older.info.run_id), extension, tmp_path, "--tracking-uri", uri)
    older = MlflowClient(uri).get_run(older.info.run_id)
    assert {"test_code_correlation", "pca_code_correlation", "embed_isomap_trust"} <= set(older.data.metrics)
    assert "isomap.png" in artifact_paths(uri, older.info.run_id)

    done = _run(sweep, extension, tmp_path, *quick, "tracking.experiment=sweep")
    (parent,) = [r for r in runs_in(uri, "sweep") if "sweep.name" in r.data.tags]
    report = Path(parent.data.tags["sweep.dir"]) / "comparison"
    with (report / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(float(row["test_code_correlation"]) >= 0 for row in rows), done.stdout[-2000:]
    assert "pca_code_correlation" in rows[0]
    from aeexp import compare, tracking

    tracking.use_uri(uri)
    figure = compare.bottleneck_figure(tracking.child_runs(parent.info.run_id))
    assert "test_code_correlation" in [ax.get_title() for ax in figure.axes]
    assert (report / "isomap_panel.png").is_file() and (report / "metrics_vs_bottleneck.png").is_file()
