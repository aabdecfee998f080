"""A stored config is data: targets and interpolations planted into a real run's checkpoint, its ``config.yaml`` and
its logged model's ``config.yaml`` are refused by ``resume=``, ``sweep.resume=``, ``aeexp evaluate`` and ``aeexp
encode`` in one line, before anything is built, written, run or read from the environment.

One real sweep of one job (a child run with a checkpoint, a config.yaml artifact and a logged model) for the module;
each test plants one thing into one of its files, runs the real command, and puts the file back.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import yaml
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import metric_history, runs_in
from omegaconf import OmegaConf

from aeexp import stored_config
from aeexp.tracking import CHECKPOINT_TAG

SWEEP = ["-m", "dataset=digits", "model=ae32", "model.widths=[32]", "model.bottleneck=4", "embed=pca", *FAST]
SECRET = "s3cr3t-from-the-environment"
SECRET_VAR = "AEEXP_PLANTED_SECRET"


@dataclass
class Trained:
    """The sweep's folder, store, parent and its one child run (with the files a hostile hand could edit)."""

    cwd: Path
    uri: str
    parent_id: str
    run_id: str

    def artifact(self, path: str) -> Path:
        return Path(urlparse(MlflowClient(self.uri).get_run(self.run_id).info.artifact_uri).path) / path

    def model_config(self) -> Path:
        """The logged model's ``extra_files/config.yaml`` (MLflow 3 keeps a logged model apart from its run)."""
        client = MlflowClient(self.uri)
        models = client.search_logged_models([client.get_run(self.run_id).info.experiment_id],
                                             filter_string=f"source_run_id = '{self.run_id}'")
        model = max(models, key=lambda found: found.creation_timestamp)  # the run's latest
        return Path(urlparse(model.artifact_location).path) / "extra_files" / "config.yaml"

    def checkpoint(self) -> Path:
        return Path(MlflowClient(self.uri).get_run(self.run_id).data.tags[CHECKPOINT_TAG])


def _aeexp(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", SECRET_VAR: SECRET})
    return subprocess.run([sys.executable, "-m", "aeexp", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    cwd = tmp_path_factory.mktemp("stored-config")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    done = _aeexp(cwd, *SWEEP, f"tracking.uri={uri}")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_in(uri, "digits")
    (parent,) = [run for run in runs if "sweep.name" in run.data.tags]
    (child,) = [run for run in runs if run is not parent]
    return Trained(cwd, uri, parent.info.run_id, child.info.run_id)


@dataclass
class Plant:
    """What goes into a stored config, and how to tell whether it ran."""

    key: str
    node: object
    marker: Path  # made when the plant runs (the .pth file's code)
    victim: Path  # truncated or overwritten when the plant runs


def _plants(folder: Path) -> dict[str, Callable[[str], Plant]]:
    """Each target of the issue, and an interpolation that reads the environment, as a plant at a config key."""
    site_dir, marker, victim = folder / "site", folder / "marker", folder / "victim.txt"
    site_dir.mkdir(exist_ok=True)
    (site_dir / "aeexp_planted.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n")
    victim.write_text("the user's own file\n")
    (folder / "other.txt").write_text("what a copy would put there\n")
    return {
        "site.addsitedir": lambda key: Plant(key, {"_target_": "site.addsitedir", "sitedir": str(site_dir)},
                                             marker, victim),
        "shutil.copyfile": lambda key: Plant(key, {"_target_": "shutil.copyfile", "src": str(folder / "other.txt"),
                                                   "dst": str(victim)}, marker, victim),
        "builtins.open": lambda key: Plant(key, {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
                                           marker, victim),
        "oc.env": lambda key: Plant(key, f"${{oc.env:{SECRET_VAR}}}", marker, victim),
    }


def _planted_yaml(text: str, plant: Plant) -> str:
    config = yaml.safe_load(text)
    node = config
    *path, last = plant.key.split(".")
    for name in path:
        node = node.setdefault(name, {})
    node[last] = plant.node
    return yaml.safe_dump(config)


@contextlib.contextmanager
def _planted_in_file(path: Path, plant: Plant) -> Iterator[None]:
    original = path.read_bytes()
    path.write_text(_planted_yaml(original.decode(), plant))
    try:
        yield
    finally:
        path.write_bytes(original)


@contextlib.contextmanager
def _planted_in_checkpoint(path: Path, plant: Plant) -> Iterator[None]:
    original = path.read_bytes()
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["config"] = _planted_yaml(payload["config"], plant)
    torch.save(payload, path)
    try:
        yield
    finally:
        path.write_bytes(original)


def _store_text(trained: Trained) -> str:
    """Every tag and param of every run in the store, as one text."""
    return "\n".join(f"{key}={value}" for run in runs_in(trained.uri)
                     for key, value in {**run.data.tags, **run.data.params}.items())


def _assert_refused_and_nothing_ran(done: subprocess.CompletedProcess[str], plant: Plant, trained: Trained) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    interpolation = f"${{oc.env:{SECRET_VAR}}}"
    refusal = (f"holds the interpolation {plant.key}: {interpolation!r}" if plant.node == interpolation
               else f"has {plant.key}._target_={plant.node['_target_']}: from a stored config aeexp builds only")
    assert refusal in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not plant.marker.exists(), "the .pth file's code ran"
    assert plant.victim.read_text() == "the user's own file\n", "the victim file was written"
    assert SECRET not in output and SECRET not in _store_text(trained), "the environment was read"


CASES = ["site.addsitedir", "shutil.copyfile", "builtins.open", "oc.env"]


@pytest.mark.parametrize("what", CASES)
def test_resume_refuses_a_checkpoint_config_that_builds_or_reads_what_aeexp_would_not(trained, tmp_path, what):
    plant = _plants(tmp_path)[what]("tags.note" if what == "oc.env" else "optimizer")
    steps = [step for step, _ in metric_history(trained.uri, trained.run_id, "train_loss")]
    with _planted_in_checkpoint(trained.checkpoint(), plant):
        done = _aeexp(trained.cwd, f"resume={trained.run_id}", "trainer.epochs=3", f"tracking.uri={trained.uri}")
    _assert_refused_and_nothing_ran(done, plant, trained)
    run = MlflowClient(trained.uri).get_run(trained.run_id)
    assert run.info.status == "FINISHED" and "resumed_from_epoch" not in run.data.tags
    assert [step for step, _ in metric_history(trained.uri, trained.run_id, "train_loss")] == steps


@pytest.mark.parametrize("what", CASES)
def test_sweep_resume_refuses_a_child_checkpoint_config_that_builds_or_reads_what_aeexp_would_not(trained, tmp_path,
                                                                                                  what):
    plant = _plants(tmp_path)[what]("tags.note" if what == "oc.env" else "scheduler")
    client = MlflowClient(trained.uri)
    client.set_terminated(trained.run_id, "FAILED")  # a job a resumed sweep continues from its checkpoint
    try:
        with _planted_in_checkpoint(trained.checkpoint(), plant):
            done = _aeexp(trained.cwd, *SWEEP, f"tracking.uri={trained.uri}", f"sweep.resume={trained.parent_id}")
        _assert_refused_and_nothing_ran(done, plant, trained)
        children = [run for run in runs_in(trained.uri) if run.data.tags.get("mlflow.parentRunId") == trained.parent_id]
        assert [run.info.run_id for run in children] == [trained.run_id]  # no new child, the old one untouched
        assert "resumed_from_epoch" not in children[0].data.tags and children[0].info.status == "FAILED"
    finally:
        client.set_terminated(trained.run_id, "FINISHED")


@pytest.mark.parametrize("what", CASES)
@pytest.mark.parametrize("where", ["config.yaml", "model/extra_files/config.yaml"])
def test_evaluate_refuses_a_run_config_that_builds_or_reads_what_aeexp_would_not(trained, tmp_path, where, what):
    key = "dataset" if where == "config.yaml" else "model"
    plant = _plants(tmp_path)[what](f"{key}.name" if what == "oc.env" else key)
    path = trained.artifact(where) if where == "config.yaml" else trained.model_config()
    with _planted_in_file(path, plant):
        done = _aeexp(trained.cwd, "evaluate", trained.run_id, "--tracking-uri", trained.uri)
    _assert_refused_and_nothing_ran(done, plant, trained)
    assert "aeexp.evaluated" not in MlflowClient(trained.uri).get_run(trained.run_id).data.tags


@pytest.mark.parametrize("what", CASES)
def test_encode_refuses_a_model_config_that_builds_or_reads_what_aeexp_would_not(trained, tmp_path, what):
    plant = _plants(tmp_path)[what]("model.name" if what == "oc.env" else "model")
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((3, 8, 8), dtype=np.uint8))
    with _planted_in_file(trained.model_config(), plant):
        done = _aeexp(trained.cwd, "encode", f"runs:/{trained.run_id}/model", str(images), "--out",
                      str(tmp_path / "codes.npy"), "--tracking-uri", trained.uri)
    _assert_refused_and_nothing_ran(done, plant, trained)
    assert not (tmp_path / "codes.npy").exists()


def test_own_classes_pass_when_named_again_or_allowed_and_nothing_else_does():
    stored = OmegaConf.create({
        "model": {"_target_": "mymodels.SparseAE", "widths": [{"_target_": "os.system", "command": "true"}]},
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
        "scheduler": {"_target_": None}, "dataset": {"_target_": "aeexp.data.Digits"}})
    assert stored_config.targets(stored) == [("model", "mymodels.SparseAE"), ("model.widths.0", "os.system"),
                                             ("optimizer", "torch.optim.AdamW"), ("scheduler", None),
                                             ("dataset", "aeexp.data.Digits")]
    named_again = OmegaConf.create({"model": {"_target_": "mymodels.SparseAE"}})
    with pytest.raises(stored_config.StoredConfigError, match=r"has model\._target_=mymodels\.SparseAE"):
        stored_config.check_targets(stored, "it")
    with pytest.raises(stored_config.StoredConfigError, match=r"has model\.widths\.0\._target_=os\.system"):
        stored_config.check_targets(stored, "it", current=named_again)  # nested: built by Hydra's recursion
    with stored_config.allowing(["os.system"]):
        stored_config.check_targets(stored, "it", current=named_again)
        stored_config.check_targets(stored, "it", allowed=["mymodels.SparseAE"])
    with pytest.raises(stored_config.StoredConfigError, match=r"os\.system"):  # allowed only inside the block
        stored_config.check_targets(stored, "it", allowed=["mymodels.SparseAE"])
    for own in ("aeexp.models.ConvAutoencoder", "aeexp.models.vae.VariationalAutoencoder", "aeexp.data.FolderDataset",
                "torch.optim.SGD", "torch.optim.lr_scheduler.OneCycleLR", "torch.optim.lr_scheduler.ReduceLROnPlateau"):
        assert stored_config.shipped(own), own
    for other in ("torch.optim.lr_scheduler.warnings.warn", "torch.load", "aeexp.models.build", "aeexp.files.Path",
                  "torch.optim", "builtins.eval"):
        assert not stored_config.shipped(other), other
