"""``aeexp rerun``: a real run trained through the CLI on a real ``.npz`` in a real sqlite store, re-run by the real
command from its logged config: the same final metrics on a CPU, a changed data hash said, a planted config refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import runs_in

from aeexp import rerun


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", "SECRET_FOR_TEST": "s3cr3t"}


def _write_npz(path: Path, bump: bool = False) -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (200, 8, 8), dtype=np.uint8), np.arange(200) % 3
    if bump:
        images[150, 3, 3] ^= 1  # one test pixel
    np.savez(path, x_train=images[:140], x_test=images[140:], y_train=labels[:140], y_test=labels[140:])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A run on ``mine.npz`` (t-SNE and PCA views): its folder, the store's URI and its id."""
    cwd = tmp_path_factory.mktemp("rerun")
    _write_npz(cwd / "mine.npz")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "aeexp", "dataset=arrays", "dataset.path=mine.npz",
                           "dataset.name=mine", "model=ae32", "model.widths=[16]", "model.bottleneck=3",
                           "embed=[tsne,pca]", f"tracking.uri={uri}", *FAST], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(uri, "mine")
    return cwd, uri, run.info.run_id


def _rerun(cwd: Path, uri: str, run_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aeexp", "rerun", run_id, "--tracking-uri", uri], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=300)


def test_a_cpu_run_is_reproduced_exactly(trained):
    cwd, uri, run_id = trained
    done = _rerun(cwd, uri, run_id)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "reproduced: every final metric within its tolerance" in done.stdout
    assert "data hash: the same (sha256:" in done.stdout
    assert "package versions and git commit: the same" in done.stdout
    (new,) = [r for r in runs_in(uri, "mine") if r.info.run_id != run_id]
    assert new.data.tags[rerun.RERUN_TAG] == run_id and new.info.status == "FINISHED"
    original = MlflowClient(uri).get_run(run_id).data.metrics
    compared = {key for key in original if not key.endswith("_time")}
    assert {"test_loss", "test_mse", "test_knn_acc", "pca_test_mse", "embed_pca_trust", "val_loss"} <= compared
    exact = {key: (original[key], new.data.metrics[key]) for key in compared if not key.startswith("embed_tsne_")}
    assert {key: pair for key, pair in exact.items() if pair[0] != pair[1]} == {}
    for key in compared - set(exact):  # the t-SNE view's: within the stated tolerance
        assert abs(original[key] - new.data.metrics[key]) <= rerun.TOLERANCES["embed_tsne_"]


def test_a_changed_data_hash_is_said(trained):
    cwd, uri, run_id = trained
    _write_npz(cwd / "mine.npz", bump=True)
    try:
        done = _rerun(cwd, uri, run_id)
    finally:
        _write_npz(cwd / "mine.npz")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "data hash: differs (sha256:" in done.stdout and "the data changed" in done.stdout.splitlines()[-1]


@pytest.mark.parametrize("planted", [{"tags": {"leak": "${oc.env:SECRET_FOR_TEST}"}},
                                     {"optimizer": {"_target_": "builtins.open", "file": "planted.txt", "mode": "w"}}])
def test_a_planted_config_is_refused_and_nothing_runs(trained, tmp_path, planted):
    cwd, uri, run_id = trained
    client = MlflowClient(uri)
    folder = tmp_path / "planted"
    folder.mkdir()
    stored = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
    (folder / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(stored.read_text()), **planted}))
    client.log_artifact(run_id, str(folder / "config.yaml"))
    before = {r.info.run_id for r in runs_in(uri, "mine")}
    try:
        done = _rerun(cwd, uri, run_id)
    finally:
        client.log_artifact(run_id, str(stored))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: run {run_id}'s config.yaml ") and ("refused" in line or "nothing was" in line)
    assert "s3cr3t" not in done.stdout + done.stderr and not (cwd / "planted.txt").exists()
    assert {r.info.run_id for r in runs_in(uri, "mine")} == before  # no new run


def test_tolerances_are_exact_but_for_the_t_sne_view():
    assert rerun.tolerance("test_loss") == 0.0 and rerun.tolerance("embed_pca_trust") == 0.0
    assert rerun.tolerance("embed_tsne_trust") == rerun.TOLERANCES["embed_tsne_"] > 0
    assert rerun.tolerance("embed_trust", first_view="tsne") > 0 and rerun.tolerance("embed_trust", "pca") == 0.0
    rows = rerun.compare_metrics({"test_loss": 0.5, "embed_tsne_trust": 0.9, "epoch_time": 3.0},
                                 {"test_loss": 0.5 + 1e-9, "embed_tsne_trust": 0.91, "epoch_time": 4.0})
    assert [(row.metric, row.within) for row in rows] == [("embed_tsne_trust", True), ("test_loss", False)]
    assert "not reproduced (exact expected)" in rerun.table(rows)
