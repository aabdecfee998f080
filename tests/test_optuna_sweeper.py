"""aeexp's Optuna sweeper: Hydra's sweep syntax as Optuna distributions, a study in a real sqlite storage that a
killed sweep (SIGKILL) continues, trials pruned from their per-epoch val_loss and recorded so in MLflow."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from mlflow_store import assert_no_running, runs_in
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from aeexp.optuna_search import INTERRUPTED_ATTR, search_space

EPOCHS = 6
SEARCH = f"""# @package _global_
defaults:
  - override /hydra/sweeper: aeexp_optuna
  - override /embed: pca

hydra:
  mode: MULTIRUN
  sweeper:
    study_name: digits_prune
    n_trials: 6
    sampler:
      _target_: optuna.samplers.RandomSampler
      seed: 1
    pruner:
      _target_: optuna.pruners.MedianPruner
      n_startup_trials: 1
      n_warmup_steps: 1
    params:
      optimizer.lr: tag(log, interval(0.00001, 0.01))
      model.bottleneck: choice(4, 8)

trainer:
  epochs: {EPOCHS}
  batch_size: 16
  progress: false

embed:
  n_samples: 200

tracking:
  experiment: digits_prune
"""


def test_hydra_sweep_syntax_becomes_optuna_distributions():
    params = {"optimizer.lr": "tag(log, interval(0.0003, 0.01))", "model.bottleneck": "choice(8, 16, 32)",
              "model": "choice(ae32, ae25)", "trainer.batch_size": "range(32, 257, 32)",
              "trainer.epochs": "tag(int, interval(2, 9))", "seed": "0"}
    distributions, fixed = search_space(params, ["dataset=digits", "model=ae25"])
    assert distributions == {
        "optimizer.lr": FloatDistribution(0.0003, 0.01, log=True),
        "model.bottleneck": CategoricalDistribution([8, 16, 32]),
        "trainer.batch_size": IntDistribution(32, 256, step=32),
        "trainer.epochs": IntDistribution(2, 9),
    }  # `model` is fixed by the command line, which wins over the preset's search
    assert fixed == ["seed=0", "dataset=digits", "model=ae25"]
    with pytest.raises(Exception, match="choice"):
        search_space({"x": "glob(*)"}, [])


def _search_command(tmp_path: Path, tracking_uri: str) -> list[str]:
    configs = tmp_path / "configs" / "hparams_search"
    configs.mkdir(parents=True)
    (configs / "digits_prune.yaml").write_text(SEARCH)
    return [sys.executable, "-m", "aeexp", "--config-dir", str(tmp_path / "configs"), "hparams_search=digits_prune",
            f"hydra.sweep.dir={tmp_path / 'search'}", f"tracking.uri={tracking_uri}"]


def _kill_during_third_trial(command: list[str], cwd: Path) -> str:
    """SIGKILL the search once trial 2 has trained its first epoch (never pruned: the pruner's warm-up)."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        third = False
        for line in process.stdout:
            seen.append(line)
            third = third or "#2 :" in line
            if third and f"epoch 1/{EPOCHS}: train_loss" in line:
                break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return "".join(seen)


def test_a_killed_study_continues_where_it_stopped_and_prunes(tmp_path, tracking_uri, run_cli):
    command = _search_command(tmp_path, tracking_uri)
    output = _kill_during_third_trial(command, tmp_path)
    assert "#2 :" in output, output[-3000:]
    storage = f"sqlite:///{tmp_path / 'search' / 'optuna.db'}"
    study = optuna.load_study(study_name="digits_prune", storage=storage)
    (cut,) = study.get_trials(states=(TrialState.RUNNING,))  # what the killed process left
    (parent,) = [r for r in runs_in(tracking_uri, "digits_prune") if "sweep.name" in r.data.tags]
    killed = {r.info.run_id: r for r in runs_in(tracking_uri, "digits_prune")
              if r.info.status == "RUNNING" and "sweep.name" not in r.data.tags}

    done = run_cli(*command[3:], "sweep.resume=last", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="digits_prune", storage=storage)
    trials = study.get_trials()
    assert study.user_attrs[INTERRUPTED_ATTR] == [cut.number]
    assert trials[cut.number].state == TrialState.FAIL
    retried = [t for t in trials if t.number > cut.number and t.params == cut.params]
    assert retried and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)  # queued again, same params
    states = [t.state for t in trials if t.number != cut.number]
    assert len(states) == 6 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner stopped no trial"

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    children = [r for r in runs_in(tracking_uri, "digits_prune")
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    counted = [c for c in children if "sweep.superseded" not in c.data.tags]
    assert len(counted) == 6
    by_lr = {float(c.data.params["optimizer.lr"]): c for c in counted}
    for trial in pruned:  # KILLED, tagged with the epoch of the trial's last report
        child = by_lr[trial.params["optimizer.lr"]]
        assert child.info.status == "KILLED"
        assert child.data.tags["pruned_at_epoch"] == str(max(trial.intermediate_values))
        assert "pruned by Optuna" in child.data.tags["error"]
    for trial in (t for t in trials if t.state == TrialState.COMPLETE):
        assert by_lr[trial.params["optimizer.lr"]].data.metrics["val_loss"] == pytest.approx(trial.value)
    (killed_id,) = killed  # the cut trial's run: continued from its checkpoint by the retried trial
    again = client.get_run(killed_id)
    assert int(again.data.tags["resumed_from_epoch"]) >= 1 and "sweep.superseded" not in again.data.tags
    assert float(again.data.params["optimizer.lr"]) == cut.params["optimizer.lr"]
    assert again.info.status == ("KILLED" if retried[0].state == TrialState.PRUNED else "FINISHED")
    best = study.best_trial
    assert parent.data.tags["optuna.best_trial"] == str(best.number)
    assert float(parent.data.tags["optuna.best.optimizer.lr"]) == best.params["optimizer.lr"]
    assert {"comparison/optuna_history.png", "comparison/report.html", "comparison/optimization_results.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    results = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(best.value) and results["pruned"] == len(pruned)
    assert_no_running(tracking_uri)


MAXIMISE = """# @package _global_
defaults:
  - override /hydra/sweeper: aeexp_optuna
  - override /embed: pca

hydra:
  mode: MULTIRUN
  sweeper:
    direction: maximize
    study_name: digits_max
    n_trials: 3
    sampler:
      _target_: optuna.samplers.RandomSampler
      seed: 0
    pruner: null
    params:
      optimizer.lr: tag(log, interval(0.00001, 0.01))

trainer:
  epochs: 2
  batch_size: 32
  progress: false

embed:
  n_samples: 200

tracking:
  experiment: digits_max
"""


def test_a_maximise_study_keeps_the_trial_of_the_largest_value(tmp_path, tracking_uri, run_cli):
    """hydra.sweeper.direction=maximize: the study maximises the trials' val_loss (a stand-in objective: what matters
    is that the best trial is the one of the largest value, not the smallest), and the sweep reports that trial."""
    configs = tmp_path / "configs" / "hparams_search"
    configs.mkdir(parents=True)
    (configs / "digits_max.yaml").write_text(MAXIMISE)
    done = run_cli("--config-dir", str(tmp_path / "configs"), "hparams_search=digits_max",
                   f"hydra.sweep.dir={tmp_path / 'search'}", f"tracking.uri={tracking_uri}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="digits_max", storage=f"sqlite:///{tmp_path / 'search' / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    values = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(values) == 3 and max(values.values()) > min(values.values()) * 1.01, values
    largest = max(values, key=values.get)
    assert study.best_trial.number == largest
    results = yaml.safe_load((tmp_path / "search" / "optimization_results.yaml").read_text())
    assert results["best_trial"] == largest and results["best_value"] == pytest.approx(values[largest])
    (parent,) = [r for r in runs_in(tracking_uri, "digits_max") if "sweep.name" in r.data.tags]
    assert parent.data.tags["optuna.best_trial"] == str(largest)


def test_an_optuna_storage_that_cannot_be_opened_is_refused(run_cli, tracking_uri):
    done = run_cli("hparams_search=fashion_optuna", "dataset=digits", "hydra.sweeper.storage=sqlite:////proc/nope/x.db",
                   f"tracking.uri={tracking_uri}", timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "hydra.sweeper.storage=sqlite:////proc/nope/x.db: cannot open the Optuna study storage" in output
    assert "Traceback" not in output and "Launching" not in output
    assert runs_in(tracking_uri) == []  # refused before the sweep's parent run


@pytest.mark.parametrize(("setting", "message"), [
    ("hydra.sweeper.pruner.n_startup_trials=-1", "hydra.sweeper.pruner: optuna.pruners._median.MedianPruner refused "
                                                 "its parameters (ValueError: Number of startup trials cannot be "
                                                 "negative"),
    ("hydra.sweeper.pruner._target_=optuna.pruners.NoSuchPruner",
     "hydra.sweeper.pruner._target_='optuna.pruners.NoSuchPruner' is invalid: optuna.pruners has no class or function "
     "NoSuchPruner"),
    ("hydra.sweeper.direction=up", "hydra.sweeper.direction='up' is invalid: choose minimize or maximize"),
], ids=["negative startup trials", "unknown pruner", "direction up"])
def test_bad_sweeper_settings_are_refused_before_any_run(run_cli, tracking_uri, tmp_path, setting, message):
    done = run_cli("hparams_search=fashion_optuna", "dataset=digits", setting, f"hydra.sweep.dir={tmp_path / 's'}",
                   f"tracking.uri={tracking_uri}", timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert f"error: {message}" in output, output[-2000:]
    assert "Traceback" not in output and "Launching" not in output
    assert runs_in(tracking_uri) == []  # refused before the sweep's parent run


def test_a_second_sweep_of_a_study_leaves_the_live_trial_of_the_first_alone(tmp_path, tracking_uri):
    """Two sweeps of one study in one storage at once (a search spread over machines): the second runs its own
    trials and leaves the first's RUNNING trial to it; it is not marked failed as one a killed sweep left."""
    command = _search_command(tmp_path, tracking_uri)
    storage = tmp_path / "shared.db"
    shared = [f"hydra.sweeper.storage={storage}", "hydra.sweeper.pruner=null"]
    first = subprocess.Popen([*command, *shared, f"hydra.sweep.dir={tmp_path / 'first'}", "hydra.sweeper.n_trials=1",
                              "trainer.epochs=400", "trainer.early_stopping.patience=null"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        for line in first.stdout:
            seen.append(line)
            if "epoch 1/400" in line:
                break
        second = subprocess.run([*command, *shared, f"hydra.sweep.dir={tmp_path / 'second'}",
                                 "hydra.sweeper.n_trials=2", "trainer.epochs=1"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=400)
        output = second.stdout + second.stderr
        assert second.returncode == 0, output[-3000:]
        assert "trials [0] run in another sweep of this study now: left to it" in output
        assert "cut short" not in output and "Traceback" not in output
        trials = optuna.load_study(study_name="digits_prune", storage=f"sqlite:///{storage}").get_trials()
        assert trials[0].state == TrialState.RUNNING and first.poll() is None  # the first's, still its own
        assert [t.state for t in trials[1:]] == [TrialState.COMPLETE, TrialState.COMPLETE]
        first.send_signal(signal.SIGINT)
        rest, _ = first.communicate(timeout=120)
    finally:
        first.kill()  # (nothing, if it has ended)
        first.wait()
    assert first.returncode == 130 and "Traceback" not in "".join(seen) + rest, ("".join(seen) + rest)[-3000:]
