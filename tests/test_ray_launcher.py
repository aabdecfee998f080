"""aeexp's Ray launcher: a two-job sweep on a real local Ray cluster (`ray start --head` on 127.0.0.1), each job an
MLflow child of the sweep's parent; and a cluster address where nothing answers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port
from mlflow_store import assert_no_running, runs_in

FAST = ["trainer.epochs=1", "trainer.progress=false", "embed=pca", "embed.n_samples=200"]
# Token authentication off for this cluster on 127.0.0.1: its token would live in the user's ~/.ray, shared by
# every Ray on the machine.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray_cli() -> str:
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        if os.environ.get("CI"):
            pytest.fail("ray is missing: the Makefile installs the [ray] extra")
        pytest.skip("pip install -e '.[ray]' to run the Ray launcher's test")
    return str(ray)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs, its files in a fresh short folder (socket paths are length-limited);
    stopped by its process group at the end."""
    port = free_port()
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    command = [_ray_cli(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
               "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", folder]
    log = open(Path(folder) / "head.log", "w")  # noqa: SIM115 (closed below)
    head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **RAY_ENV})
    try:
        deadline = time.monotonic() + 120
        while "--block" not in (Path(folder) / "head.log").read_text():  # ray start says so once the head is up
            assert head.poll() is None and time.monotonic() < deadline, (Path(folder) / "head.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # (none left: the group ended with the head)
            os.killpg(head.pid, signal.SIGKILL)  # whatever of the cluster is left (same process group)
        head.wait()
        log.close()


def test_a_two_job_sweep_on_a_local_ray_cluster(run_cli, tracking_uri, ray_cluster):
    done = run_cli("-m", "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster}", "model.bottleneck=2,8",
                   f"tracking.uri={tracking_uri}", *FAST, env=RAY_ENV, timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"Ray: connecting to {ray_cluster}" in output
    runs = runs_in(tracking_uri, "digits")
    (parent,) = [r for r in runs if "sweep.name" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.launcher"] == "ray"
    assert sorted(c.info.run_name for c in children) == ["ae32-b2-digits", "ae32-b8-digits"]
    assert all(c.info.status == "FINISHED" and "test_mse" in c.data.metrics for c in children)
    assert sorted(c.data.tags["sweep.job"] for c in children) == ["0", "1"]
    assert {c.data.tags["threads"] for c in children} == {"1"}  # the CPUs each job asks the cluster for
    # Each job ran in a Ray worker, not in the sweep's process.
    assert "(_run_job_in_ray pid=" in output
    assert_no_running(tracking_uri)


def test_a_ray_address_that_does_not_answer_is_refused(run_cli, tracking_uri):
    _ray_cli()
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run_cli("-m", "hydra/launcher=ray", f"hydra.launcher.address={address}", "model.bottleneck=2,8",
                   f"tracking.uri={tracking_uri}", *FAST, env=RAY_ENV, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert f"hydra.launcher.address={address}: no Ray cluster answers there (ConnectionRefusedError)" in output
    assert "Traceback" not in output and "Launching" not in output
    assert time.monotonic() - started < 60
    assert runs_in(tracking_uri) == []  # refused before the sweep's parent run


def test_a_ray_worker_killed_mid_job_is_retried_into_its_own_run_and_the_sweep_finishes(run_cli, tracking_uri,
                                                                                       ray_cluster, tmp_path):
    """SIGKILL to the Ray worker running a job, once its run has a checkpoint: Ray retries the task, which continues
    that same MLflow run from its checkpoint (every epoch's metrics once); the sweep counts each job once and
    finishes (exit 0), not "1 of 3 jobs failed"."""
    epochs = 25
    command = [sys.executable, "-m", "aeexp", "-m", "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster}",
               "model.bottleneck=2,8", "model.widths=[32]", f"trainer.epochs={epochs}", "trainer.batch_size=16",
               "trainer.early_stopping.patience=null", *FAST[1:], f"tracking.uri={tracking_uri}"]
    sweep = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            for run in runs_in(tracking_uri, "digits"):
                history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "train_loss")
                if run.info.status == "RUNNING" and "sweep.pid" in run.data.tags and len(history) >= 2:
                    victim = run
                    break
        assert victim is not None, "no job trained 2 epochs"
        os.kill(int(victim.data.tags["sweep.pid"]), signal.SIGKILL)
        output, _ = sweep.communicate(timeout=400)
    finally:
        sweep.kill()  # (nothing, if it has ended)
        sweep.wait()
    assert sweep.returncode == 0, output[-3000:]
    runs = runs_in(tracking_uri, "digits")
    (parent,) = [r for r in runs if "sweep.name" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    again = next(c for c in children if c.info.run_id == victim.info.run_id)
    assert again.info.status == "FINISHED" and int(again.data.tags["resumed_from_epoch"]) >= 1
    assert again.data.tags["sweep.pid"] != victim.data.tags["sweep.pid"]  # continued by the retried task
    steps = [m.step for m in MlflowClient(tracking_uri).get_metric_history(again.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, epochs + 1))
    assert_no_running(tracking_uri)
