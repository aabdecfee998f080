"""End to end through the CLI as a user runs it: a subprocess in a temp dir writing a temp sqlite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, assert_no_running, metric_history, runs_in

from aeexp.data import DEBIAN_FASHION_MNIST

FIGURES = {"reconstructions.png", "loss_curves.png", "interpolation.png", "tsne.png"}


def _single_run(tracking_uri: str, experiment: str):
    runs = runs_in(tracking_uri, experiment)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _assert_png(tracking_uri: str, run_id: str, name: str, tmp_path: Path) -> None:
    local = Path(MlflowClient(tracking_uri).download_artifacts(run_id, name, str(tmp_path)))
    data = local.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name


def test_digits_run_logs_everything(run_cli, tracking_uri, tmp_path):
    done = run_cli(f"tracking.uri={tracking_uri}", "trainer.epochs=4", "trainer.progress=false",
                   "embed.n_samples=300", "model.bottleneck=16", "seed=3")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "digits")
    assert run.info.status == "FINISHED"
    assert run.info.run_id in done.stdout + done.stderr
    assert run.info.run_name == "ae32-b16-digits"

    params = run.data.params
    assert params["model.bottleneck"] == "16"
    assert params["model.widths"] == "[128, 64]"
    assert params["dataset.name"] == "digits"
    assert params["trainer.optimizer"] == "adam"
    assert params["trainer.epochs"] == "4"
    assert params["seed"] == "3"
    assert params["tracking.experiment"] == "digits"

    train_loss = metric_history(tracking_uri, run.info.run_id, "train_loss")
    assert [step for step, _ in train_loss] == [1, 2, 3, 4]
    assert train_loss[-1][1] < train_loss[0][1] * 0.9
    val_loss = metric_history(tracking_uri, run.info.run_id, "val_loss")
    assert [step for step, _ in val_loss] == [1, 2, 3, 4] and val_loss[-1][1] < val_loss[0][1]
    assert all(value > 0 for _, value in metric_history(tracking_uri, run.info.run_id, "epoch_time"))

    m = run.data.metrics
    assert 0 < m["test_loss"] < train_loss[0][1]
    assert 0 < m["test_mse"] < 0.1
    assert m["test_knn_acc"] > 0.6  # chance is 0.1
    assert m["embed_knn_acc"] > 0.4
    assert 0.7 < m["embed_trust"] <= 1.0
    assert m["embed_time"] > 0
    assert 0 < m["pca_test_mse"] < 0.1 and 0.6 < m["pca_knn_acc"] <= 1.0  # the PCA baseline of the same size

    artifacts = artifact_paths(tracking_uri, run.info.run_id)
    assert FIGURES | {"config.yaml", "checkpoint"} <= artifacts
    tags = run.data.tags
    import aeexp

    assert tags["versions.aeexp"] == aeexp.__version__ and tags["versions.torch"] == torch.__version__
    assert tags["device"] == "cpu" and tags["dataset"] == "digits"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(aeexp.__file__).parent, capture_output=True,
                          text=True)
    if head.returncode == 0:  # run from a git checkout (this repo, CI's clone)
        assert tags["git.commit"] == head.stdout.strip() and tags["git.dirty"] in {"true", "false"}
    assert Path(tags["aeexp.checkpoint"]).is_file()
    for figure in FIGURES:
        _assert_png(tracking_uri, run.info.run_id, figure, tmp_path)
    config_text = Path(MlflowClient(tracking_uri).download_artifacts(run.info.run_id, "config.yaml",
                                                                        str(tmp_path))).read_text()
    assert "bottleneck: 16" in config_text

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model", map_location="cpu")
    images = torch.rand(5, 1, 8, 8)
    assert model.encode(images).shape == (5, 16)
    assert model(images).shape == (5, 1, 8, 8)
    # The figures also land in Hydra's output dir of the run.
    assert len(list((tmp_path / "outputs").rglob("tsne.png"))) == 1


def test_mnist_from_idx_files(run_cli, tracking_uri, mnist_root):
    done = run_cli("dataset=mnist", f"dataset.root={mnist_root}", "dataset.download=false", "model=ae25",
                   "model.bottleneck=8", f"tracking.uri={tracking_uri}", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "mnist")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.widths"] == "[400, 200, 100, 50]"
    assert run.data.params["dataset.root"] == str(mnist_root)
    assert run.data.metrics["test_knn_acc"] > 0.3  # synthetic classes are easy; chance is 0.1


def test_fashion_mnist_from_debian_files(run_cli, tracking_uri):
    if not DEBIAN_FASHION_MNIST.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DEBIAN_FASHION_MNIST} missing: .ci/run installs dataset-fashion-mnist")
        pytest.skip("apt-get install dataset-fashion-mnist to run this test")
    done = run_cli("dataset=fashion_mnist", "dataset.root=./nothing-here", "dataset.download=false",
                   "trainer.epochs=1", "trainer.progress=false", "embed.n_samples=300",
                   f"tracking.uri={tracking_uri}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "fashion_mnist")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_knn_acc"] > 0.6


def test_console_script_and_packaged_configs_from_any_dir(tmp_path):
    script = Path(sys.executable).with_name("aeexp")
    assert script.exists(), "the `aeexp` console script is not installed"
    done = subprocess.run([str(script), "model=ae25", "--cfg", "job"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bottleneck: 25" in done.stdout and "- 400" in done.stdout


def test_user_config_dir_adds_configs(tmp_path):
    user = tmp_path / "myconf" / "model"
    user.mkdir(parents=True)
    (user / "tiny.yaml").write_text("name: tiny\nwidths: [16]\nbottleneck: 3\n")
    done = subprocess.run([sys.executable, "-m", "aeexp", "--config-dir", str(tmp_path / "myconf"),
                           "model=tiny", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "name: tiny" in done.stdout and "bottleneck: 3" in done.stdout


def test_wheel_ships_configs_and_runs_without_the_repo(tmp_path):
    """A plain (non-editable) install finds its configs inside the package."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    repo = Path(__file__).resolve().parents[1]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(repo)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(wheel_dir.glob("aeexp-*.whl"))
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                                str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    shipped = {p.relative_to(target / "aeexp" / "conf").as_posix() for p in (target / "aeexp" / "conf").rglob("*.yaml")}
    repo_configs = {p.relative_to(repo / "conf").as_posix() for p in (repo / "conf").rglob("*.yaml")}
    assert shipped == repo_configs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", "import aeexp.cli, sys; print(aeexp.cli.__file__); "
                           "sys.argv=['aeexp', 'dataset=kmnist', '--cfg', 'job']; aeexp.cli.main()"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(target)), done.stdout.splitlines()[0]
    assert "name: kmnist" in done.stdout


def test_nan_loss_marks_run_failed(run_cli, tracking_uri):
    done = run_cli("trainer.optimizer=sgd", "trainer.lr=1e20",
                   f"tracking.uri={tracking_uri}", *FAST)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "training loss became" in output and "trainer.lr" in output
    assert "at epoch 1, step " in output  # stopped at once, at the step where it happened
    assert "Traceback" not in output
    run = _single_run(tracking_uri, "digits")
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["error"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_INPUTS = [
    (["dataset=foo"], "Could not find 'dataset/foo'"),
    (["model=nope"], "Could not find 'model/nope'"),
    (["trainer.optimizer=adamw"], "trainer.optimizer"),
    (["trainer.loss=l1"], "trainer.loss"),
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["trainer.epoch=3"], "trainer.epoch"),
    (["trainer.epochs=0"], "trainer.epochs=0 is invalid"),
    (["trainer.batch_size=-8"], "trainer.batch_size=-8 is invalid"),
    (["trainer.lr=-0.1"], "trainer.lr=-0.1 is invalid"),
    (["model.bottleneck=-1"], "model.bottleneck=-1 is invalid"),
    (["model.bottleneck=64"], "smaller than the input size 64"),
    (["model.widths=[]"], "model.widths=[] is invalid"),
    (["model.widths=[64,0]"], "model.widths[1]=0 is invalid"),
    (["dataset.val_fraction=1.5"], "dataset.val_fraction=1.5 is invalid"),
    (["embed.n_samples=0"], "embed.n_samples=0 is invalid"),
    (["dataset=mnist", "dataset.root=./empty", "dataset.download=false"], "files not found"),
    (["tracking.uri=http://127.0.0.1:{port}"], "unreachable"),
    (["tracking.uri=sqlite:////nonexistent-dir/x/mlflow.db"], "does not exist"),
    (["tracking.uri=sqlite:////proc/aeexp/mlflow.db"], "does not exist"),
    (["tracking.uri=sqlite:////proc/mlflow.db"], "cannot open /proc/mlflow.db as SQLite"),  # unwritable, also for root
    (["hydra.run.dir=/proc/aeexp-out"], "hydra.run.dir=/proc/aeexp-out: cannot write there"),
    (["-m", "hydra.sweep.dir=/proc/aeexp-out"], "hydra.sweep.dir=/proc/aeexp-out: cannot write there"),
    (["embed=nope"], "Could not find 'embed/nope'"),
    (["hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'"),
    (["trainer.device=tpu"], "trainer.device"),
    (["model.bottleneck=1.5"], "model.bottleneck"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_fails_with_one_clear_message(run_cli, tracking_uri, overrides, message, tmp_path):
    overrides = [o.format(port=_free_port()) for o in overrides]
    has_uri = any(o.startswith("tracking.uri") for o in overrides)
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m, before the overrides
    overrides = [o for o in overrides if not o.startswith("-")]
    done = run_cli(*flags, *FAST, *([] if has_uri else [f"tracking.uri={tracking_uri}"]), *overrides, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert message in output, output[-2000:]
    assert "Traceback" not in output
    assert_no_running(tracking_uri)
    assert runs_in(tracking_uri) == [] if Path(tracking_uri.removeprefix("sqlite:///")).exists() else True


def _truncate(files: dict[str, Path]) -> None:
    data = files["train_images"].read_bytes()
    files["train_images"].write_bytes(data[: len(data) // 2])


def _bad_magic(files: dict[str, Path]) -> None:
    data = files["test_labels"].read_bytes()
    files["test_labels"].write_bytes(b"\x01\x02\x03\x04" + data[4:])


def _fewer_labels(files: dict[str, Path]) -> None:
    from idx import write_idx

    write_idx(files["train_labels"], np.zeros(10, dtype=np.uint8))


BROKEN_DATA = [(_truncate, "truncated"), (_bad_magic, "bad magic number 01020304"),
               (_fewer_labels, "300 images but"), (None, "is a file, not a folder")]


@pytest.mark.parametrize(("damage", "message"), BROKEN_DATA, ids=["truncated", "wrong-magic", "count-mismatch",
                                                                  "root-is-a-file"])
def test_broken_data_fails_with_one_clear_message(run_cli, tracking_uri, tmp_path, damage, message):
    from idx import write_dataset

    root = tmp_path / "data"
    if damage is None:
        root.write_text("not a folder")
    else:
        damage(write_dataset(root / "MNIST" / "raw"))
    done = run_cli("dataset=mnist", f"dataset.root={root}", "dataset.download=false", f"tracking.uri={tracking_uri}",
                   *FAST, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert message in output and "Traceback" not in output, output[-2000:]
    assert runs_in(tracking_uri) == []


def test_more_embedding_samples_than_test_images_are_clamped_with_a_notice(run_cli, tracking_uri):
    done = run_cli(f"tracking.uri={tracking_uri}", "trainer.epochs=1", "trainer.progress=false",
                   "embed.n_samples=100000")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "embed.n_samples=100000 is more than the 360 test images: embedding all of them" in done.stdout
    assert _single_run(tracking_uri, "digits").data.params["embed.n_samples"] == "100000"


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_cuda_without_gpu_is_refused(run_cli, tracking_uri):
    done = run_cli("trainer.device=cuda", f"tracking.uri={tracking_uri}", *FAST)
    assert done.returncode == 1
    assert "no CUDA device is available" in done.stdout + done.stderr


def test_same_seed_same_metrics(make_config, tracking_uri):
    from aeexp import experiment

    cfg = make_config(f"tracking.uri={tracking_uri}", *FAST, "seed=7")
    first, second = experiment.run(cfg), experiment.run(cfg)
    other = experiment.run(make_config(f"tracking.uri={tracking_uri}", *FAST, "seed=8"))
    for key in ("test_loss", "test_mse", "test_knn_acc"):
        assert first.metrics[key] == second.metrics[key], key
    assert first.metrics["test_loss"] != other.metrics["test_loss"]
    assert np.isfinite(first.metrics["embed_trust"])


MODEL_VARIANTS = [
    (["model=conv"], set(), {"model.kind": "conv"}),
    (["model=vae", "embed=all"], {"prior_samples.png", "pca.png", "umap.png"}, {"model.variational": "True"}),
    (["model=vae", "model.kind=conv", "model.beta=0.5"], {"prior_samples.png"}, {"model.beta": "0.5"}),
    (["model.noise=salt_pepper", "model.noise_level=0.2"], set(), {"model.noise": "salt_pepper"}),
]


@pytest.mark.parametrize(("overrides", "extra_figures", "params"), MODEL_VARIANTS,
                         ids=["conv", "vae-all-views", "conv-vae", "denoising"])
def test_every_model_trains_and_logs_its_figures(run_cli, tracking_uri, tmp_path, overrides, extra_figures, params):
    done = run_cli(*overrides, f"tracking.uri={tracking_uri}", "trainer.epochs=2", "trainer.progress=false",
                   "embed.n_samples=150", "model.bottleneck=4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = _single_run(tracking_uri, "digits")
    assert run.info.status == "FINISHED"
    for key, value in params.items():
        assert run.data.params[key] == value, key
    artifacts = artifact_paths(tracking_uri, run.info.run_id)
    assert FIGURES | extra_figures | {"explorer.html", "checkpoint"} <= artifacts, artifacts
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model", map_location="cpu")
    images = torch.rand(3, 1, 8, 8)
    assert model.encode(images).shape == (3, 4) and model(images).shape == (3, 1, 8, 8)
    for figure in FIGURES | extra_figures:
        _assert_png(tracking_uri, run.info.run_id, figure, tmp_path)
    m = run.data.metrics
    for key in ("test_loss", "test_mse", "test_knn_acc", "pca_test_mse", "pca_knn_acc", "embed_knn_acc"):
        assert np.isfinite(m[key]) and m[key] >= 0, key
    if "model=vae" in overrides:  # the loss in its parts, per epoch
        kl = metric_history(tracking_uri, run.info.run_id, "train_kl")
        recon = metric_history(tracking_uri, run.info.run_id, "train_recon")
        assert [s for s, _ in kl] == [1, 2] and all(v > 0 for _, v in kl) and len(recon) == 2
    if "embed=all" in overrides:
        for method in ("tsne", "pca", "umap"):
            assert 0 < m[f"embed_{method}_trust"] <= 1 and 0 <= m[f"embed_{method}_knn_acc"] <= 1
        assert m["embed_knn_acc"] == m["embed_tsne_knn_acc"]  # the first view is the headline one
    html = Path(MlflowClient(tracking_uri).download_artifacts(run.info.run_id, "explorer.html", str(tmp_path)))
    assert html.stat().st_size < 3_000_000 and "data:image/png;base64" in html.read_text()
