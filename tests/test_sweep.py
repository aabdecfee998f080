"""Sweeps end to end: Hydra multiruns as MLflow parent/child runs on a real server and a real sqlite store."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_server import free_port
from mlflow_store import assert_no_running, runs_in

REPORT = {"comparison.csv", "comparison_by_setting.csv", "comparison.md", "metrics_vs_bottleneck.png",
          "reconstruction_panel.png", "tsne_panel.png", "report.html"}


def _parent_and_children(tracking_uri: str, experiment: str):
    runs = runs_in(tracking_uri, experiment)
    parents = [r for r in runs if "sweep.name" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every other run of the experiment is a child of the sweep"
    return parent, children


def _report_artifacts(tracking_uri: str, run_id: str) -> set[str]:
    return {Path(a.path).name for a in MlflowClient(tracking_uri).list_artifacts(run_id, "comparison")}


def _check_finished_sweep(tracking_uri: str, experiment: str, expected_names: set[str]) -> None:
    parent, children = _parent_and_children(tracking_uri, experiment)
    assert parent.info.status == "FINISHED"
    assert "model.bottleneck=2,8" in parent.data.tags["sweep.overrides"]
    assert parent.data.tags["sweep.dir"].endswith(tuple("0123456789"))
    assert {c.info.run_name for c in children} == expected_names
    client = MlflowClient(tracking_uri)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["sweep.job_overrides"]
        assert {"test_loss", "test_knn_acc", "embed_knn_acc", "embed_trust"} <= set(child.data.metrics)
        assert math.isfinite(child.data.metrics["test_loss"])
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [1, 2]
        assert {"tsne.png", "reconstructions.png", "loss_curves.png"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)}
    assert _report_artifacts(tracking_uri, parent.info.run_id) == REPORT


def test_basic_sweep_on_a_server(run_cli, server_uri):
    done = run_cli("-m", "model.bottleneck=2,8", "model=ae32,ae25", f"tracking.uri={server_uri}",
                   "tracking.experiment=basic_sweep", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_finished_sweep(server_uri, "basic_sweep", {"ae32-b2-digits", "ae32-b8-digits", "ae25-b2-digits",
                                                      "ae25-b8-digits"})


def test_joblib_sweep_on_a_server(run_cli, server_uri):
    done = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=ae25,ae32",
                   "model.bottleneck=2,8", f"tracking.uri={server_uri}", "tracking.experiment=joblib_sweep", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_finished_sweep(server_uri, "joblib_sweep", {"ae32-b2-digits", "ae32-b8-digits", "ae25-b2-digits",
                                                       "ae25-b8-digits"})


def test_submitit_local_sweep_on_a_server(run_cli, server_uri):
    done = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model.bottleneck=2,8",
                   f"tracking.uri={server_uri}", "tracking.experiment=submitit_sweep", *FAST, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    parent, children = _parent_and_children(server_uri, "submitit_sweep")
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["ae32-b2-digits", "ae32-b8-digits"]
    assert all(c.info.status == "FINISHED" for c in children)


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(run_cli, tracking_uri, tmp_path):
    done = run_cli("-m", "model.bottleneck=8,100", "optimizer.lr=1e-3,1e20", "optimizer=sgd",
                   f"tracking.uri={tracking_uri}", *FAST)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "3 of 4 jobs failed" in output
    assert "Traceback" not in output
    parent, children = _parent_and_children(tracking_uri, "digits")
    assert parent.info.status == "FAILED"
    assert "3 of 4 jobs failed" in parent.data.tags["error"]
    by_status = {}
    for child in children:
        by_status.setdefault(child.info.status, []).append(child)
    assert len(by_status["FINISHED"]) == 1 and len(by_status["FAILED"]) == 3
    errors = sorted(c.data.tags["error"] for c in by_status["FAILED"])
    assert sum("model.bottleneck=100 is invalid" in e for e in errors) == 2  # refused before training
    assert sum("training loss became" in e and "optimizer.lr (now 1e+20)" in e for e in errors) == 1  # NaN
    assert all(c.data.params.get("model.bottleneck") in {"8", "100"} for c in children)
    assert all(c.data.params.get("optimizer._target_") == "torch.optim.SGD" for c in children)
    assert sorted(c.data.params.get("optimizer.lr") for c in children) == ["0.001", "0.001", "1e+20", "1e+20"]
    assert_no_running(tracking_uri)
    # The report covers failed jobs too.
    sweep_dir = Path(parent.data.tags["sweep.dir"])
    with (sweep_dir / "comparison" / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["status"] for r in rows) == ["FAILED", "FAILED", "FAILED", "FINISHED"]


def test_unreachable_server_fails_the_sweep_before_any_job(run_cli):
    done = run_cli("-m", "model.bottleneck=2,8", f"tracking.uri=http://127.0.0.1:{free_port()}", *FAST,
                   timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "is unreachable" in output
    assert "Traceback" not in output
    assert "Launching" not in output


def test_optuna_search_returns_val_loss_to_the_sweeper(run_cli, tracking_uri, tmp_path):
    done = run_cli("hparams_search=fashion_optuna", "dataset=digits", "hydra.sweeper.n_trials=3",
                   f"tracking.uri={tracking_uri}", *FAST, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    parent, children = _parent_and_children(tracking_uri, "fashion_optuna")
    assert parent.info.run_name == "fashion_optuna" and parent.info.status == "FINISHED"
    assert len(children) == 3
    results = yaml.safe_load(next((tmp_path / "multirun").rglob("optimization_results.yaml")).read_text())
    best = min(c.data.metrics["val_loss"] for c in children)
    assert results["best_value"] == best  # the objective is the final val_loss of the best child
    assert set(results["best_params"]) == {"optimizer.lr", "model.bottleneck", "model"}
    best_child = min(children, key=lambda c: c.data.metrics["val_loss"])
    assert float(best_child.data.params["optimizer.lr"]) == pytest.approx(results["best_params"]["optimizer.lr"])
    assert all(0.0003 <= float(c.data.params["optimizer.lr"]) <= 0.01 for c in children)  # the searched interval


def test_compare_command_on_an_experiment(run_cli, tracking_uri, tmp_path):
    done = run_cli("-m", "model.bottleneck=2,8", f"tracking.uri={tracking_uri}", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "report"
    compared = subprocess.run([sys.executable, "-m", "aeexp.compare", "--experiment", "digits",
                               "--tracking-uri", tracking_uri, "--out", str(out)], capture_output=True,
                              text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    assert {p.name for p in out.iterdir()} == REPORT
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert sorted(r["bottleneck"] for r in rows) == ["2", "8"]  # the parent run is left out
    assert "| ae32-b8-digits | FINISHED |" in compared.stdout
    parent, _ = _parent_and_children(tracking_uri, "digits")
    again = subprocess.run([sys.executable, "-m", "aeexp", "compare", "--parent-run", parent.info.run_id,
                            "--tracking-uri", tracking_uri, "--out", str(tmp_path / "again")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert {p.name for p in (tmp_path / "again").iterdir()} == REPORT
    missing = subprocess.run([sys.executable, "-m", "aeexp.compare", "--experiment", "nope", "--tracking-uri",
                              tracking_uri], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert missing.returncode == 1 and "no experiment 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_presets_compose(make_config):
    """The seed notebooks' presets: composed as the CLI does, and built into the real model and optimizer."""
    from aeexp import data, models
    from aeexp.training import optim

    def built(cfg):
        model = models.build(cfg.model, data.build(cfg.dataset).image_shape)  # reads no data
        return model, optim.build_optimizer(cfg.optimizer, model)

    mnist = make_config("experiment=seed_mnist_ae25")
    assert mnist.dataset.name == "mnist" and mnist.model.name == "ae25"
    assert list(mnist.model.widths) == [400, 200, 100, 50] and mnist.model.bottleneck == 25
    assert mnist.model.loss == "bce" and mnist.model.noise == "none"
    assert mnist.optimizer._target_ == "torch.optim.SGD" and mnist.optimizer.lr == 1.5
    assert mnist.optimizer.momentum == 0.0 and mnist.scheduler._target_ is None
    assert mnist.trainer.batch_size == 32 and mnist.trainer.epochs == 50
    model, optimizer = built(mnist)
    assert type(model) is models.DenseAutoencoder and model.loss == "bce" and model.bottleneck == 25
    assert [layer.out_features for layer in model.encoder if hasattr(layer, "out_features")] == [400, 200, 100, 50, 25]
    assert type(optimizer) is torch.optim.SGD
    assert all(g["lr"] == 1.5 and g["momentum"] == 0.0 for g in optimizer.param_groups)

    fashion = make_config("experiment=seed_fmnist_ae32")
    assert fashion.dataset.name == "fashion_mnist" and fashion.model.name == "ae32"
    assert list(fashion.model.widths) == [128, 64] and fashion.model.bottleneck == 32 and fashion.model.loss == "bce"
    assert fashion.optimizer._target_ == "torch.optim.Adam" and fashion.optimizer.lr == 1e-3
    assert fashion.trainer.batch_size == 256 and fashion.trainer.epochs == 10
    model, optimizer = built(fashion)
    assert type(model) is models.DenseAutoencoder and model.image_shape == (1, 28, 28)
    assert type(optimizer) is torch.optim.Adam and all(g["lr"] == 1e-3 for g in optimizer.param_groups)

    # The CLI prints the same composition.
    done = subprocess.run([sys.executable, "-m", "aeexp", "experiment=seed_mnist_ae25", "--cfg", "job"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job = yaml.safe_load(done.stdout)
    assert job["optimizer"]["lr"] == 1.5 and job["optimizer"]["_target_"] == "torch.optim.SGD"
    assert job["model"]["name"] == "ae25" and job["trainer"]["batch_size"] == 32


def test_the_mlflow_ui_shows_the_sweep_children(run_cli, server_uri, tmp_path):
    from browser import screenshot_sweep

    done = run_cli("-m", "model.bottleneck=2,8", f"tracking.uri={server_uri}", "tracking.experiment=ui_sweep",
                   *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment_id = MlflowClient(server_uri).get_experiment_by_name("ui_sweep").experiment_id
    screenshot = tmp_path / "mlflow-ui.png"
    text = screenshot_sweep(server_uri, experiment_id, "sweep model.bottleneck=2,8",
                            ["ae32-b2-digits", "ae32-b8-digits"], screenshot)
    assert "ae32-b2-digits" in text and "ae32-b8-digits" in text
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigterm_ends_the_sweep_and_its_runs_killed(tmp_path, tracking_uri):
    import os
    import signal

    process = subprocess.Popen([sys.executable, "-m", "aeexp", "-m", "model.bottleneck=2,8",
                                f"tracking.uri={tracking_uri}", "trainer.epochs=500", "trainer.progress=false"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in process.stdout:  # until the first job's run has started training
            seen.append(line)
            if "epoch 1/500" in line:
                break
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
        output = "".join(seen) + output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, output[-2000:]
    assert "interrupted" in output and "Traceback" not in output
    assert "database is locked" not in output
    parent, children = _parent_and_children(tracking_uri, "digits")
    assert parent.info.status == "KILLED"
    assert [c.info.status for c in children] == ["KILLED"]
    assert_no_running(tracking_uri)
    assert os.path.exists(parent.data.tags["sweep.dir"])
