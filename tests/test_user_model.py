"""A user's own model, from a folder outside the package, through the CLI: a subclass of one of aeexp's models in a
module on PYTHONPATH, named by ``_target_`` in a YAML of the user's ``--config-dir``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from conftest import FAST
from mlflow_store import assert_no_running, metric_history, runs_in
from omegaconf import OmegaConf

MYMODELS = '''
    from __future__ import annotations

    from typing import Any

    import torch

    import aeexp.models
    from aeexp.models import pixel_loss


    class SparseAE(aeexp.models.DenseAutoencoder):
        """A dense AE whose codes pay an L1 penalty, written as a user would."""

        def __init__(self, *args: Any, l1: float = 0.01, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.l1 = l1

        def training_loss(self, inputs: torch.Tensor, targets: torch.Tensor):
            codes = self.encode(inputs)
            recon = pixel_loss(self.decode_logits(codes), targets, self.loss)
            penalty = codes.abs().mean()
            return recon + self.l1 * penalty, {"recon": recon, "penalty": penalty}
'''

SPARSE_AE_YAML = '''
    _target_: mymodels.SparseAE
    name: sparse_ae
    widths: [32]
    bottleneck: 6
    l1: 0.05
    loss: bce
'''


@pytest.fixture
def user_files(tmp_path: Path) -> tuple[Path, Path]:
    """``(code folder holding mymodels.py, config folder holding model/sparse_ae.yaml)``, both outside the run's
    working directory (a module there would be found without PYTHONPATH)."""
    code, configs = tmp_path / "user" / "code", tmp_path / "user" / "configs"
    (configs / "model").mkdir(parents=True)
    code.mkdir()
    (code / "mymodels.py").write_text(textwrap.dedent(MYMODELS))
    (configs / "model" / "sparse_ae.yaml").write_text(textwrap.dedent(SPARSE_AE_YAML))
    return code, configs


def test_a_model_of_ones_own_trains_and_logs_its_loss_parts(run_cli, tracking_uri, user_files, tmp_path,
                                                            monkeypatch):
    code, configs = user_files
    work = tmp_path / "work"
    work.mkdir()
    done = run_cli("--config-dir", str(configs), "model=sparse_ae", f"tracking.uri={tracking_uri}", *FAST,
                   "embed=pca", cwd=work, env={"PYTHONPATH": str(code)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "sparse_ae-b4-digits"  # digits' 4-d code, as any model's there
    params, tags = run.data.params, run.data.tags
    assert params["model._target_"] == "mymodels.SparseAE"
    assert params["model.l1"] == "0.05" and params["model.widths"] == "[32]" and params["model.bottleneck"] == "4"
    # what was built, the class's defaults included: its YAML leaves code_norm out, DenseAutoencoder's is none
    assert params["model.code_norm"] == "none" and params["model.image_shape"] == "[1, 8, 8]"
    assert params["optimizer.amsgrad"] == "False"
    assert tags["train.path"] == "autograd"  # a subclass may compute another loss: never the fast path
    assert tags["train.bf16"] == "false" and tags["model"] == "sparse_ae"
    for part in ("recon", "penalty"):
        history = metric_history(tracking_uri, run.info.run_id, f"train_{part}")
        assert [step for step, _ in history] == [1, 2], part
        assert all(value > 0 for _, value in history), part
    recon = dict(metric_history(tracking_uri, run.info.run_id, "train_recon"))
    penalty = dict(metric_history(tracking_uri, run.info.run_id, "train_penalty"))
    train_loss = dict(metric_history(tracking_uri, run.info.run_id, "train_loss"))
    for epoch in (1, 2):  # the logged loss is the model's own: recon + l1 * penalty
        assert train_loss[epoch] == pytest.approx(recon[epoch] + 0.05 * penalty[epoch], rel=1e-4)

    monkeypatch.syspath_prepend(str(code))  # the logged model is the user's class, loadable where it is importable
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model", map_location="cpu")
    assert type(model).__module__ == "mymodels" and type(model).__name__ == "SparseAE" and model.l1 == 0.05
    assert model.encode(torch.rand(3, 1, 8, 8)).shape == (3, 4)


def _composed_model(run_cli, configs: Path, *overrides: str) -> dict:
    done = run_cli("--config-dir", str(configs), "model=sparse_ae", *overrides, "--cfg", "job", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return OmegaConf.to_container(OmegaConf.create(done.stdout).model)


def test_a_dataset_s_model_settings_apply_to_a_model_of_ones_own(run_cli, user_files):
    """digits' 4-d code (conf/dataset_model/digits.yaml) reaches a model from ``--config-dir`` as it reaches the
    presets, after the model's own YAML; the command line still wins, and another dataset keeps the YAML's code."""
    _, configs = user_files
    assert _composed_model(run_cli, configs)["bottleneck"] == 4
    assert _composed_model(run_cli, configs, "model.bottleneck=5")["bottleneck"] == 5
    assert _composed_model(run_cli, configs, "dataset=mnist")["bottleneck"] == 6
    assert _composed_model(run_cli, configs, "~dataset_model")["bottleneck"] == 6
    composed = _composed_model(run_cli, configs)
    assert (composed["l1"], composed["widths"], composed["loss"], composed["noise"]) == (0.05, [32], "bce", "none")


@pytest.mark.parametrize(("override", "message"), [
    ("model.l1=lots", "error: model.l1='lots' is invalid: expected a number."),
    ("+model.l2=0.1", "error: model.l2 is not a parameter of mymodels.SparseAE"),
    ("model.bottleneck=1.5", "error: model.bottleneck=1.5 is invalid: expected an integer."),
], ids=["l1-string", "unknown-key", "base-class-parameter"])
def test_a_bad_value_of_ones_own_parameter_is_refused_before_any_run(run_cli, tracking_uri, user_files, tmp_path,
                                                                     override, message):
    code, configs = user_files
    work = tmp_path / "work"
    work.mkdir()
    done = run_cli("--config-dir", str(configs), "model=sparse_ae", override, f"tracking.uri={tracking_uri}", *FAST,
                   cwd=work, env={"PYTHONPATH": str(code)}, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert output.count(message) == 1 and "Traceback" not in output, output[-2000:]
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1, errors  # one line
    assert runs_in(tracking_uri) == []  # refused before any run (or experiment) was created
    assert_no_running(tracking_uri)


def test_a_model_module_not_on_the_path_is_named(run_cli, tracking_uri, user_files, tmp_path):
    _, configs = user_files
    done = run_cli("--config-dir", str(configs), "model=sparse_ae", f"tracking.uri={tracking_uri}", *FAST,
                   timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert "model._target_='mymodels.SparseAE' cannot be imported" in output and "PYTHONPATH" in output, output[-2000:]
    assert "Traceback" not in output
    assert runs_in(tracking_uri) == []


def _readme_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of the README's "Adding a model" section, in order."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Adding a model", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split(f"```{language}\n")[1:]]


def test_the_readme_s_model_example_runs_as_written(run_cli, tracking_uri, tmp_path):
    """The README's complete example (its Python file and its YAML, as printed there) through the CLI."""
    (code,) = _readme_blocks("python")
    (config,) = _readme_blocks("yaml")
    extension = tmp_path / "aeexp-ext"
    (extension / "configs" / "model").mkdir(parents=True)
    (extension / "mymodels.py").write_text(code)
    (extension / "configs" / "model" / "contractive.yaml").write_text(config)
    work = tmp_path / "work"
    work.mkdir()
    done = run_cli("--config-dir", str(extension / "configs"), "model=contractive", "model.weight=0.5",
                   f"tracking.uri={tracking_uri}", *FAST, "embed=pca", cwd=work, env={"PYTHONPATH": str(extension)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    assert run.info.status == "FINISHED" and run.data.params["model.weight"] == "0.5"
    contraction = dict(metric_history(tracking_uri, run.info.run_id, "train_contraction"))
    recon = dict(metric_history(tracking_uri, run.info.run_id, "train_recon"))
    train_loss = dict(metric_history(tracking_uri, run.info.run_id, "train_loss"))
    assert sorted(contraction) == [1, 2] and all(value > 0 for value in contraction.values())
    for epoch in (1, 2):  # the README's loss: recon + weight * contraction
        assert train_loss[epoch] == pytest.approx(recon[epoch] + 0.5 * contraction[epoch], rel=1e-4)
    refused = run_cli("--config-dir", str(extension / "configs"), "model=contractive", "model.weight=abc",
                      f"tracking.uri={tracking_uri}", *FAST, cwd=work, env={"PYTHONPATH": str(extension)},
                      timeout=120)
    assert refused.returncode == 1
    assert "error: model.weight='abc' is invalid: expected a number." in refused.stdout + refused.stderr
