"""End to end through the CLI as a user runs it: a subprocess in a temp dir writing a temp sqlite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import references
import torch
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, assert_no_running, metric_history, runs_in

from aeexp import threads
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
    assert run.info.run_name == "ae32-b16-digits seed=3"  # the seed is not the default: the name says so

    params = run.data.params
    assert params["model.bottleneck"] == "16"
    assert params["model.widths"] == "[128, 64]"
    assert params["model.code_norm"] == "batch"  # ae32's own; a model leaving it out logs its class's
    assert params["model.image_shape"] == "[1, 8, 8]" and params["optimizer.decoupled_weight_decay"] == "True"
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
    # ...and each is what scikit-learn computes from the logged model's codes of the run's splits (and PCA's).
    references.assert_matches(references.logged_run(tracking_uri, run.info.run_id, tmp_path / "logged"), probe=True)

    artifacts = artifact_paths(tracking_uri, run.info.run_id)
    assert FIGURES | {"config.yaml", "checkpoint", "reconstructions.npz"} <= artifacts
    tags = run.data.tags
    import aeexp

    assert tags["versions.aeexp"] == aeexp.__version__ and tags["versions.torch"] == torch.__version__
    assert tags["device"] == "cpu" and tags["dataset"] == "digits" and tags["model"] == "ae32"
    assert tags["train.path"] == "fast" and tags["train.bf16"] == FAST_PATH_BF16  # the exact dense AE on a CPU
    assert tags["threads"] == str(threads.usable_cores()) and params["trainer.threads"] == "None"  # a run alone
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


def _pca_knn_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                      components: int) -> float:
    """The baseline, computed here with scikit-learn alone: 5-NN accuracy on the test images' PCA codes of the given
    size (PCA and the classifier fit on the training images)."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    flat = [images.reshape(len(images), -1) / 255.0 for images in (train, test)]
    pca = PCA(components, random_state=0).fit(flat[0])
    return float(KNeighborsClassifier(5).fit(pca.transform(flat[0]), train_labels)
                 .score(pca.transform(flat[1]), test_labels))


def test_mnist_from_idx_files(run_cli, tracking_uri, mnist_root, tmp_path):
    from idx import synthetic_images

    done = run_cli("dataset=mnist", f"dataset.root={mnist_root}", "dataset.download=false", "model=ae25",
                   "model.bottleneck=8", f"tracking.uri={tracking_uri}", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "mnist")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.widths"] == "[400, 200, 100, 50]"
    assert run.data.params["dataset.root"] == str(mnist_root)
    # The squares the fixture wrote (idx.write_dataset's defaults): the 8-d codes separate them as well as a PCA of
    # the same size does, give or take 5 of the 100 test images.
    baseline = _pca_knn_accuracy(*synthetic_images(300, 0), *synthetic_images(100, 1), components=8)
    assert run.data.metrics["test_knn_acc"] >= baseline - 0.05, baseline
    references.assert_matches(references.logged_run(tracking_uri, run.info.run_id, tmp_path / "logged"))


def test_fashion_mnist_from_debian_files(run_cli, tracking_uri, tmp_path):
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
    # After one epoch the 32-d codes keep at least 90% of the 5-NN accuracy of a 32-component PCA (~0.85), read and
    # computed here from the Debian files without aeexp.
    arrays = [_read_idx_gz(DEBIAN_FASHION_MNIST / f"{split}-{kind}-idx{dims}-ubyte.gz")
              for split in ("train", "t10k") for kind, dims in (("images", 3), ("labels", 1))]
    baseline = _pca_knn_accuracy(*arrays, components=32)
    assert baseline > 0.8 and run.data.metrics["test_knn_acc"] >= 0.9 * baseline, baseline
    references.assert_matches(references.logged_run(tracking_uri, run.info.run_id, tmp_path / "logged"))


def _read_idx_gz(path: Path) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes, as its header describes it."""
    import gzip
    import struct

    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def test_console_script_and_packaged_configs_from_any_dir(tmp_path):
    script = Path(sys.executable).with_name("aeexp")
    assert script.exists(), "the `aeexp` console script is not installed"
    done = subprocess.run([str(script), "dataset=mnist", "model=ae25", "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "bottleneck: 25" in done.stdout and "- 400" in done.stdout


def test_user_config_dir_adds_configs(tmp_path):
    user = tmp_path / "myconf" / "model"
    user.mkdir(parents=True)
    (user / "tiny.yaml").write_text("_target_: aeexp.models.DenseAutoencoder\nname: tiny\nwidths: [16]\n"
                                    "bottleneck: 3\n")
    done = subprocess.run([sys.executable, "-m", "aeexp", "--config-dir", str(tmp_path / "myconf"),
                           "model=tiny", "dataset=mnist", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)  # (on mnist: digits gives any model its 4-d code)
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
    # every group, those under hydra/ and the Optuna search too, and a dataset's model settings (found by a glob)
    groups = subprocess.run([sys.executable, "-c", "import aeexp.cli, sys; print(aeexp.cli.__file__); sys.argv=["
                             "'aeexp', 'hparams_search=fashion_optuna', 'hydra/launcher=slurm', 'dataset=digits', "
                             "'model=vqvae', 'scheduler=cosine', 'embed=all', 'tracking=server', '--cfg', 'all']; "
                             "aeexp.cli.main()"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert groups.returncode == 0, groups.stderr[-3000:]
    assert groups.stdout.startswith(str(target)), groups.stdout.splitlines()[0]
    for line in ("study_name: fashion_optuna", "hydra_plugins.aeexp_launchers.launchers.SubmititSlurmLauncher",
                 "partition: null", "vector_size: 1", "bottleneck: 4", "_target_: aeexp.models.VQVAE",
                 "T_max: null", "uri: http://127.0.0.1:5000", "_target_: aeexp.evaluation.views.umap"):
        assert line in groups.stdout, line


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


def _choices(group: str, *choices: str) -> list[str]:
    """Hydra's message for an unknown choice of ``group``: the group and each available choice on a line."""
    return [f"Available options in '{group}':", *(f"\t{choice}\n" for choice in choices)]


def _hydra_type_error(key: str, value: str, expected: str) -> list[str]:
    """Hydra's message for a value of the wrong type or an unknown enum value: the key, the value, the expectation."""
    return [f"Error merging override {key}={value}", expected, f"full_key: {key}\n"]


# (overrides, what the output must hold): the key, the value, and the expected type, choices or what to do, as the
# README's table promises. "error: " marks aeexp's own one-line messages; the rest are Hydra's.
BAD_INPUTS = [
    (["dataset=foo"], ["Could not find 'dataset/foo'", *_choices("dataset", "digits", "fashion_mnist", "kmnist",
                                                                  "mnist")]),
    (["model=nope"], ["Could not find 'model/nope'", *_choices("model", "ae25", "ae32", "conv", "sparse", "vae",
                                                                "vqvae")]),
    (["optimizer=nope"], ["Could not find 'optimizer/nope'", *_choices("optimizer", "adam", "adamw", "sgd")]),
    (["scheduler=nope"], ["Could not find 'scheduler/nope'", *_choices("scheduler", "cosine", "none", "onecycle",
                                                                       "plateau", "step")]),
    # Keys that moved out of trainer: one line naming the new one (the README's example first).
    (["trainer.lr=0.01"], ["error: trainer.lr is no longer a setting: give optimizer.lr=0.01 instead.\n"]),
    (["trainer.optimizer=adamw"], ["error: trainer.optimizer is no longer a setting: give optimizer=adamw instead."]),
    (["trainer.momentum=0.9"], ["error: trainer.momentum is no longer a setting: give optimizer=sgd "
                                "optimizer.momentum=0.9 instead."]),
    (["trainer.loss=mse"], ["error: trainer.loss is no longer a setting: give model.loss=mse instead."]),
    (["trainer.epochs=abc"], _hydra_type_error("trainer.epochs", "abc", "Value 'abc' of type 'str' could not be "
                                                                        "converted to Integer")),
    (["trainer.epoch=3"], ["Could not override 'trainer.epoch'.", "Key 'epoch' not in 'TrainerConfig'",
                           "full_key: trainer.epoch\n"]),
    (["trainer.progress=maybe"], _hydra_type_error("trainer.progress", "maybe", "Value 'maybe' is not a valid bool")),
    (["trainer.device=tpu"], _hydra_type_error("trainer.device", "tpu", "Invalid value 'tpu', expected one of "
                                                                        "[auto, cpu, cuda]")),
    (["embed.methods=[tsne,pca]"], ["error: embed.methods is no longer a setting: give embed=[tsne,pca] instead."]),
    (["embed=[tsne,foo]"], ["Could not load 'embed/foo'"]),  # (Hydra lists no choices for a list)
    (["seed=x"], _hydra_type_error("seed", "x", "Value 'x' of type 'str' could not be converted to Integer")),
    (["trainer.epochs=0"], ["error: trainer.epochs=0 is invalid: it must be positive."]),
    (["trainer.batch_size=-8"], ["error: trainer.batch_size=-8 is invalid: it must be positive."]),
    (["trainer.grad_clip=0"], ["error: trainer.grad_clip=0.0 is invalid: it must be positive (or null: no "
                               "clipping)."]),
    (["trainer.checkpoint_every=-1"], ["error: trainer.checkpoint_every=-1 is invalid: it must be >= 0 (0: log the "
                                       "checkpoint to MLflow only when the run ends or stops)."]),
    (["optimizer.lr=-0.1"], ["error: optimizer: torch.optim.AdamW refused its settings (Invalid learning rate: -0.1)"]),
    (["optimizer.betas=[0.9]"], ["error: optimizer.betas=[0.9] is invalid: expected a list of 2 values."]),
    (["+optimizer.momentum=0.9"], ["error: optimizer.momentum is not a parameter of torch.optim.adamw.AdamW (its "
                                   "parameters: lr, betas, eps, weight_decay,", "); remove it or fix its name"]),
    (["scheduler=cosine", "scheduler.warmup_epochs=2"], ["error: scheduler.warmup_epochs=2 is invalid: it must be >= 0 "
                                                         "and below trainer.epochs=2."]),
    (["scheduler=cosine", "scheduler.interval=batch"], ["error: scheduler.interval='batch' is invalid: choose one of "
                                                        "step, epoch."]),
    (["scheduler=step", "scheduler.step_size=two"], ["error: scheduler.step_size='two' is invalid: expected an "
                                                     "integer."]),
    # Model values are checked when the model is built, before any data is read (the README's examples).
    (["model.bottleneck=-1"], ["error: model.bottleneck=-1 is invalid: it must be positive."]),
    (["model.bottleneck=64"], ["error: model.bottleneck=64 is invalid: it must be smaller than the input size 64 of "
                               "the dataset's 1x8x8 images."]),
    (["model.bottleneck=1.5"], ["error: model.bottleneck=1.5 is invalid: expected an integer."]),
    (["dataset=mnist", "dataset.root=./empty", "dataset.download=false", "model.bottleneck=1.5"],
     ["error: model.bottleneck=1.5 is invalid: expected an integer."]),
    (["model.widths=[]"], ["error: model.widths=[] is invalid: give at least one hidden width, e.g. [128,64]."]),
    (["model.widths=[64,0]"], ["error: model.widths[1]=0 is invalid: widths must be positive integers."]),
    # A model too large for any machine's memory: refused with the figures before anything is allocated. Its
    # parameters on 8x8 digits: 64-200000-200000-32 and back, weights and biases (none on the batch-normalised
    # code's layer): 2 * (64 + 32) * 200000 + 2 * 200000 ** 2 + 4 * 200000 + 64.
    (["model.widths=[200000,200000]", "model.bottleneck=32"],
     ["error: model.widths=[200000, 200000], model.bottleneck=32: the model has 80,039,200,064 parameters, and "
      "training it needs at least 1,280.6 GB of memory (16 bytes each: weight, gradient and the optimizer's state), "
      "more than the ", " memory available; choose smaller model.widths or model.bottleneck"]),
    (["model.loss=l1"], ["error: model.loss='l1' is invalid: choose one of bce, mse."]),
    (["model.noise=blur"], ["error: model.noise='blur' is invalid: choose one of none, gaussian, masking, "
                            "salt_pepper."]),
    (["+model.depth=3"], ["error: model.depth is not a parameter of aeexp.models.dense.DenseAutoencoder (its "
                          "parameters: widths, bottleneck, code_norm, loss, noise, noise_level); remove it or fix its "
                          "name"]),
    (["model._target_=nowhere.Model"], ["error: model._target_='nowhere.Model' cannot be imported (No module named "
                                        "'nowhere'); put its module on PYTHONPATH"]),
    (["model._target_=torch.nn.Linear"], ["error: model._target_=torch.nn.Linear is invalid: it must be a subclass of "
                                          "aeexp.models.base.Autoencoder"]),
    (["dataset.val_fraction=1.5"], ["error: dataset.val_fraction=1.5 is invalid: it must lie strictly between 0 and "
                                    "1."]),
    *[([f"embed.n_samples={n}"], [f"error: embed.n_samples={n} is invalid: it must be at least 50 (the 5-fold 5-NN "
                                  "accuracy and the trustworthiness of the embedding need that many points)."])
      for n in (0, 1, 2, 5, 10)],
    (["embed=umap", "embed.views.umap.n_neighbors=1"],
     ["error: embed.views.umap.n_neighbors=1 is invalid: it must be at least 2."]),
    (["embed.views.tsne.perplexity=0"], ["error: embed.views.tsne.perplexity=0 is invalid: it must be above 0."]),
    (["metrics.knn.ks=[5,0]"], ["error: metrics.knn.ks[1]=0 is invalid: it must be at least 1."]),
    (["seed=-1"], ["error: seed=-1 is invalid: it must be an integer from 0 to 4294967295 (the seeds numpy and "
                   "scikit-learn take)."]),
    (["seed=100000000000000000000"], ["error: seed=100000000000000000000 is invalid: it must be an integer from 0 to "
                                      "4294967295"]),
    (["dataset=mnist", "dataset.root=./empty", "dataset.download=false"],
     ["error: dataset mnist: files not found. Expected train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
      "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] in one of: empty/MNIST/raw, "]),
    (["tracking.uri=http://127.0.0.1:{port}"], ["error: tracking server http://127.0.0.1:{port} is unreachable "
                                                "(ConnectionError); start it with `mlflow server --host 127.0.0.1 "
                                                "--port {port}` or set tracking.uri"]),
    (["tracking.uri=sqlite:////nonexistent-dir/x/mlflow.db"], ["error: tracking.uri=sqlite:////nonexistent-dir/x/"
                                                               "mlflow.db: folder /nonexistent-dir/x does not exist; "
                                                               "create it first"]),
    (["tracking.uri=sqlite:////proc/aeexp/mlflow.db"], ["error: tracking.uri=sqlite:////proc/aeexp/mlflow.db: folder "
                                                        "/proc/aeexp does not exist; create it first"]),
    (["tracking.uri=sqlite:////proc/mlflow.db"], ["error: tracking.uri=sqlite:////proc/mlflow.db: cannot open "
                                                  "/proc/mlflow.db as SQLite"]),  # unwritable, also for root
    (["hydra.run.dir=/proc/aeexp-out"], ["error: hydra.run.dir=/proc/aeexp-out: cannot write there (No such file or "
                                         "directory); choose a writable folder, e.g. hydra.run.dir=./outputs/run"]),
    (["-m", "hydra.sweep.dir=/proc/aeexp-out"], ["error: hydra.sweep.dir=/proc/aeexp-out: cannot write there (No such "
                                                 "file or directory); choose a writable folder"]),
    (["embed=nope"], ["Could not find 'embed/nope'", *_choices("embed", "all", "pca", "tsne", "umap")]),
    (["hydra/launcher=nope"], ["Could not find 'hydra/launcher/nope'", "Available options in 'hydra/launcher':",
                               "\tjoblib\n", "\tslurm\n"]),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_fails_with_one_clear_message(run_cli, tracking_uri, overrides, expected, tmp_path):
    port = _free_port()
    overrides = [o.format(port=port) for o in overrides]
    has_uri = any(o.startswith("tracking.uri") for o in overrides)
    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m, before the overrides
    overrides = [o for o in overrides if not o.startswith("-")]
    done = run_cli(*flags, *FAST, *([] if has_uri else [f"tracking.uri={tracking_uri}"]), *overrides, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    for fragment in expected:
        assert fragment.format(port=port) in output, (fragment, output[-2000:])
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) <= 1  # aeexp's errors: one line
    if expected[0].startswith("error: "):
        assert len(errors) == 1 or "[HYDRA] error: " in output, output[-2000:]
    assert_no_running(tracking_uri)
    assert runs_in(tracking_uri) == [] if Path(tracking_uri.removeprefix("sqlite:///")).exists() else True
    if "-m" not in flags and not has_uri:  # a run refused for its settings leaves no output folder behind
        assert not (tmp_path / "outputs").exists(), list((tmp_path / "outputs").rglob("*"))


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
    assert not (tmp_path / "outputs").exists()
    # The data is read before the MLflow experiment is made: data that cannot be read leaves no empty experiment.
    assert "mnist" not in {e.name for e in MlflowClient(tracking_uri).search_experiments()}


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
     {"model._target_": "aeexp.models.VariationalAutoencoder", "model.kind": "dense"}, "autograd",
     {"recon", "kl", "beta"}),
    (["model=vae", "model.kind=conv", "model.beta=0.5"], {"prior_samples.png"},
     {"model.kind": "conv", "model.beta": "0.5"}, "autograd", {"recon", "kl", "beta"}),
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
    assert np.isfinite(m["test_loss"]) and 0 < m["embed_knn_acc"] <= 1
    references.assert_matches(references.logged_run(tracking_uri, run.info.run_id, tmp_path / "logged"))
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


def test_denoising_noise_reaches_training_and_the_figure_shows_it(make_config, tracking_uri, tmp_path):
    """With every pixel masked (model.noise=masking, model.noise_level=1.0) the first encoder layer sees only zeros
    in training: its weights get zero gradients and Adam (no weight decay) leaves them exactly as initialised, while a
    run without noise moves them. The denoising run's reconstructions figure has its three rows (noisy input,
    output, clean target) where a plain run has two."""
    from PIL import Image

    from aeexp import experiment, models
    from aeexp.training import checkpoint

    first_layer, heights = {}, {}
    for noise in (["model.noise=none"], ["model.noise=masking", "model.noise_level=1.0"]):
        cfg = make_config(f"tracking.uri={tracking_uri}", *FAST, "embed=pca", "optimizer=adam", *noise)
        result = experiment.run(cfg, tmp_path / noise[0])
        state = checkpoint.load(checkpoint.local_path(tmp_path / noise[0], result.run_id))
        first_layer[cfg.model.noise] = state.model["encoder.0.weight"]
        png = MlflowClient(tracking_uri).download_artifacts(result.run_id, "reconstructions.png", str(tmp_path))
        heights[cfg.model.noise] = Image.open(png).height
    torch.manual_seed(0)  # seed=0: the weights every run of these configs starts from
    initial = models.build(cfg.model, (1, 8, 8)).encoder[0].weight.detach()
    assert torch.equal(first_layer["masking"], initial)
    assert not torch.equal(first_layer["none"], initial)
    assert heights["masking"] * 2 == heights["none"] * 3


def test_a_full_disk_fails_the_run_in_one_line_naming_the_file(tmp_path, tracking_uri):
    """The run may write no file past 2 MB (RLIMIT_FSIZE: writes past it fail with EFBIG, as they fail with ENOSPC on
    a full disk) and its first checkpoint is ~5 MB: one line naming the file and what to do, the run FAILED, nothing
    half-written."""
    from faults import file_size_limit

    from aeexp.training import checkpoint

    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    assert Path(tracking_uri.removeprefix("sqlite:///")).stat().st_size < 1_500_000  # the store fits
    done = subprocess.run([sys.executable, "-m", "aeexp", "model.widths=[2048]", *FAST, f"tracking.uri={tracking_uri}",
                           f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=file_size_limit(2_000_000))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "[ERROR]" in line]
    run = _single_run(tracking_uri, "digits")
    local = checkpoint.local_path(out, run.info.run_id)
    assert (f"error: cannot write {local} (File too large): the disk is full or a size limit was reached; free some "
            "space there, or write elsewhere (hydra.run.dir=...); the MLflow run "
            f"{run.info.run_id} was marked FAILED; start it again once that is fixed") in line, line
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("WriteError: cannot write")
    assert not local.exists() and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
