"""``aeexp evaluate`` on a run whose data changed since it ran, and two of them on one run at once (#25 item 8): real
runs trained through the CLI on a real ``.npz`` in a real sqlite store, evaluated by the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import runs_in

from aeexp import evaluate, novelty
from aeexp.evaluation import stability


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _write_npz(path: Path, extra: int = 0) -> None:
    """200 random 8x8 images in 3 classes (``extra`` more test images appended: the data changed)."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (200 + extra, 8, 8), dtype=np.uint8), np.arange(200 + extra) % 3
    np.savez(path, x_train=images[:140], x_test=images[140:], y_train=labels[:140], y_test=labels[140:])


@pytest.fixture
def trained(tmp_path: Path) -> tuple[str, str]:
    """A run on ``mine.npz`` in ``tmp_path`` (the current folder of what follows): the store's URI and its id."""
    _write_npz(tmp_path / "mine.npz")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "aeexp", "dataset=arrays", "dataset.path=mine.npz",
                           "dataset.name=mine", "model=ae32", "model.widths=[16]", "model.bottleneck=2", "embed=pca",
                           f"tracking.uri={uri}", *FAST], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(uri, "mine")
    return uri, run.info.run_id


def _histories(uri: str, run_id: str) -> dict[str, list[int]]:
    client = MlflowClient(uri)
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key))
            for key in client.get_run(run_id).data.metrics}


def test_evaluate_refuses_a_run_whose_data_changed(trained, tmp_path, monkeypatch, capsys):
    uri, run_id = trained
    before = _histories(uri, run_id)
    _write_npz(tmp_path / "mine.npz", extra=6)  # images added to the test split
    monkeypatch.chdir(tmp_path)

    assert evaluate.main([run_id, "--tracking-uri", uri, "--embed", "tsne"]) == 1

    (line,) = capsys.readouterr().err.strip().splitlines()
    said = f"error: run {run_id} (ae32-b2-mine): its data changed since it ran (data.hash sha256:"
    assert line.startswith(said), line
    assert _histories(uri, run_id) == before  # nothing measured on other images
    assert evaluate.EVALUATED_TAG not in MlflowClient(uri).get_run(run_id).data.tags


def test_two_evaluates_of_one_run_at_once_log_each_metric_once(trained, tmp_path):
    uri, run_id = trained
    artifacts = Path(MlflowClient(uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    codes_file, errors_file = artifacts / stability.CODES_ARTIFACT, artifacts / novelty.TEST_ERRORS
    codes_file.unlink()  # as a run logged before the sweep report's stability columns
    errors_file.unlink()  # ...and before encode's novelty flags
    command = [sys.executable, "-m", "aeexp.evaluate", run_id, "--tracking-uri", uri, "--embed", "tsne"]
    both = [subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    steps = _histories(uri, run_id)
    assert {key: s for key, s in steps.items() if len(s) != len(set(s))} == {}
    assert steps["embed_tsne_trust"] == steps["test_loss"]  # one t-SNE value, at the final step
    tags = MlflowClient(uri).get_run(run_id).data.tags
    assert tags["data.hash"].startswith("sha256:") and f"{evaluate.EVALUATED_TAG}.data.hash" not in tags
    assert stability.read_codes(codes_file) is not None  # logged again
    assert novelty.read_reference(errors_file).shape == (60,)  # each of the 60 test images
