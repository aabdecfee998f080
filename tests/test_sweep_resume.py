"""Finishing a sweep that died: a real sweep process killed mid-way (SIGKILL, as by the OOM killer or a lost node),
then the same command with sweep.resume=last; and the settings it refuses."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from mlflow_store import assert_no_running, metric_history, runs_in

EPOCHS = 15
SWEEP = ["-m", "model.bottleneck=2,4,8", f"trainer.epochs={EPOCHS}", "trainer.batch_size=16", "trainer.progress=false",
         "embed=pca", "embed.n_samples=200"]


def _kill_during_second_job(command: list[str], cwd: Path, epochs: int = EPOCHS) -> str:
    """Run ``command`` (of ``epochs`` per job) and SIGKILL it once its second job has trained 3 epochs; its output."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        second_job_epochs = 0
        for line in process.stdout:
            seen.append(line)
            if "#1 :" in line:
                second_job_epochs = 0.5  # counting from here
            elif second_job_epochs and f"/{epochs}: train_loss" in line:
                second_job_epochs += 1
                if second_job_epochs > 3:
                    break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return "".join(seen)


def _children(tracking_uri: str, parent_id: str) -> dict[str, object]:
    runs = runs_in(tracking_uri, "digits")
    return {r.data.params["model.bottleneck"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}


def test_a_killed_sweep_is_finished_with_sweep_resume(tmp_path, tracking_uri, run_cli):
    command = [sys.executable, "-m", "aeexp", *SWEEP, f"tracking.uri={tracking_uri}"]
    output = _kill_during_second_job(command, tmp_path)
    assert "#1 :" in output and "#2 :" not in output, output[-2000:]
    (parent,) = [r for r in runs_in(tracking_uri, "digits") if "sweep.name" in r.data.tags]
    parent_id = parent.info.run_id
    before = _children(tracking_uri, parent_id)
    assert parent.info.status == "RUNNING"  # what a killed process leaves
    assert {b: r.info.status for b, r in before.items()} == {"2": "FINISHED", "4": "RUNNING"}
    first_end = before["2"].info.end_time
    killed_epochs = len(metric_history(tracking_uri, before["4"].info.run_id, "train_loss"))
    assert 3 <= killed_epochs < EPOCHS

    done = run_cli(*SWEEP, f"tracking.uri={tracking_uri}", "sweep.resume=last", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "reusing it" in log and "continuing run" in log
    runs = runs_in(tracking_uri, "digits")
    assert [r.info.run_id for r in runs if "sweep.name" in r.data.tags] == [parent_id]  # the same parent
    parent = MlflowClient(tracking_uri).get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.attempts"] == "2"
    after = _children(tracking_uri, parent_id)
    assert {b: r.info.status for b, r in after.items()} == {"2": "FINISHED", "4": "FINISHED", "8": "FINISHED"}
    assert after["2"].info.run_id == before["2"].info.run_id and after["2"].info.end_time == first_end  # not rerun
    resumed = after["4"]
    assert resumed.info.run_id == before["4"].info.run_id  # continued, from its checkpoint
    assert int(resumed.data.tags["resumed_from_epoch"]) >= 3
    assert [step for step, _ in metric_history(tracking_uri, resumed.info.run_id, "train_loss")] == list(
        range(1, EPOCHS + 1))
    assert_no_running(tracking_uri)
    # The report is regenerated over all three jobs and logged to the parent.
    report_dir = Path(parent.data.tags["sweep.dir"]) / "comparison"
    with (report_dir / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["bottleneck"], r["status"], r["overrides"]) for r in rows) == [
        ("2", "FINISHED", "model.bottleneck=2"), ("4", "FINISHED", "model.bottleneck=4"),
        ("8", "FINISHED", "model.bottleneck=8")]
    logged = MlflowClient(tracking_uri).list_artifacts(parent_id, "comparison")
    assert "comparison/report.html" in {a.path for a in logged}


def test_a_job_without_a_checkpoint_runs_anew(tmp_path, tracking_uri, run_cli):
    # A job that failed before training (a value its model refuses) has no checkpoint: resumed, it runs again
    # (here it fails again), and the earlier attempt is marked superseded, counted once.
    first = run_cli("-m", "model.bottleneck=8,100", "trainer.epochs=1", "trainer.progress=false", "embed=pca",
                    "embed.n_samples=100", f"tracking.uri={tracking_uri}")
    assert first.returncode == 1
    again = run_cli("-m", "model.bottleneck=8,100", "trainer.epochs=1", "trainer.progress=false", "embed=pca",
                    "embed.n_samples=100", f"tracking.uri={tracking_uri}", "sweep.resume=last")
    assert again.returncode == 1 and "1 of 2 jobs failed" in again.stdout + again.stderr
    runs = runs_in(tracking_uri, "digits")
    failed = [r for r in runs if r.data.params.get("model.bottleneck") == "100"]
    assert len(failed) == 2 and all(r.info.status == "FAILED" for r in failed)
    assert sum("sweep.superseded" in r.data.tags for r in failed) == 1
    assert len([r for r in runs if r.data.params.get("model.bottleneck") == "8"]) == 1  # reused, not rerun
    assert_no_running(tracking_uri)


def test_sweep_resume_refuses_what_is_not_a_sweep_parent(tmp_path, tracking_uri, run_cli):
    sweep = run_cli("-m", "model.bottleneck=2", "trainer.epochs=1", "trainer.progress=false", "embed=pca",
                    "embed.n_samples=100", f"tracking.uri={tracking_uri}")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    runs = runs_in(tracking_uri)
    (parent,) = [r for r in runs if "sweep.name" in r.data.tags]
    (child,) = [r for r in runs if "sweep.name" not in r.data.tags]
    cases = {
        "0123456789abcdef": "sweep.resume=0123456789abcdef: no run '0123456789abcdef' at sqlite:///",
        child.info.run_id: f"is not a sweep's parent run; it is a job of the sweep whose parent run is "
                           f"{parent.info.run_id}: give sweep.resume={parent.info.run_id}",
    }
    for resume, message in cases.items():
        started = time.monotonic()
        done = run_cli("-m", "model.bottleneck=2", f"tracking.uri={tracking_uri}", f"sweep.resume={resume}")
        output = done.stdout + done.stderr
        assert done.returncode == 1 and message in output, output[-2000:]
        assert "Traceback" not in output and "Launching" not in output
        assert time.monotonic() - started < 60
    plain = run_cli(f"sweep.resume={parent.info.run_id}", f"tracking.uri={tracking_uri}")
    assert plain.returncode == 1 and "sweep.resume finishes a sweep" in plain.stdout + plain.stderr
    assert "Traceback" not in plain.stdout + plain.stderr
    assert len(runs_in(tracking_uri)) == 2  # nothing new
    assert MlflowClient(tracking_uri).get_run(parent.info.run_id).info.status == "FINISHED"
    assert_no_running(tracking_uri)


def test_a_resume_with_another_command_line_or_of_a_deleted_parent_is_refused_in_one_line(tmp_path, tracking_uri,
                                                                                         run_cli):
    command = ["-m", "model.bottleneck=2,4", "trainer.epochs=1", "trainer.progress=false", "embed=pca",
               "embed.n_samples=100", f"tracking.uri={tracking_uri}"]
    assert run_cli(*command).returncode == 0
    (parent,) = [r for r in runs_in(tracking_uri) if "sweep.name" in r.data.tags]
    parent_id = parent.info.run_id
    changed = run_cli(*command, "trainer.batch_size=32", f"sweep.resume={parent_id}")
    output = changed.stdout + changed.stderr
    assert changed.returncode == 1, output[-2000:]
    assert (f"error: sweep.resume={parent_id}: this is not the command line of sweep 'sweep model.bottleneck=2,4' "
            "(this command line has trainer.batch_size=32), so its jobs would not be the sweep's") in output
    assert "Launching" not in output and "Traceback" not in output
    MlflowClient(tracking_uri).delete_run(parent_id)
    deleted = run_cli(*command, f"sweep.resume={parent_id}")
    output = deleted.stdout + deleted.stderr
    assert deleted.returncode == 1, output[-2000:]
    assert f"the sweep's parent run {parent_id} (sweep model.bottleneck=2,4) was deleted; restore it first" in output
    assert "Launching" not in output and "Warning" not in output and "Traceback" not in output
    after = MlflowClient(tracking_uri).get_run(parent_id)
    assert after.info.status == "FINISHED" and after.data.tags.get("sweep.attempts") is None  # untouched
    assert len(runs_in(tracking_uri)) == 2  # its two jobs (the parent is in the trash): nothing new


def _wait_for_line(process: subprocess.Popen[str], text: str, seen: list[str]) -> None:
    for line in process.stdout:
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"ended before {text!r}:\n{''.join(seen)[-3000:]}")


def test_a_second_sweep_resume_while_one_runs_is_refused_and_a_killed_one_holds_nothing(tmp_path, tracking_uri,
                                                                                        run_cli):
    """Two ``sweep.resume`` of one sweep at once: the second is refused in one line (no second child, no metric step
    twice); the first, killed, leaves no lock behind: a third finishes the sweep."""
    epochs = 40  # long enough for the second resume to start while the first trains
    command = [sys.executable, "-m", "aeexp", "-m", "model.bottleneck=2,4", f"trainer.epochs={epochs}",
               "trainer.early_stopping.patience=null", *SWEEP[3:], f"tracking.uri={tracking_uri}"]
    _kill_during_second_job(command, tmp_path, epochs)
    (parent,) = [r for r in runs_in(tracking_uri, "digits") if "sweep.name" in r.data.tags]
    first = subprocess.Popen([*command, "sweep.resume=last"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        _wait_for_line(first, "continuing run", seen)
        second = subprocess.run([*command, "sweep.resume=last"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        output = second.stdout + second.stderr
        assert second.returncode == 1, output[-2000:]
        assert f"error: sweep.resume=last: process {first.pid} on " in output
        assert "is running this sweep now" in output and "Launching" not in output and "Traceback" not in output
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()  # (nothing, if it has ended)
        first.wait()
    third = subprocess.run([*command, "sweep.resume=last"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=400)
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]
    children = _children(tracking_uri, parent.info.run_id)
    assert sorted(children) == ["2", "4"] and {r.info.status for r in children.values()} == {"FINISHED"}
    for child in children.values():
        steps = [step for step, _ in metric_history(tracking_uri, child.info.run_id, "train_loss")]
        assert steps == list(range(1, epochs + 1)), steps
    assert MlflowClient(tracking_uri).get_run(parent.info.run_id).data.tags["sweep.attempts"] == "3"
    assert_no_running(tracking_uri)
