"""Sweeps end to end: Hydra multiruns as MLflow parent/child runs on a real server and a real sqlite store."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import references
import torch
import yaml
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_server import free_port
from mlflow_store import assert_no_running, runs_in

from aeexp import threads

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


# What the README promises of comparison.csv / .md: "one row per child: status, the overrides that vary, dataset,
# model, bottleneck, val_loss, test_loss, test_mse, each other final test_* metric of the metric list (by name), each
# beside its PCA baseline, embed_knn_acc, embed_trust, the latent health of the test codes (by name), error" (and the
# run name): the health (an autoencoder's: active and dead units) after the metrics a run is judged by.
CODE_METRICS = ("kmeans_ari", "kmeans_nmi", "knn1_acc", "knn20_acc", "knn_acc", "probe_acc")  # conf/metrics, by name
PROMISED_COLUMNS = ("run", "status", "overrides", "dataset", "model", "bottleneck", "val_loss", "test_loss",
                    "test_mse", "pca_test_mse", *(f"{p}_{m}" for m in CODE_METRICS for p in ("test", "pca")),
                    "embed_knn_acc", "embed_trust", "test_latent_active_units", "test_latent_dead_units", "error")
# metrics_vs_bottleneck.png: these metrics, and PCA's baseline of the same size dashed for all but the loss.
PLOTTED = ("test_loss", "test_mse", *(f"test_{m}" for m in CODE_METRICS), "embed_knn_acc")
BASELINES = {"test_mse": "pca_test_mse", **{f"test_{m}": f"pca_{m}" for m in CODE_METRICS}}


def _line_label(run) -> str:
    return f"{run.params['model.name']} on {run.params['dataset.name']}"


def _check_report(tracking_uri: str, parent, swept: tuple[str, ...], scratch: Path) -> None:
    """The report logged to the parent holds what the README promises, computed from the children as MLflow has them:
    the table's columns and values, and figures equal, pixel for pixel, to ones drawn here from the children's
    records, whose plot has one line per model and dataset through each child's point."""
    import matplotlib.image

    from aeexp import compare, tracking

    tracking.use_uri(tracking_uri)
    children = tracking.child_runs(parent.info.run_id)
    report = Path(MlflowClient(tracking_uri).download_artifacts(parent.info.run_id, "comparison", str(scratch)))
    with (report / "comparison.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == PROMISED_COLUMNS
        rows = {row["run"]: row for row in reader}
    markdown = (report / "comparison.md").read_text().splitlines()
    assert markdown[4] == "| " + " | ".join(PROMISED_COLUMNS) + " |"  # (under the title and the verdict)
    assert set(rows) == {child.name for child in children} and len(rows) == len(children)
    for child in children:
        row = rows[child.name]
        varying = {o for o in child.tags["sweep.job_overrides"].split() if o.split("=")[0] in swept}
        assert set(row["overrides"].split()) == varying, row
        assert (row["status"], row["dataset"], row["model"], row["bottleneck"]) == (
            child.status, child.params["dataset.name"], child.params["model.name"], child.params["model.bottleneck"])
        for metric in PROMISED_COLUMNS[6:-1]:
            assert row[metric] == f"{child.metrics[metric]:.4f}", (child.name, metric)
        assert any(line.startswith(f"| {child.name} | {child.status} |") for line in markdown)

    figure = compare.bottleneck_figure(children)
    panels = [ax for ax in figure.axes if ax.axison]  # (an odd number of panels leaves the last cell empty)
    assert [ax.get_title() for ax in panels] == list(PLOTTED)
    for ax, metric in zip(panels, PLOTTED, strict=True):
        lines = {bars.get_label(): bars.lines[0] for bars in ax.containers}  # errorbar: mean ± std over seeds
        assert set(lines) == {_line_label(c) for c in children} and len(lines) > 1  # a line per model and dataset
        for label, line in lines.items():
            points = sorted((int(c.params["model.bottleneck"]), c.metrics[metric]) for c in children
                            if _line_label(c) == label)
            assert list(line.get_xdata()) == [x for x, _ in points]
            assert list(line.get_ydata()) == [y for _, y in points]
        dashed = {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() == "--"}
        if metric in BASELINES:  # PCA of the same size, one dashed line per dataset
            assert set(dashed) == {f"PCA on {c.params['dataset.name']}" for c in children}
            (line,) = dashed.values()
            pca = {(int(c.params["model.bottleneck"]), c.metrics[BASELINES[metric]]) for c in children}
            assert list(line.get_xdata()) == sorted({x for x, _ in pca})
            assert set(zip(line.get_xdata(), line.get_ydata(), strict=True)) <= pca
        else:
            assert not dashed
    panel = compare.view_panel(children, "tsne", scratch / "tsne")
    assert [ax.get_title() for ax in panel.axes if ax.get_title()] == [child.name for child in children]
    for name, drawn, dpi in (("metrics_vs_bottleneck.png", figure, compare.PLOT_DPI),
                             ("tsne_panel.png", panel, compare.PANEL_DPI)):
        drawn.savefig(scratch / name, dpi=dpi)
        logged, redrawn = matplotlib.image.imread(report / name), matplotlib.image.imread(scratch / name)
        assert logged.shape == redrawn.shape and (logged == redrawn).all(), f"{name} is not that figure"
        assert logged[..., :3].std() > 0.05, f"{name} is blank"


def _check_finished_sweep(tracking_uri: str, experiment: str, expected_names: set[str], scratch: Path) -> None:
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
        references.assert_matches(references.logged_run(tracking_uri, child.info.run_id, scratch / child.info.run_id))
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [1, 2]
        assert {"tsne.png", "reconstructions.png", "loss_curves.png"} <= {
            a.path for a in client.list_artifacts(child.info.run_id)}
    assert _report_artifacts(tracking_uri, parent.info.run_id) == REPORT
    _check_report(tracking_uri, parent, ("model", "model.bottleneck"), scratch)


def test_basic_sweep_on_a_server(run_cli, server_uri, tmp_path):
    done = run_cli("-m", "model.bottleneck=2,8", "model=ae32,ae25", f"tracking.uri={server_uri}",
                   "tracking.experiment=basic_sweep", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_finished_sweep(server_uri, "basic_sweep", {"ae32-b2-digits", "ae32-b8-digits", "ae25-b2-digits",
                                                      "ae25-b8-digits"}, tmp_path)


def test_joblib_sweep_on_a_server(run_cli, server_uri, tmp_path):
    done = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=ae25,ae32",
                   "model.bottleneck=2,8", f"tracking.uri={server_uri}", "tracking.experiment=joblib_sweep", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_finished_sweep(server_uri, "joblib_sweep", {"ae32-b2-digits", "ae32-b8-digits", "ae25-b2-digits",
                                                       "ae25-b8-digits"}, tmp_path)
    # Each of the 2 parallel jobs got its share of the cores (trainer.threads null: the cores / 2).
    _, children = _parent_and_children(server_uri, "joblib_sweep")
    assert {c.data.tags["threads"] for c in children} == {str(threads.share(2))}
    assert {c.data.params["trainer.threads"] for c in children} == {"None"}
    # The 4 jobs ran in the pool's 2 worker processes, each reused for a second job (imports, caches kept).
    assert len({c.data.tags["sweep.pid"] for c in children}) <= 2


def test_submitit_local_sweep_on_a_server(run_cli, server_uri):
    done = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model.bottleneck=2,8",
                   f"tracking.uri={server_uri}", "tracking.experiment=submitit_sweep", *FAST, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    parent, children = _parent_and_children(server_uri, "submitit_sweep")
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["ae32-b2-digits", "ae32-b8-digits"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["threads"] for c in children} == {str(threads.share(2))}  # both jobs at once


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


# --- jobs whose process dies or is stopped: every child ends FAILED or KILLED, one line says which and why ---------


def _sweep_in_background(tmp_path: Path, tracking_uri: str, *overrides: str) -> subprocess.Popen:
    """``python -m aeexp -m OVERRIDES`` in a process group of its own (a terminal's Ctrl-C reaches the whole group),
    its output in ``tmp_path / "out.txt"``."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "out.txt").open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "aeexp", "-m", *overrides, f"tracking.uri={tracking_uri}",
                                 "trainer.progress=false", "embed.n_samples=200"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until_training(process: subprocess.Popen, tracking_uri: str, jobs: set[str], tmp_path: Path,
                         timeout: float = 600) -> dict:
    """The runs of the sweep's jobs numbered ``jobs``, once each is RUNNING and has finished an epoch."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
        try:
            running = {r.data.tags["sweep.job"]: r for r in runs_in(tracking_uri)
                       if r.info.status == "RUNNING" and "sweep.job" in r.data.tags}
            if set(running) >= jobs and all(client.get_metric_history(running[j].info.run_id, "train_loss")
                                            for j in jobs):
                return running
        except MlflowException:  # the store is busy with the jobs' writes: ask again
            pass
        time.sleep(1)
    raise AssertionError("the jobs did not start training: " + (tmp_path / "out.txt").read_text()[-3000:])


def _output_when_done(process: subprocess.Popen, tmp_path: Path, timeout: float = 300) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return (tmp_path / "out.txt").read_text()


def _the_error_line(output: str) -> str:
    """The command's one line about what went wrong (no traceback, from any process it started)."""
    assert "Traceback" not in output and "Error executing job" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "error: " in line]
    assert len(errors) == 1, errors
    return errors[0]


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _report_rows(parent) -> dict[str, dict[str, str]]:
    with (Path(parent.data.tags["sweep.dir"]) / "comparison" / "comparison.csv").open() as handle:
        return {row["run"]: row for row in csv.DictReader(handle)}


def _faulted_sweep(tmp_path: Path, tracking_uri: str, jobs: set[str], fault, exit_code: int, *overrides: str
                   ) -> tuple[str, dict]:
    """A sweep of ``overrides`` in the background, ``fault(process, runs)`` done to it once the jobs numbered ``jobs``
    train; returns its one error line (after checking its exit code) and those jobs' runs."""
    process = _sweep_in_background(tmp_path, tracking_uri, *overrides)
    running = _wait_until_training(process, tracking_uri, jobs, tmp_path)
    fault(process, running)
    output = _output_when_done(process, tmp_path)
    assert process.returncode == exit_code, output[-3000:]
    return _the_error_line(output), running


def _sigkill_job(num: str):
    """The OOM killer's SIGKILL to the process of the job numbered ``num``."""
    return lambda process, running: os.kill(int(running[num].data.tags["sweep.pid"]), signal.SIGKILL)


def test_a_joblib_worker_killed_by_the_oom_killer_fails_its_jobs_in_one_line(tmp_path, tracking_uri):
    """SIGKILL to one worker, as the OOM killer sends: loky stops the pool's other job too and never starts the
    third; both runs end FAILED with the cause, the third job is named as not run, the report is written."""
    line, _ = _faulted_sweep(tmp_path, tracking_uri, {"0", "1"}, _sigkill_job("1"), 1, "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "model.bottleneck=2,8,32", "trainer.epochs=5000")
    assert "2 of 3 jobs failed (" in line and "1 of 3 did not run (model.bottleneck=32)" in line, line
    assert "a joblib worker process was killed" in line and "SIGKILL" in line, line
    parent, children = _parent_and_children(tracking_uri, "digits")
    assert parent.info.status == "FAILED" and parent.data.tags["error"] in line
    assert {c.info.run_name: c.info.status for c in children} == {"ae32-b2-digits": "FAILED",
                                                                   "ae32-b8-digits": "FAILED"}
    for child in children:
        assert "a joblib worker process was killed" in child.data.tags["error"]
        assert f"resume={child.info.run_id}" in child.data.tags["error"]  # its checkpoint of the last whole epoch
        assert _gone(int(child.data.tags["sweep.pid"]))
    assert {run: row["status"] for run, row in _report_rows(parent).items()} == {
        "ae32-b2-digits": "FAILED", "ae32-b8-digits": "FAILED"}
    assert_no_running(tracking_uri)


def test_a_submitit_job_killed_by_the_oom_killer_fails_alone(tmp_path, tracking_uri):
    """SIGKILL to one submitit job: it ends FAILED with the cause, the other job still runs to its end."""
    line, _ = _faulted_sweep(tmp_path, tracking_uri, {"1"}, _sigkill_job("1"), 1, "hydra/launcher=submitit_local",
                             "hydra.launcher.timeout_min=20", "trainer.epochs=20,5000")
    assert "1 of 2 jobs failed (ae32-b4-digits epochs=5000)" in line and "ended without a result" in line, line
    parent, children = _parent_and_children(tracking_uri, "digits")
    assert parent.info.status == "FAILED"
    statuses = {c.info.run_name: c.info.status for c in children}
    assert statuses == {"ae32-b4-digits epochs=20": "FINISHED", "ae32-b4-digits epochs=5000": "FAILED"}
    assert {run: row["status"] for run, row in _report_rows(parent).items()} == statuses
    assert_no_running(tracking_uri)


def test_ctrl_c_during_a_sweeps_second_job_counts_all_three_jobs(tmp_path, tracking_uri):
    """Ctrl-C while the second of three jobs trains (the default launcher): the closing line and the log count every
    job, the one that finished, the one stopped and the one that never ran, which it names."""
    line, _ = _faulted_sweep(tmp_path, tracking_uri, {"1"}, lambda process, _: os.killpg(process.pid, signal.SIGINT),
                             130, "trainer.epochs=2,5000,3", "trainer.early_stopping.patience=null",
                             "embed=pca")
    assert ("1 of 3 jobs were stopped and marked KILLED (ae32-b4-digits epochs=5000), 1 of 3 did not run "
            "(trainer.epochs=3), 1 finished") in line, line
    (summary,) = [text for text in (tmp_path / "out.txt").read_text().splitlines()
                  if "[aeexp.sweep]" in text and "KILLED:" in text]
    assert "KILLED: 3 jobs: 1 finished, 0 failed, 1 stopped, 1 did not run" in summary, summary
    parent, children = _parent_and_children(tracking_uri, "digits")
    assert parent.info.status == "KILLED"
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED"]
    assert_no_running(tracking_uri)


def test_ctrl_c_to_a_joblib_sweep_marks_every_running_job_killed(tmp_path, tracking_uri):
    """Ctrl-C at a terminal (SIGINT to the process group): the workers are stopped, their runs end KILLED, and the
    closing line says so."""
    line, running = _faulted_sweep(tmp_path, tracking_uri, {"0", "1"},
                                   lambda process, _: os.killpg(process.pid, signal.SIGINT), 130,
                                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.bottleneck=2,8",
                                   "trainer.epochs=5000")
    assert "interrupted (SIGINT received)" in line and "2 of 2 jobs were stopped and marked KILLED" in line, line
    parent, children = _parent_and_children(tracking_uri, "digits")
    assert parent.info.status == "KILLED"
    assert sorted(c.info.status for c in children) == ["KILLED", "KILLED"]
    assert all(_gone(int(run.data.tags["sweep.pid"])) for run in running.values())
    assert sorted(row["status"] for row in _report_rows(parent).values()) == ["KILLED", "KILLED"]
    assert_no_running(tracking_uri)


def test_sigterm_to_a_submitit_sweep_cancels_its_jobs(tmp_path, tracking_uri):
    """SIGTERM to the sweep's process alone (``kill``): it cancels its submitit jobs, which would otherwise train on,
    and every run ends KILLED; the watchers' own tracebacks go to their log, not to the screen."""
    line, running = _faulted_sweep(tmp_path, tracking_uri, {"0", "1"},
                                   lambda process, _: process.send_signal(signal.SIGTERM), 130,
                                   "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                                   "model.bottleneck=2,8", "trainer.epochs=5000")
    assert "interrupted (SIGTERM received)" in line and "2 of 2 jobs were stopped and marked KILLED" in line, line
    assert all(_gone(int(run.data.tags["sweep.pid"])) for run in running.values())
    parent, children = _parent_and_children(tracking_uri, "digits")
    assert parent.info.status == "KILLED"
    assert sorted(c.info.status for c in children) == ["KILLED", "KILLED"]
    assert "KeyboardInterrupt" in (Path(parent.data.tags["sweep.dir"]) / ".submitit" / "controllers.log").read_text()
    assert_no_running(tracking_uri)


def test_bottleneck_sweep_and_slurm_presets_compose_into_one_sweep(tmp_path):
    """``-m experiment=bottleneck_sweep hydra/launcher=slurm``, composed as Hydra does for the command line: the six
    jobs the README lists, the Slurm resources of aeexp's preset, run by aeexp's launcher; and without the preset's
    experiment name, the sweep's experiment is the swept datasets joined with ``+``."""
    from hydra import compose, initialize_config_module
    from hydra.types import RunMode
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    from aeexp import sweep as sweeps
    from aeexp.config import register_configs
    from hydra_plugins.aeexp_launchers import launchers

    register_configs()
    with initialize_config_module(config_module="aeexp.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=bottleneck_sweep", "hydra/launcher=slurm",
                                                       f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
        unnamed = compose(config_name="config", overrides=["experiment=bottleneck_sweep",
                                                           f"tracking.experiment={sweeps.DEFAULT_EXPERIMENT}"],
                          return_hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert dict(cfg.hydra.sweeper.params) == {"model.bottleneck": "2,8,32", "dataset": "mnist,fashion_mnist"}
    assert cfg.model.name == "ae32" and cfg.trainer.epochs == 10 and cfg.trainer.batch_size == 256
    assert sweeps.sweep_experiment(cfg) == "bottleneck_sweep" and sweeps.sweep_name(cfg) == "bottleneck_sweep"
    assert sweeps.sweep_experiment(unnamed) == "mnist+fashion_mnist"
    launcher = cfg.hydra.launcher
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.gpus_per_node, launcher.mem_gb, launcher.nodes,
            launcher.tasks_per_node) == (120, 4, 1, 16, 1, 1)
    # aeexp's launcher, named by the config itself (nothing rewrites it when the sweep starts)
    assert launcher._target_ == "hydra_plugins.aeexp_launchers.launchers.SubmititSlurmLauncher"
    assert issubclass(launchers.SubmititSlurmLauncher, SlurmLauncher)


SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher"


@pytest.mark.parametrize(("choice", "ours", "plugins"), [
    ("joblib", "JoblibLauncher", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("submitit_local", "SubmititLocalLauncher", f"{SUBMITIT}.LocalLauncher"),
    ("submitit_slurm", "SubmititSlurmLauncher", f"{SUBMITIT}.SlurmLauncher"),
])
def test_the_launcher_configs_name_aeexp_s_launchers(make_config, choice, ours, plugins):
    """``hydra/launcher=joblib`` (and the submitit ones) compose to the plugin's settings with aeexp's subclass of its
    launcher as ``_target_``, whichever order Hydra's plugin scan ran the plugins' config modules in."""
    from hydra.core.plugins import Plugins
    from hydra.utils import get_class

    from hydra_plugins.aeexp_launchers import launchers

    launcher = make_config(f"hydra/launcher={choice}", return_hydra_config=True).hydra.launcher
    assert launcher._target_ == f"hydra_plugins.aeexp_launchers.launchers.{ours}"
    assert issubclass(getattr(launchers, ours), get_class(plugins))
    assert launcher._target_ in Plugins.instance().class_name_to_class  # Hydra may build it (editable install too)
    default = make_config(return_hydra_config=True).hydra.launcher
    # the default (``hydra/launcher=basic``) is aeexp's subclass of Hydra's, which notes its jobs for the closing line
    assert default._target_ == "hydra_plugins.aeexp_launchers.launchers.BasicLauncher"
    assert issubclass(launchers.BasicLauncher, get_class("hydra._internal.core_plugins.basic_launcher.BasicLauncher"))


def test_a_sweep_over_a_named_folder_logs_to_the_experiment_of_that_name(run_cli, tracking_uri, tmp_path):
    """``-m dataset=folder dataset.name=pets model.bottleneck=2,4``: experiment ``pets`` (not ``folder+pets``), as a
    single run on the same folder would log to."""
    from image_sets import write_class_folders

    write_class_folders(tmp_path / "pets", n=40, size=8, classes=2)
    done = run_cli("-m", "dataset=folder", f"dataset.path={tmp_path / 'pets'}", "dataset.name=pets",
                   "model.bottleneck=2,4", "model.widths=[16]", f"tracking.uri={tracking_uri}", *FAST, "embed=pca",
                   "embed.n_samples=50", timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [e.name for e in MlflowClient(tracking_uri).search_experiments() if e.name != "Default"] == ["pets"]
    parent, children = _parent_and_children(tracking_uri, "pets")
    assert len(children) == 2 and parent.info.status == "FINISHED"
