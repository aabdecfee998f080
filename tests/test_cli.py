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

from aeexp.training import fastpath

FIGURES = {"reconstructions.png", "loss_curves.png", "interpolation.png", "tsne.png"}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
# train.bf16 of a run on the fast path (trainer.mixed_precision=true): whether this CPU multiplies bf16 in hardware.
FAST_PATH_BF16 = str(fastpath.cpu_has_bf16_products()).lower()


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
    assert params["model._target_"] == "aeexp.models.DenseAutoencoder"
    assert params["optimizer._target_"] == "torch.optim.AdamW" and params["optimizer.lr"] == "0.001"
    assert params["scheduler._target_"] == "None"
    assert not {"trainer.optimizer", "trainer.lr", "trainer.momentum", "trainer.loss"} & set(params)  # moved keys
    assert params["trainer.epochs"] == "4"
    assert params["seed"] == "3"
    assert params["tracking.experiment"] == "digits"

    train_loss = metric_history(tracking_uri, run.info.run_id, "train_loss")
    assert [step for step, _ in train_loss] == [1, 2, 3, 4]
    assert train_loss[-1][1] < train_loss[0][1] * 0.9
    val_loss = metric_history(tracking_uri, run.info.run_id, "val_loss")
    assert [step for step, _ in val_loss] == [1, 2, 3, 4] and val_loss[-1][1] < val_loss[0][1]
    assert all(value > 0 for _, value in metric_history(tracking_uri, run.info.run_id, "epoch_time"))
    assert metric_history(tracking_uri, run.info.run_id, "lr") == [(1, 0.001), (2, 0.001), (3, 0.001), (4, 0.001)]
    assert not {k for k in run.data.metrics if k.startswith("train_")} - {"train_loss"}  # no loss parts: plain AE

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
    assert tags["device"] == "cpu" and tags["dataset"] == "digits" and tags["model"] == "ae32"
    assert tags["train.path"] == "fast" and tags["train.bf16"] == FAST_PATH_BF16  # the exact dense AE on a CPU
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
    (user / "tiny.yaml").write_text("_target_: aeexp.models.DenseAutoencoder\nname: tiny\nwidths: [16]\n"
                                    "bottleneck: 3\n")
    done = subprocess.run([sys.executable, "-m", "aeexp", "--config-dir", str(tmp_path / "myconf"),
                           "model=tiny", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "name: tiny" in done.stdout and "bottleneck: 3" in done.stdout
    assert "_target_: aeexp.models.DenseAutoencoder" in done.stdout


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
    done = run_cli("optimizer=sgd", "optimizer.lr=1e20",
                   f"tracking.uri={tracking_uri}", *FAST)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "training loss became" in output and "lower optimizer.lr (now 1e+20)" in output, output[-2000:]
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
    (["optimizer=nope"], "Could not find 'optimizer/nope'"),
    (["scheduler=nope"], "Could not find 'scheduler/nope'"),
    # Keys that moved out of trainer: one line naming the new one (the README's example first).
    (["trainer.lr=0.01"], "error: trainer.lr is no longer a setting: give optimizer.lr=0.01 instead."),
    (["trainer.optimizer=adamw"], "trainer.optimizer is no longer a setting: give optimizer=adamw instead."),
    (["trainer.momentum=0.9"], "trainer.momentum is no longer a setting: give optimizer=sgd optimizer.momentum=0.9 "
                               "instead."),
    (["trainer.loss=mse"], "trainer.loss is no longer a setting: give model.loss=mse instead."),
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["trainer.epoch=3"], "trainer.epoch"),
    (["trainer.epochs=0"], "trainer.epochs=0 is invalid"),
    (["trainer.batch_size=-8"], "trainer.batch_size=-8 is invalid"),
    (["trainer.grad_clip=0"], "trainer.grad_clip=0.0 is invalid: it must be positive"),
    (["optimizer.lr=-0.1"], "optimizer: torch.optim.AdamW refused its settings (Invalid learning rate: -0.1)"),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9] is invalid: expected a list of 2 values."),
    (["+optimizer.momentum=0.9"], "optimizer.momentum is not a parameter of torch.optim"),
    (["scheduler=cosine", "scheduler.warmup_epochs=2"], "scheduler.warmup_epochs=2 is invalid: it must be >= 0 and "
                                                        "below trainer.epochs=2."),
    (["scheduler=cosine", "scheduler.interval=batch"], "scheduler.interval='batch' is invalid"),
    (["scheduler=step", "scheduler.step_size=two"], "scheduler.step_size='two' is invalid: expected an integer."),
    # Model values are checked when the model is built, before any data is read (the README's examples).
    (["model.bottleneck=-1"], "model.bottleneck=-1 is invalid"),
    (["model.bottleneck=64"], "error: model.bottleneck=64 is invalid: it must be smaller than the input size 64 of "
                              "the dataset's 1x8x8 images."),
    (["model.bottleneck=1.5"], "error: model.bottleneck=1.5 is invalid: expected an integer."),
    (["dataset=mnist", "dataset.root=./empty", "dataset.download=false", "model.bottleneck=1.5"],
     "model.bottleneck=1.5 is invalid: expected an integer."),
    (["model.widths=[]"], "model.widths=[] is invalid"),
    (["model.widths=[64,0]"], "model.widths[1]=0 is invalid"),
    (["model.loss=l1"], "model.loss='l1' is invalid: choose one of bce, mse."),
    (["model.noise=blur"], "model.noise='blur' is invalid: choose one of"),
    (["+model.depth=3"], "model.depth is not a parameter of aeexp.models.dense.DenseAutoencoder"),
    (["model._target_=nowhere.Model"], "model._target_='nowhere.Model' cannot be imported"),
    (["model._target_=torch.nn.Linear"], "model._target_=torch.nn.Linear is invalid: it must be a subclass of "
                                         "aeexp.models.base.Autoencoder"),
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
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_fails_with_one_clear_message(run_cli, tracking_uri, overrides, message, tmp_path):
    overrides = [o.format(port=_free_port()) for o in overrides]
    has_uri = any(o.startswith("tracking.uri") for o in overrides)
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m, before the overrides
    overrides = [o for o in overrides if not o.startswith("-")]
    done = run_cli(*flags, *FAST, *([] if has_uri else [f"tracking.uri={tracking_uri}"]), *overrides, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert message in output, output[-2000:]
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "[ERROR]" in line]) <= 1  # aeexp's errors: one line
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


# (overrides, extra figures, params, train.path, parts of the loss logged as train_<part>)
MODEL_VARIANTS = [
    (["model=conv"], set(), {"model._target_": "aeexp.models.ConvAutoencoder", "model.widths": "[32, 64]"},
     "autograd", set()),
    (["model=vae", "embed=all"], {"prior_samples.png", "pca.png", "umap.png"},
     {"model._target_": "aeexp.models.VariationalAutoencoder", "model.kind": "dense"}, "autograd", {"recon", "kl"}),
    (["model=vae", "model.kind=conv", "model.beta=0.5"], {"prior_samples.png"},
     {"model.kind": "conv", "model.beta": "0.5"}, "autograd", {"recon", "kl"}),
    (["model=sparse", "model.l1=0.05"], set(), {"model._target_": "aeexp.models.SparseAutoencoder", "model.l1": "0.05"},
     "autograd", {"recon", "l1"}),
    (["model.noise=salt_pepper", "model.noise_level=0.2"], set(),
     {"model.noise": "salt_pepper", "model.noise_level": "0.2"}, "fast", set()),
]


@pytest.mark.parametrize(("overrides", "extra_figures", "params", "path", "parts"), MODEL_VARIANTS,
                         ids=["conv", "vae-all-views", "conv-vae", "sparse", "denoising"])
def test_every_model_trains_and_logs_its_figures(run_cli, tracking_uri, tmp_path, overrides, extra_figures, params,
                                                 path, parts):
    done = run_cli(*overrides, f"tracking.uri={tracking_uri}", "trainer.epochs=2", "trainer.progress=false",
                   "embed.n_samples=150", "model.bottleneck=4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = _single_run(tracking_uri, "digits")
    assert run.info.status == "FINISHED"
    for key, value in params.items():
        assert run.data.params[key] == value, key
    # Which training step ran: the fast path only for the exact dense AE (bf16 only there, and only where the CPU
    # has bf16 products); every other model on autograd, in float32 on a CPU.
    assert run.data.tags["train.path"] == path
    assert run.data.tags["train.bf16"] == (FAST_PATH_BF16 if path == "fast" else "false")
    assert metric_history(tracking_uri, run.info.run_id, "lr") == [(1, 0.001), (2, 0.001)]
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
    # The loss in its parts, per epoch: exactly the model's parts.
    assert {k.removeprefix("train_") for k in m if k.startswith("train_")} - {"loss"} == parts
    for part in parts:
        history = metric_history(tracking_uri, run.info.run_id, f"train_{part}")
        assert [s for s, _ in history] == [1, 2] and all(np.isfinite(v) and v >= 0 for _, v in history), part
    if "kl" in parts:
        assert all(v > 0 for _, v in metric_history(tracking_uri, run.info.run_id, "train_kl"))
    if "embed=all" in overrides:
        for method in ("tsne", "pca", "umap"):
            assert 0 < m[f"embed_{method}_trust"] <= 1 and 0 <= m[f"embed_{method}_knn_acc"] <= 1
        assert m["embed_knn_acc"] == m["embed_tsne_knn_acc"]  # the first view is the headline one
    html = Path(MlflowClient(tracking_uri).download_artifacts(run.info.run_id, "explorer.html", str(tmp_path)))
    assert html.stat().st_size < 3_000_000 and "data:image/png;base64" in html.read_text()


def test_adamw_with_a_cosine_schedule_after_a_warm_up(run_cli, tracking_uri):
    """The learning rate per epoch (at each epoch's last step) rises through the warm-up, then falls along the
    cosine to eta_min at the run's end."""
    peak, eta_min = 0.002, 1e-5
    done = run_cli("optimizer=adamw", f"optimizer.lr={peak}", "scheduler=cosine", "scheduler.warmup_epochs=2",
                   f"scheduler.eta_min={eta_min}", "trainer.epochs=5", "trainer.progress=false", "embed=pca",
                   "embed.n_samples=200", f"tracking.uri={tracking_uri}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "digits")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optimizer._target_"] == "torch.optim.AdamW" and params["optimizer.weight_decay"] == "0.05"
    assert params["scheduler._target_"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert params["scheduler.warmup_epochs"] == "2" and params["scheduler.T_max"] == "None"
    assert run.data.tags["train.path"] == "fast"  # AdamW (fused) on the exact dense AE
    lr = [value for _, value in metric_history(tracking_uri, run.info.run_id, "lr")]
    assert len(lr) == 5
    assert lr[0] == pytest.approx(peak / 2, rel=1e-6)  # half-way through the warm-up
    assert lr[1] == pytest.approx(peak, rel=1e-6)  # the warm-up's last step reaches optimizer.lr
    assert lr[1] > lr[2] > lr[3] > lr[4]  # then the cosine
    assert lr[4] - eta_min < 0.01 * (peak - eta_min)  # down to eta_min at the last step
    train_loss = [value for _, value in metric_history(tracking_uri, run.info.run_id, "train_loss")]
    assert train_loss[-1] < train_loss[0] * 0.9


def test_any_torch_optimizer_by_its_class(run_cli, tracking_uri):
    done = run_cli("optimizer._target_=torch.optim.RAdam", "+optimizer.decoupled_weight_decay=true",
                   "optimizer.weight_decay=0.001", f"tracking.uri={tracking_uri}", *FAST, "embed=pca")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "digits")
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer._target_"] == "torch.optim.RAdam"
    assert run.data.params["optimizer.decoupled_weight_decay"] == "True"
    assert "torch.optim.RAdam takes no fused; left out" in done.stdout + done.stderr  # the adam preset's fused: true
    train_loss = [value for _, value in metric_history(tracking_uri, run.info.run_id, "train_loss")]
    assert len(train_loss) == 2 and train_loss[1] < train_loss[0]
    assert metric_history(tracking_uri, run.info.run_id, "lr") == [(1, 0.001), (2, 0.001)]
