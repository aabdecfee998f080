"""Checkpoints and resume: a real run is interrupted (SIGTERM, SIGKILL), resumed, and compared bit for bit."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, assert_no_running, metric_history, new_store, runs_in

from aeexp.training import checkpoint

# Small, many-step epochs on digits: long enough to interrupt mid-run, quick to finish.
RUN = ["model.widths=[64]", "model.bottleneck=8", "trainer.batch_size=16", "trainer.progress=false",
       "embed.n_samples=200", "embed.n_iter=100", "embed.early_exaggeration_iter=50", "seed=5"]
# AdamW, a linear warm-up over the first epoch, then a cosine decay stepped every batch over the planned epochs.
SCHEDULED = ["optimizer=adamw", "scheduler=cosine", "scheduler.warmup_epochs=1", "embed=pca"]
FINAL_METRICS = ("test_loss", "test_mse", "test_knn_acc", "embed_knn_acc", "embed_trust", "pca_test_mse", "pca_knn_acc")


def _env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _start_and_stop(cwd: Path, tracking_uri: str, sig: signal.Signals, after_epoch: int, *overrides: str,
                    epochs: int = 100000) -> tuple[subprocess.Popen[str], str]:
    """Start a run of ``epochs``, send ``sig`` once it has logged epoch ``after_epoch``; the process and its
    output."""
    process = subprocess.Popen([sys.executable, "-m", "aeexp", *RUN, *overrides, f"trainer.epochs={epochs}",
                                f"tracking.uri={tracking_uri}"], cwd=cwd, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if f"epoch {after_epoch}/" in line:
                process.send_signal(sig)
                break
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process, "".join(seen) + rest


def _final_state(run) -> checkpoint.Checkpoint:
    return checkpoint.load(Path(run.data.tags[checkpoint_tag()]))


def _assert_identical(resumed, straight, where: str = "state") -> None:
    """Two (nested) state dicts hold the same keys and bit-identical tensors and values."""
    if isinstance(straight, torch.Tensor):
        assert isinstance(resumed, torch.Tensor) and resumed.dtype == straight.dtype, where
        assert torch.equal(resumed, straight), where
    elif isinstance(straight, dict):
        assert resumed.keys() == straight.keys(), where
        for key in straight:
            _assert_identical(resumed[key], straight[key], f"{where}[{key!r}]")
    elif isinstance(straight, list | tuple):
        assert len(resumed) == len(straight), where
        for i, (a, b) in enumerate(zip(resumed, straight, strict=True)):
            _assert_identical(a, b, f"{where}[{i}]")
    else:
        assert resumed == straight, where


def _assert_same_history(resumed_uri: str, resumed_id: str, straight_uri: str, straight_id: str, metric: str,
                         killed: bool) -> None:
    resumed = metric_history(resumed_uri, resumed_id, metric)
    straight = metric_history(straight_uri, straight_id, metric)
    if not killed:  # every epoch logged once, at its step, with the uninterrupted run's values
        assert resumed == straight, metric
    else:  # a kill between an epoch's checkpoint and its metrics may cost that epoch's points, nothing else
        assert set(resumed) <= set(straight) and resumed[-2:] == straight[-2:], metric


def _only_run(tracking_uri: str):
    (run,) = runs_in(tracking_uri, "digits")
    return run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_run_resumes_bit_identical_to_an_uninterrupted_one(tmp_path, run_cli, new_sqlite_store, sig):
    interrupted_uri = new_sqlite_store(tmp_path / "interrupted.db")
    reference_uri = new_sqlite_store(tmp_path / "reference.db")
    process, output = _start_and_stop(tmp_path, interrupted_uri, sig, after_epoch=3)
    run = _only_run(interrupted_uri)
    run_id = run.info.run_id
    local = Path(run.data.tags[checkpoint_tag()])
    stopped = checkpoint.load(local)
    assert stopped.run_id == run_id and stopped.epoch >= 3
    if sig == signal.SIGTERM:
        assert process.returncode == 130, output[-3000:]
        assert "Traceback" not in output
        assert f"after epoch {stopped.epoch} of 100000" in output and f"resume={run_id}" in output
        assert run.info.status == "KILLED"
        assert "checkpoint" in artifact_paths(interrupted_uri, run_id)  # also logged, not only local
    else:
        assert process.returncode == -signal.SIGKILL
        assert run.info.status == "RUNNING"  # nobody could end it; resume takes it over
    assert not list(local.parent.glob(".*.tmp")), "a half-written checkpoint was left behind"

    total = stopped.epoch + 2
    resumed = run_cli(f"resume={run_id}", f"trainer.epochs={total}", "trainer.progress=false",
                      f"tracking.uri={interrupted_uri}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_cli(*RUN, f"trainer.epochs={total}", f"tracking.uri={reference_uri}")
    assert reference.returncode == 0, reference.stderr[-3000:]

    again, straight = _only_run(interrupted_uri), _only_run(reference_uri)
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    for key in FINAL_METRICS:
        assert again.data.metrics[key] == straight.data.metrics[key], key
    resumed_state, straight_state = _final_state(again), _final_state(straight)
    assert resumed_state.epoch == straight_state.epoch == total
    _assert_identical(resumed_state.model, straight_state.model, "model")
    _assert_identical(resumed_state.optimizer, straight_state.optimizer, "optimizer")
    for metric in ("train_loss", "val_loss", "lr"):
        _assert_same_history(interrupted_uri, run_id, reference_uri, straight.info.run_id, metric,
                             killed=sig == signal.SIGKILL)
    assert_no_running(interrupted_uri)


# (signal, model overrides, train.path): a scheduled run on each training path, one stopped each way.
SCHEDULED_CASES = [(signal.SIGTERM, [], "fast"), (signal.SIGKILL, ["model=vae"], "autograd")]


@pytest.mark.parametrize(("sig", "model", "path"), SCHEDULED_CASES, ids=["fast-sigterm", "autograd-vae-sigkill"])
def test_a_scheduled_run_resumes_bit_identical_to_an_uninterrupted_one(tmp_path, run_cli, new_sqlite_store, sig,
                                                                       model, path):
    """AdamW with a warm-up and a cosine schedule planned over 8 epochs, stopped after epoch 3 and resumed: the same
    weights, optimizer state and per-epoch train_loss and lr as a run that was never stopped. (The VAE also draws
    from the global RNG at every step.)"""
    epochs = 8
    interrupted_uri = new_sqlite_store(tmp_path / "interrupted.db")
    reference_uri = new_sqlite_store(tmp_path / "reference.db")
    process, output = _start_and_stop(tmp_path, interrupted_uri, sig, 3, *SCHEDULED, *model, epochs=epochs)
    run = _only_run(interrupted_uri)
    run_id = run.info.run_id
    stopped = _final_state(run)
    assert stopped.run_id == run_id and 3 <= stopped.epoch < epochs, output[-3000:]
    assert process.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL), output[-3000:]
    assert run.info.status == ("KILLED" if sig == signal.SIGTERM else "RUNNING")
    assert run.data.tags["train.path"] == path

    resumed = run_cli(f"resume={run_id}", "trainer.progress=false", f"tracking.uri={interrupted_uri}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_cli(*RUN, *SCHEDULED, *model, f"trainer.epochs={epochs}", f"tracking.uri={reference_uri}")
    assert reference.returncode == 0, reference.stderr[-3000:]

    again, straight = _only_run(interrupted_uri), _only_run(reference_uri)
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    assert again.data.tags["resumed_from_epoch"] == str(stopped.epoch)
    assert again.data.tags["train.path"] == straight.data.tags["train.path"] == path
    assert straight.data.params["optimizer._target_"] == "torch.optim.AdamW"
    assert straight.data.params["scheduler._target_"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    resumed_state, straight_state = _final_state(again), _final_state(straight)
    assert resumed_state.epoch == straight_state.epoch == epochs
    _assert_identical(resumed_state.model, straight_state.model, "model")
    _assert_identical(resumed_state.optimizer, straight_state.optimizer, "optimizer")
    _assert_identical(resumed_state.schedule, straight_state.schedule, "schedule")
    for key in FINAL_METRICS:
        assert again.data.metrics[key] == straight.data.metrics[key], key
    for metric in ("train_loss", "val_loss", "lr"):
        _assert_same_history(interrupted_uri, run_id, reference_uri, straight.info.run_id, metric,
                             killed=sig == signal.SIGKILL)
    # The schedule did run: the lr peaks at the warm-up's end (epoch 1's last step), then falls towards 0.
    lr = [value for _, value in metric_history(reference_uri, straight.info.run_id, "lr")]
    assert lr[0] == pytest.approx(0.001, rel=1e-6) and all(a > b for a, b in itertools.pairwise(lr)) and lr[-1] < 1e-5
    if "model=vae" in model:
        assert [s for s, _ in metric_history(interrupted_uri, run_id, "train_kl")][-2:] == [epochs - 1, epochs]
    assert_no_running(interrupted_uri)


def checkpoint_tag() -> str:
    from aeexp.tracking import CHECKPOINT_TAG

    return CHECKPOINT_TAG


def _finished_run(directory: Path, template: Path) -> tuple[str, str]:
    uri = new_store(directory / "mlflow.db", template)
    done = subprocess.run([sys.executable, "-m", "aeexp", *RUN, "trainer.epochs=2", f"tracking.uri={uri}"],
                          cwd=directory, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return uri, _only_run(uri).info.run_id


@pytest.fixture
def finished_run(tmp_path, store_template) -> tuple[str, str]:
    """A finished 2-epoch run of its own: (tracking URI, run id)."""
    return _finished_run(tmp_path, store_template)


@pytest.fixture(scope="module")
def shared_finished_run(tmp_path_factory, store_template) -> tuple[str, str]:
    """A finished 2-epoch run for tests that must leave it as it is: (tracking URI, run id)."""
    return _finished_run(tmp_path_factory.mktemp("finished"), store_template)


def test_resume_last_trains_a_finished_run_further_from_the_logged_checkpoint(finished_run, run_cli, tmp_path):
    uri, run_id = finished_run
    local = Path(_only_run(uri).data.tags[checkpoint_tag()])
    local.unlink()  # the local file is gone: the copy logged to MLflow is used
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    done = run_cli("resume=last", "trainer.epochs=3", f"tracking.uri={uri}", "embed.n_samples=100", cwd=other_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _only_run(uri)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert [step for step, _ in metric_history(uri, run_id, "train_loss")] == [1, 2, 3]
    assert run.data.tags["resumed_from_epoch"] == "2"
    assert run.data.params["trainer.epochs"] == "2"  # params are immutable in MLflow; config.yaml says 3
    config = Path(MlflowClient(uri).download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert "epochs: 3" in config and "n_samples: 100" in config


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.bottleneck=4"], "model.bottleneck=4 would change run"),
    (["dataset=mnist"], "dataset=mnist would change run"),
    (["optimizer.lr=0.1"], "optimizer.lr=0.1 would change run"),
    (["optimizer=sgd"], "optimizer=sgd would change run"),
    (["scheduler=cosine", "trainer.epochs=3"], "scheduler=cosine would change run"),
    (["model.loss=mse"], "model.loss=mse would change run"),
    (["trainer.lr=0.1"], "trainer.lr is no longer a setting: give optimizer.lr=0.1 instead."),
    (["trainer.epochs=1"], "trainer.epochs=1 is below the 2 epochs"),
    ([], "already finished its 2 epochs"),
], ids=["bottleneck", "dataset", "lr", "optimizer", "scheduler", "loss", "moved-lr", "fewer-epochs", "nothing-to-do"])
def test_resume_refuses_what_would_change_the_run(shared_finished_run, run_cli, overrides, message):
    uri, run_id = shared_finished_run
    done = run_cli(f"resume={run_id}", f"tracking.uri={uri}", *overrides)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert message in output and "Traceback" not in output, output[-2000:]
    run = _only_run(uri)
    assert run.info.status == "FINISHED" and "resumed_from_epoch" not in run.data.tags


def test_resume_of_an_unknown_run_says_so(run_cli, tracking_uri):
    done = run_cli("resume=0123456789abcdef0123456789abcdef", f"tracking.uri={tracking_uri}")
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "no run '0123456789abcdef0123456789abcdef'" in output and "Traceback" not in output
    last = run_cli("resume=last", f"tracking.uri={tracking_uri}")
    assert last.returncode == 1 and "no run with a checkpoint" in last.stdout + last.stderr
    assert_no_running(tracking_uri)


def test_checkpoint_write_is_atomic_and_a_corrupt_one_is_refused(tmp_path):
    from aeexp import models
    from aeexp.training import loop, optim

    model = models.DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4)
    optimizer = torch.optim.Adam(optim.parameter_groups(model), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / checkpoint.FILENAME
    history = loop.History([{"train_loss": 1.0, "val_loss": 1.0, "epoch_time": 0.1, "lr": 1e-3}])
    state = checkpoint.capture("run", 1, "seed: 0\n", model, optimizer, optim.Schedule(optimizer), generator, history)
    checkpoint.save(state, path)
    before = path.read_bytes()
    assert checkpoint.load(path).history == history  # what was saved comes back

    class Unsaveable:  # torch.save fails half-way: the previous checkpoint must survive untouched
        def __reduce__(self):
            raise RuntimeError("disk full")

    state.optimizer = {"broken": Unsaveable()}
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save(state, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [checkpoint.FILENAME]

    path.write_bytes(before[: len(before) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(path)


def test_a_signal_inside_a_run_waits_for_the_next_safe_point_outside_it_stops_at_once():
    from aeexp.training import interrupt

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupt.install()
    try:
        with pytest.raises(interrupt.Interrupted, match="SIGTERM received"), interrupt.deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised: the block goes on to its end
            assert interrupt.requested()
            survived = True
        assert survived
        interrupt.reset()

        with pytest.raises(interrupt.Interrupted), interrupt.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            interrupt.check()  # the safe point
            pytest.fail("check() let a requested stop through")
        interrupt.reset()

        # A second Ctrl-C stops at once; the first is still pending when the run's block ends.
        with pytest.raises(interrupt.Interrupted), interrupt.deferred(), \
                pytest.raises(KeyboardInterrupt, match="twice"):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        interrupt.reset()

        with pytest.raises(KeyboardInterrupt) as raised:  # outside a run: at once
            os.kill(os.getpid(), signal.SIGTERM)
        assert not isinstance(raised.value, interrupt.Interrupted)
    finally:
        interrupt.reset()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_a_tracking_server_that_goes_away_loses_no_training_and_the_run_resumes_once_it_is_back(
        tmp_path, store_template):
    from mlflow_server import mlflow_server

    server_dir = tmp_path / "server"
    server_dir.mkdir()
    # MLflow still retries each request twice, without its default seconds of back-off before giving up.
    quick_retries = {**_env(), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
    with mlflow_server(server_dir, store_template) as uri:
        process = subprocess.Popen([sys.executable, "-m", "aeexp", *RUN, "trainer.epochs=100000",
                                    f"tracking.uri={uri}"], cwd=tmp_path, env=quick_retries,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "epoch 2/" in line:
                break
    try:  # the server is gone now
        rest, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(seen) + rest
    assert process.returncode == 1, output[-3000:]
    assert "lost the tracking store" in output and "Traceback" not in output, output[-3000:]
    saved = Path(output.split("training so far is saved in ", 1)[1].split(":", 1)[0])
    state = checkpoint.load(saved)
    assert state.epoch >= 2
    assert f"resume={state.run_id}" in output

    with mlflow_server(server_dir) as uri:  # back, on another port, with the same store
        resumed = subprocess.run([sys.executable, "-m", "aeexp", f"resume={state.run_id}",
                                  f"trainer.epochs={state.epoch + 1}", "trainer.progress=false",
                                  f"tracking.uri={uri}"], cwd=tmp_path, env=_env(), capture_output=True,
                                 text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        run = MlflowClient(uri).get_run(state.run_id)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in MlflowClient(uri).get_metric_history(state.run_id, "val_loss")]
        assert steps[-1] == state.epoch + 1 and len(steps) == len(set(steps))
