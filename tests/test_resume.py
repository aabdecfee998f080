"""Checkpoints and resume: real runs interrupted (SIGTERM, SIGKILL, Ctrl-C to the process group), their store
locked, their output folder made read-only, their local disk lost; then resumed and compared bit for bit."""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from evil_model import Payload
from faults import read_only
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, assert_no_running, metric_history, new_store, runs_in

from aeexp.training import checkpoint

# Small, many-step epochs on digits: long enough to interrupt mid-run, quick to finish.
RUN = ["model.widths=[64]", "model.bottleneck=8", "trainer.batch_size=16", "trainer.progress=false",
       "embed.n_samples=200", "seed=5"]
# AdamW, a linear warm-up over the first epoch, then a cosine decay stepped every batch over the planned epochs.
SCHEDULED = ["optimizer=adamw", "scheduler=cosine", "scheduler.warmup_epochs=1", "embed=pca"]
FINAL_METRICS = ("test_loss", "test_mse", "test_knn_acc", "embed_knn_acc", "embed_trust", "pca_test_mse", "pca_knn_acc")
EPOCH_METRICS = ("train_loss", "val_loss", "lr")  # (epoch_time is a timing: compared by its steps only)
RUN_STARTED = re.compile(r"run ([0-9a-f]{32}) \(.*\) started")


def _env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _start(cwd: Path, tracking_uri: str, *overrides: str, epochs: int = 100000, new_session: bool = False
           ) -> subprocess.Popen[str]:
    """A run of ``epochs`` (by default: until stopped) as a process whose output the test reads."""
    return subprocess.Popen([sys.executable, "-m", "aeexp", *RUN, *overrides, f"trainer.epochs={epochs}",
                             f"tracking.uri={tracking_uri}"], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=new_session)


def _read_until(process: subprocess.Popen[str], text: str) -> str:
    """The process's output up to the first line that holds ``text``."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the run ended before {text!r}:\n{''.join(seen)[-3000:]}")


def _rest(process: subprocess.Popen[str], timeout: float = 180) -> str:
    """The rest of the process's output, once it has ended (killed if it does not within ``timeout``)."""
    try:
        rest, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return rest


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _start_and_stop(cwd: Path, tracking_uri: str, sig: signal.Signals, after_epoch: int, *overrides: str,
                    epochs: int = 100000) -> tuple[subprocess.Popen[str], str]:
    """Start a run of ``epochs``, send ``sig`` once it has logged epoch ``after_epoch``; the process and its
    output."""
    process = _start(cwd, tracking_uri, *overrides, epochs=epochs)
    try:
        seen = _read_until(process, f"epoch {after_epoch}/")
        process.send_signal(sig)
    finally:
        rest = _rest(process, timeout=120)
    return process, seen + rest


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


def _assert_same_history(resumed_uri: str, resumed_id: str, straight_uri: str, straight_id: str) -> None:
    """Every epoch's metrics logged once, at its step, with the uninterrupted run's values, however the run was
    stopped (a kill between an epoch's checkpoint and its metrics included: the resume logs them)."""
    for metric in EPOCH_METRICS:
        assert metric_history(resumed_uri, resumed_id, metric) == metric_history(straight_uri, straight_id, metric), \
            metric
    steps = [step for step, _ in metric_history(resumed_uri, resumed_id, "epoch_time")]
    assert steps == [step for step, _ in metric_history(straight_uri, straight_id, "epoch_time")]


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
    _assert_same_history(interrupted_uri, run_id, reference_uri, straight.info.run_id)
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
    _assert_same_history(interrupted_uri, run_id, reference_uri, straight.info.run_id)
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
    assert [step for step, _ in metric_history(uri, run_id, "test_loss")] == [2, 3]  # one per training length
    assert run.data.tags["resumed_from_epoch"] == "2"
    assert "is gone; resuming from the copy logged to MLflow instead" in done.stdout + done.stderr
    # Params are immutable in MLflow: they keep the values the run started with; resumed.* tags and config.yaml
    # hold the values it ended with.
    assert run.data.params["trainer.epochs"] == "2" and run.data.params["embed.n_samples"] == "200"
    assert run.data.tags["resumed.trainer.epochs"] == "3" and run.data.tags["resumed.embed.n_samples"] == "100"
    assert not {key for key in run.data.tags if key.startswith("resumed.")} - {"resumed.trainer.epochs",
                                                                               "resumed.embed.n_samples"}
    config = Path(MlflowClient(uri).download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert "epochs: 3" in config and "n_samples: 100" in config
    assert Path(run.data.tags[checkpoint_tag()]).is_file()  # a new local copy, in this run's output folder


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


def _small_checkpoint() -> checkpoint.Checkpoint:
    from aeexp import models
    from aeexp.training import loop, optim

    model = models.DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4)
    optimizer = torch.optim.Adam(optim.parameter_groups(model), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    history = loop.History([{"train_loss": 1.0, "val_loss": 1.0, "epoch_time": 0.1, "lr": 1e-3}])
    return checkpoint.capture("run", 1, "seed: 0\n", model, optimizer, optim.Schedule(optimizer), generator, history)


def test_checkpoint_write_is_atomic_and_a_corrupt_one_is_refused(tmp_path):
    state = _small_checkpoint()
    path = tmp_path / checkpoint.FILENAME
    checkpoint.save(state, path)
    before = path.read_bytes()
    assert checkpoint.load(path).history == state.history  # what was saved comes back

    class Unsaveable:  # torch.save fails half-way: the previous checkpoint must survive untouched
        def __reduce__(self):
            raise RuntimeError("disk full")

    state.optimizer = {"broken": Unsaveable()}
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save(state, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [checkpoint.FILENAME]

    path.write_bytes(before[: len(before) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="is damaged or not a checkpoint"):
        checkpoint.load(path)


def _without(key: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        payload = torch.load(path, weights_only=True)
        del payload[key]
        torch.save(payload, path)

    return damage


# (how the file is damaged, the one line that names it)
DAMAGED = [
    (lambda path: path.write_bytes(random.Random(0).randbytes(4096)), "checkpoint {path} is damaged or not a "
                                                                      "checkpoint ("),
    (lambda path: path.write_bytes(b""), "checkpoint {path} is damaged or not a checkpoint"),
    (_without("history"), "checkpoint {path} is incomplete (no history): it was not written whole by aeexp"),
    (_without("format_version"), f"{{path}} is not an aeexp checkpoint of format {checkpoint.FORMAT_VERSION}"),
    (lambda path: torch.save({"format_version": checkpoint.FORMAT_VERSION, **{
        k: None for k in ("run_id", "epoch", "config", "model", "optimizer", "schedule", "generator", "history",
                          "torch_rng", "numpy_rng", "early_stopping")}}, path),
     "checkpoint {path} is malformed"),
]


@pytest.mark.parametrize(("damage", "message"), DAMAGED, ids=["random-bytes", "empty", "no-history",
                                                              "no-format", "malformed"])
def test_a_damaged_checkpoint_is_refused_in_one_line_naming_it(tmp_path, damage, message):
    path = tmp_path / checkpoint.FILENAME
    checkpoint.save(_small_checkpoint(), path)
    damage(path)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        checkpoint.load(path)
    text = str(refused.value)
    assert text.startswith(message.format(path=path)) and "\n" not in text, text
    assert "weights_only" not in text  # never torch's advice to unpickle whatever the file holds


def test_a_checkpoint_file_carrying_a_pickle_payload_is_refused_without_running_it(tmp_path, monkeypatch):
    """checkpoint.load reads tensors and plain values only (weights_only=True, asked for explicitly: torch's default
    gives way to TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD): a file that holds every field of a checkpoint and also an object
    whose unpickling runs ``touch <marker>`` is refused, and nothing runs."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker = tmp_path / checkpoint.FILENAME, tmp_path / "payload-ran"
    checkpoint.save(_small_checkpoint(), path)
    payload = torch.load(path, weights_only=True)
    payload["numpy_rng"]["note"] = Payload(str(marker))
    torch.save(payload, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"is damaged or not a checkpoint \(UnpicklingError\)$"):
        checkpoint.load(path)
    assert not marker.exists()


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


def _run_id(output: str) -> str:
    match = RUN_STARTED.search(output)
    assert match, output[-3000:]
    return match.group(1)


def _steps(tracking_uri: str, run_id: str, metric: str) -> list[int]:
    return [step for step, _ in metric_history(tracking_uri, run_id, metric)]


def test_a_kill_between_an_epochs_checkpoint_and_its_metrics_loses_no_metric(tmp_path, run_cli, new_sqlite_store):
    """Another writer holds the store when epoch 3's metrics are to be logged, and the run is SIGKILLed there: its
    checkpoint has epoch 3, MLflow does not. The resume logs what the checkpoint holds and MLflow lacks: every
    epoch once, with the values of a run never stopped."""
    database = tmp_path / "interrupted.db"
    uri, reference_uri = new_sqlite_store(database), new_sqlite_store(tmp_path / "reference.db")
    out = tmp_path / "out"
    process = _start(tmp_path, uri, f"hydra.run.dir={out}")
    try:
        run_id = _run_id(_read_until(process, "epoch 2/"))
        local = checkpoint.local_path(out, run_id)
        lock = sqlite3.connect(database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # MLflow's next write waits for it (up to its busy timeout, 20 s)
        try:
            _wait_for(lambda: checkpoint.load(local).epoch == 3, "epoch 3's checkpoint")
            process.kill()
            process.wait()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    finally:
        _rest(process)
    assert process.returncode == -signal.SIGKILL
    assert _steps(uri, run_id, "train_loss") == [1, 2]  # the fault happened: epoch 3 is only in the checkpoint

    resumed = run_cli(f"resume={run_id}", "trainer.epochs=4", f"tracking.uri={uri}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_cli(*RUN, "trainer.epochs=4", f"tracking.uri={reference_uri}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    _assert_same_history(uri, run_id, reference_uri, _only_run(reference_uri).info.run_id)
    epoch_3 = checkpoint.load(Path(_only_run(uri).data.tags[checkpoint_tag()])).history.epochs[2]
    assert dict(metric_history(uri, run_id, "epoch_time"))[3] == epoch_3["epoch_time"]  # from the checkpoint


def test_a_run_killed_while_logging_its_results_resumes_to_the_same_results_once(tmp_path, run_cli,
                                                                               new_sqlite_store):
    """SIGKILL after the final metrics reached MLflow, while the figures are drawn: the resume finishes the run
    without training, logs each final metric once, logs the checkpoint and tags one that exists; a later resume
    trains it further."""
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    process = _start(tmp_path, uri, "embed=[tsne,pca]", epochs=3)
    try:
        run_id = _run_id(_read_until(process, "epoch 3/3"))
        _wait_for(lambda: bool(metric_history(uri, run_id, "test_loss")), "the final metrics", timeout=180)
        process.kill()
        process.wait()
    finally:
        _rest(process)
    assert process.returncode == -signal.SIGKILL
    killed = _only_run(uri)
    assert killed.info.status == "RUNNING" and "explorer.html" not in artifact_paths(uri, run_id)

    done = run_cli(f"resume={run_id}", f"tracking.uri={uri}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _only_run(uri)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "3"
    for key in FINAL_METRICS:
        assert _steps(uri, run_id, key) == [3], key  # once, at the step of the epochs trained
    assert _steps(uri, run_id, "train_loss") == [1, 2, 3]
    assert {"explorer.html", "checkpoint"} <= artifact_paths(uri, run_id)
    local = Path(run.data.tags[checkpoint_tag()])
    assert checkpoint.load(local).epoch == 3 and local.is_relative_to(tmp_path / "outputs")
    assert run.data.tags[checkpoint.ARTIFACT_TAG] == "checkpoint/epoch-3/checkpoint.pt"

    further = run_cli(f"resume={run_id}", "trainer.epochs=5", f"tracking.uri={uri}", cwd=tmp_path)
    assert further.returncode == 0, further.stderr[-3000:]
    assert _steps(uri, run_id, "train_loss") == [1, 2, 3, 4, 5]
    assert _steps(uri, run_id, "test_loss") == [3, 5]
    assert_no_running(uri)


def _artifact_root(tracking_uri: str, run_id: str) -> Path:
    return Path(MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))


def test_a_killed_run_whose_disk_is_lost_resumes_from_the_checkpoint_logged_every_n_epochs(tmp_path, run_cli,
                                                                                         new_sqlite_store):
    """trainer.checkpoint_every=2: SIGKILL after epoch 5, the output folder deleted, and a half-uploaded copy of a
    later epoch (what a kill mid-upload leaves in a store that does not write artifacts atomically) in MLflow. The
    resume takes the whole copy the run's tag names, epoch 4, and ends as a run never stopped."""
    uri, reference_uri = new_sqlite_store(tmp_path / "killed.db"), new_sqlite_store(tmp_path / "reference.db")
    out = tmp_path / "lost-disk"
    process, output = _start_and_stop(tmp_path, uri, signal.SIGKILL, 5, "trainer.checkpoint_every=2",
                                      f"hydra.run.dir={out}")
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    run_id = _run_id(output)
    lost = checkpoint.load(checkpoint.local_path(out, run_id)).epoch
    logged = int(re.fullmatch(r"checkpoint/epoch-(\d+)/checkpoint.pt",
                              _only_run(uri).data.tags[checkpoint.ARTIFACT_TAG]).group(1))
    assert logged % 2 == 0 and lost - 2 < logged < lost  # the local one is newer, and lost with its disk
    artifacts = _artifact_root(uri, run_id)
    assert [p.name for p in (artifacts / "checkpoint").iterdir()] == [f"epoch-{logged}"]  # earlier copies deleted
    shutil.rmtree(out)
    partial = artifacts / "checkpoint" / f"epoch-{logged + 2}" / checkpoint.FILENAME
    partial.parent.mkdir()
    partial.write_bytes((artifacts / "checkpoint" / f"epoch-{logged}" / checkpoint.FILENAME).read_bytes()[:1000])

    resumed = run_cli(f"resume={run_id}", "trainer.epochs=7", "trainer.checkpoint_every=2", f"tracking.uri={uri}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_cli(*RUN, "trainer.epochs=7", "trainer.checkpoint_every=2", f"tracking.uri={reference_uri}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    again, straight = _only_run(uri), _only_run(reference_uri)
    assert again.info.status == "FINISHED" and again.data.tags["resumed_from_epoch"] == str(logged)
    assert f"{out}" in resumed.stdout + resumed.stderr and "is gone" in resumed.stdout + resumed.stderr
    _assert_same_history(uri, run_id, reference_uri, straight.info.run_id)
    resumed_state, straight_state = _final_state(again), _final_state(straight)
    _assert_identical(resumed_state.model, straight_state.model, "model")
    _assert_identical(resumed_state.optimizer, straight_state.optimizer, "optimizer")
    assert again.data.tags[checkpoint.ARTIFACT_TAG] == "checkpoint/epoch-7/checkpoint.pt"  # the end's, not an Nth
    logged = checkpoint.load(artifacts / "checkpoint" / "epoch-7" / checkpoint.FILENAME)
    _assert_identical(logged.model, straight_state.model, "logged model")


def test_runs_sharing_an_output_folder_keep_their_own_checkpoints(tmp_path, run_cli, new_sqlite_store):
    """Two runs in one hydra.run.dir (as a message of aeexp once suggested): each resumes from its own checkpoint;
    one whose local file was overwritten by another run's (as before checkpoints were named by run) falls back to
    its copy in MLflow."""
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    shared = f"hydra.run.dir={tmp_path / 'shared'}"
    ids = []
    for seed in (1, 2):
        done = run_cli(*RUN, "trainer.epochs=2", f"seed={seed}", shared, f"tracking.uri={uri}", "embed=pca")
        assert done.returncode == 0, done.stderr[-3000:]
        ids.append(_run_id(done.stdout + done.stderr))
    first, second = (MlflowClient(uri).get_run(run_id) for run_id in ids)
    paths = [Path(run.data.tags[checkpoint_tag()]) for run in (first, second)]
    assert paths[0] != paths[1] and [checkpoint.load(path).run_id for path in paths] == ids

    done = run_cli(f"resume={ids[0]}", "trainer.epochs=3", f"tracking.uri={uri}", "embed=pca")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from the copy logged to MLflow" not in done.stdout + done.stderr  # the local one was its own
    local = Path(MlflowClient(uri).get_run(ids[0]).data.tags[checkpoint_tag()])
    shutil.copyfile(paths[1], local)  # another run's checkpoint where this run's should be
    done = run_cli(f"resume={ids[0]}", "trainer.epochs=4", f"tracking.uri={uri}", "embed=pca")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"{local} belongs to run {ids[1]}; resuming from the copy logged to MLflow instead"
            in done.stdout + done.stderr)
    run = MlflowClient(uri).get_run(ids[0])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "3"
    assert _steps(uri, ids[0], "train_loss") == [1, 2, 3, 4]
    assert MlflowClient(uri).get_run(ids[1]).info.status == "FINISHED"


def test_a_run_with_damaged_checkpoints_everywhere_is_refused_in_one_line(finished_run, run_cli, tmp_path):
    uri, run_id = finished_run
    run = _only_run(uri)
    local = Path(run.data.tags[checkpoint_tag()])
    local.write_bytes(random.Random(1).randbytes(10_000))
    logged = _artifact_root(uri, run_id) / run.data.tags[checkpoint.ARTIFACT_TAG]
    _without("history")(logged)
    done = run_cli(f"resume={run_id}", "trainer.epochs=3", f"tracking.uri={uri}")
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output and "weights_only" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "[ERROR]" in line]
    assert (f"error: run {run_id} has no checkpoint to resume from (checkpoint {local} is damaged or not a "
            "checkpoint (") in line
    assert ("checkpoint checkpoint/epoch-2/checkpoint.pt (logged to MLflow) is incomplete (no history): it was not "
            "written whole by aeexp); start a new run instead") in line
    assert _only_run(uri).info.status == "FINISHED"


def test_a_checkpoint_carrying_a_pickle_payload_runs_nothing_and_the_resume_refuses_in_one_line(finished_run, run_cli,
                                                                                                tmp_path):
    """The README's *Security*: a resume reads its checkpoint with weights_only=True. Both copies, local and logged,
    hold every field of a checkpoint and also an object whose unpickling runs ``touch <marker>`` (read with
    weights_only=False it would run, and the resume would go on as if nothing happened): nothing runs, and the resume
    is refused in one line naming both."""
    uri, run_id = finished_run
    run = _only_run(uri)
    marker = tmp_path / "payload-ran"
    local = Path(run.data.tags[checkpoint_tag()])
    logged = _artifact_root(uri, run_id) / run.data.tags[checkpoint.ARTIFACT_TAG]
    for path in (local, logged):
        payload = torch.load(path, weights_only=True)
        payload["numpy_rng"]["note"] = Payload(str(marker))
        torch.save(payload, path)
    # (even where torch is told to unpickle in every torch.load that does not ask for weights_only itself)
    done = run_cli(f"resume={run_id}", "trainer.epochs=3", f"tracking.uri={uri}",
                   env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    output = done.stdout + done.stderr
    assert not marker.exists()
    assert done.returncode == 1 and "Traceback" not in output and "weights_only" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "[ERROR]" in line]
    assert (f"error: run {run_id} has no checkpoint to resume from (checkpoint {local} is damaged or not a "
            "checkpoint (UnpicklingError); checkpoint checkpoint/epoch-2/checkpoint.pt (logged to MLflow) is damaged "
            "or not a checkpoint (UnpicklingError)); start a new run instead") in line, line
    run = _only_run(uri)
    assert run.info.status == "FINISHED" and "resumed_from_epoch" not in run.data.tags


def test_checkpoint_every_0_logs_the_checkpoint_only_when_the_run_ends(tmp_path, run_cli, new_sqlite_store):
    """trainer.checkpoint_every=0 (the README: only when the run ends or stops): a run killed after epoch 6 has
    logged no copy (the default, every 5 epochs, would have logged epoch 5's); resumed to its end, it logs the last
    epoch's."""
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    process, output = _start_and_stop(tmp_path, uri, signal.SIGKILL, 6, "trainer.checkpoint_every=0", "embed=pca")
    assert process.returncode == -signal.SIGKILL, output[-3000:]
    run_id = _run_id(output)
    run = _only_run(uri)
    assert checkpoint.ARTIFACT_TAG not in run.data.tags and "checkpoint" not in artifact_paths(uri, run_id)
    assert checkpoint.load(Path(run.data.tags[checkpoint_tag()])).epoch >= 6  # saved locally all the same
    done = run_cli(f"resume={run_id}", "trainer.epochs=8", "trainer.checkpoint_every=0", f"tracking.uri={uri}",
                   "embed=pca")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _only_run(uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags[checkpoint.ARTIFACT_TAG] == "checkpoint/epoch-8/checkpoint.pt"
    assert [p.name for p in (_artifact_root(uri, run_id) / "checkpoint").iterdir()] == ["epoch-8"]


def test_an_output_folder_made_read_only_mid_run_fails_in_one_line_and_the_run_resumes_as_it_ends(
        tmp_path, run_cli, new_sqlite_store):
    """The output folder is made read-only while the run trains: one line naming the checkpoint that could not be
    written and what to do, the run FAILED, nothing half-written. Its resume, with the changes the README allows,
    leaves tags and config.yaml describing the run as it ended: no stale error, resumed.* for what changed."""
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    out = tmp_path / "out"
    process = _start(tmp_path, uri, f"hydra.run.dir={out}")
    try:
        run_id = _run_id(_read_until(process, "epoch 2/"))
        with read_only(out):
            output = _rest(process)
    finally:
        _rest(process)
    local = checkpoint.local_path(out, run_id)
    assert process.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    saved = checkpoint.load(local).epoch  # the last whole one, still there
    assert re.search(rf"error: cannot write {re.escape(str(local))} \((Permission denied|Operation not permitted)\): "
                     r"its folder is not writable; make it writable, or write elsewhere \(hydra.run.dir=...\); the "
                     rf"MLflow run {run_id} was marked FAILED; training up to epoch {saved} is saved in "
                     rf"{re.escape(str(local))}: once that is fixed, continue with `python -m aeexp resume={run_id} ",
                     errors[0]), errors[0]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    failed = _only_run(uri)
    assert failed.info.status == "FAILED" and "WriteError: cannot write" in failed.data.tags["error"]

    done = run_cli(f"resume={run_id}", f"trainer.epochs={saved + 1}", "embed.n_samples=100", "embed=pca",
                   f"tracking.uri={uri}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _only_run(uri)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert run.data.params["trainer.epochs"] == "100000" and run.data.params["embed.n_samples"] == "200"
    assert {key: value for key, value in run.data.tags.items() if key.startswith("resumed")} == {
        "resumed_from_epoch": str(saved), "resumed.trainer.epochs": str(saved + 1),
        "resumed.embed.n_samples": "100", "resumed.embed.views.pca._target_": "aeexp.evaluation.views.pca",
        "resumed.embed.views.pca._partial_": "True", "resumed.embed.views.pca.title": "PCA"}
    config = Path(MlflowClient(uri).download_artifacts(run_id, "config.yaml", str(tmp_path))).read_text()
    assert f"epochs: {saved + 1}" in config and "n_samples: 100" in config and "aeexp.evaluation.views.pca" in config
    assert "aeexp.evaluation.views.tsne" not in config
    assert _steps(uri, run_id, "train_loss") == list(range(1, saved + 2))


def test_ctrl_c_stops_a_real_run_which_resumes_on_another_device_and_precision(tmp_path, run_cli,
                                                                             new_sqlite_store):
    """SIGINT to the run's process group, as a terminal's Ctrl-C sends it: exit 130, one line, the run KILLED with
    its checkpoint in MLflow. It resumes with a new device, compile and mixed-precision setting, which reach the
    training: its tags say how the rest trained."""
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    process = _start(tmp_path, uri, new_session=True)
    try:
        run_id = _run_id(_read_until(process, "epoch 2/"))
        os.killpg(process.pid, signal.SIGINT)
        output = _rest(process, timeout=60)
    finally:
        _rest(process)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "[ERROR]" in line]
    stopped = re.search(r"error: interrupted \(SIGINT received\) after epoch (\d+) of 100000; the MLflow run "
                        rf"{run_id} was marked KILLED; continue with `python -m aeexp resume={run_id} ", line)
    assert stopped, line
    epochs = int(stopped.group(1))
    run = _only_run(uri)
    assert run.info.status == "KILLED"
    assert run.data.tags["train.path"] == "fast" and run.data.tags["device"] == "cpu"
    assert run.data.tags[checkpoint.ARTIFACT_TAG] == f"checkpoint/epoch-{epochs}/checkpoint.pt"

    device = "cuda" if torch.cuda.is_available() else "cpu"
    done = run_cli(f"resume={run_id}", f"trainer.epochs={epochs + 1}", f"trainer.device={device}",
                   "trainer.compile=false", "trainer.mixed_precision=false", "trainer.progress=false",
                   f"tracking.uri={uri}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _only_run(uri)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["device"] == ("cuda:0" if device == "cuda" else "cpu")
    assert tags["train.path"] == ("autograd" if device == "cuda" else "fast") and tags["train.bf16"] == "false"
    assert (tags["resumed.trainer.device"], tags["resumed.trainer.compile"], tags["resumed.trainer.mixed_precision"]
            ) == (device, "False", "False")
    assert run.data.params["trainer.device"] == "auto" and run.data.params["trainer.mixed_precision"] == "True"
    assert _steps(uri, run_id, "train_loss") == list(range(1, epochs + 2))


def test_ctrl_c_hammered_during_training_leaves_the_run_killed_and_says_so(tmp_path, new_sqlite_store):
    """A user pressing Ctrl-C again and again: the first stops the run at its next step, the second at once, and
    the rest are only noted, so that nothing cuts short the recording of the stop: exit 130, the run KILLED as the
    one line says, no traceback (the signals land in the checkpoint upload, MLflow's calls and the exit)."""
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    process = _start(tmp_path, uri)
    try:
        run_id = _run_id(_read_until(process, "epoch 2/"))
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            process.send_signal(signal.SIGINT)
            time.sleep(0.02)
        output = _rest(process, timeout=60)
    finally:
        _rest(process)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "[ERROR]" in line]
    assert re.search(r"error: interrupted \(SIGINT received( twice)?\) after epoch \d+ of 100000; the MLflow run "
                     rf"{run_id} was marked KILLED; continue with `python -m aeexp resume={run_id} ", line), line
    assert _only_run(uri).info.status == "KILLED"


SLOW_DATA = '''
import time

from aeexp.data import Digits


class SlowDigits(Digits):
    """The digits, read slowly: a SIGTERM lands while they are read."""

    def read(self):
        print("aeexp-test: reading the data", flush=True)
        time.sleep(4)
        return super().read()
'''


def test_sigterm_during_the_data_read_says_that_no_run_was_started(tmp_path, new_sqlite_store):
    uri = new_sqlite_store(tmp_path / "mlflow.db")
    (tmp_path / "slow_data.py").write_text(SLOW_DATA)
    process = subprocess.Popen([sys.executable, "-m", "aeexp", *RUN, "dataset._target_=slow_data.SlowDigits",
                                f"tracking.uri={uri}"], cwd=tmp_path, env={**_env(), "PYTHONPATH": str(tmp_path)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _read_until(process, "aeexp-test: reading the data")
        process.send_signal(signal.SIGTERM)
        output = _rest(process, timeout=120)
    finally:
        _rest(process)
    assert process.returncode == 130, output[-3000:]
    (line,) = [line for line in output.splitlines() if "[ERROR]" in line]
    assert line.endswith("error: interrupted (SIGTERM received) before its MLflow run began; no run was started or "
                         "changed"), line
    assert runs_in(uri) == []
