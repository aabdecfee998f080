"""Every new source through the real CLI, on real files written by fixtures: a colour PNG class folder (with colour
figures, thumbnails and ``encode``), a flat folder without labels, an .npz, and CIFAR-10, SVHN and EMNIST in their
formats in one Hydra multirun; and each bad input as one line before any run is created."""

from __future__ import annotations

import base64
import html
import io
import re
import socket
from pathlib import Path

import mlflow
import numpy as np
import pytest
import references
import torch
from conftest import FAST
from image_sets import (
    colour_images,
    shows_colour,
    write_cifar10,
    write_emnist,
    write_flat_folder,
    write_image,
    write_svhn,
)
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, assert_no_running, runs_in
from PIL import Image

from aeexp import encode, tracking

NO_LABEL_METRICS = {f"{prefix}_{name}" for prefix in ("test", "pca") for name in
                    ("knn_acc", "knn1_acc", "knn20_acc", "probe_acc", "kmeans_nmi", "kmeans_ari")} | {"embed_knn_acc"}


def _single_run(tracking_uri: str, experiment: str):
    runs = runs_in(tracking_uri, experiment)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _artifact(tracking_uri: str, run_id: str, name: str, into: Path) -> bytes:
    return Path(MlflowClient(tracking_uri).download_artifacts(run_id, name, str(into))).read_bytes()


def _thumbnails(page: str) -> list[bytes]:
    """The explorer's image thumbnails (every data-URI PNG but bokeh's logo)."""
    pngs = [base64.b64decode(t) for t in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html.unescape(page))]
    return [png for png in pngs if Image.open(io.BytesIO(png)).size[0] % 16 == 0]


def warm_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour images of three classes on an orange cast: even a decoder that has learnt little more than the mean
    image draws them in colour."""
    images, labels = colour_images(n, seed, 16, classes=3)
    return np.clip(images * 0.5 + np.array([150, 80, 20]), 0, 255).astype(np.uint8), labels


def test_a_colour_folder_trains_with_colour_figures_and_encodes(run_cli, tracking_uri, tmp_path):
    images, labels = warm_images(90, 0)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        write_image(tmp_path / "pets" / f"class{label}" / f"{i:03d}.png", pixels)
    done = run_cli("dataset=folder", "dataset.path=pets", "model=vae", "model.bottleneck=8", "embed=pca",
                   "trainer.epochs=10", "trainer.batch_size=16", "optimizer.lr=0.003", "trainer.progress=false",
                   f"tracking.uri={tracking_uri}")
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "folder")
    assert run.info.status == "FINISHED" and run.data.params["dataset.path"] == "pets"
    assert "of shape (3, 16, 16)" in done.stdout + done.stderr
    assert {"test_knn_acc", "pca_knn_acc", "embed_knn_acc"} <= set(run.data.metrics)
    assert run.data.metrics["test_knn_acc"] > 0.5  # three classes of different hue
    references.assert_matches(references.logged_run(tracking_uri, run.info.run_id, tmp_path / "logged", tmp_path))
    for figure in ("reconstructions.png", "interpolation.png", "prior_samples.png"):
        assert shows_colour(_artifact(tracking_uri, run.info.run_id, figure, tmp_path)), figure
    thumbnails = _thumbnails(_artifact(tracking_uri, run.info.run_id, "explorer.html", tmp_path).decode())
    assert len(thumbnails) == 2 * 18 and all(map(shows_colour, thumbnails))  # inputs and reconstructions

    # encode: the same colour images as a PNG folder and as an (N, H, W, 3) .npy give the model's own codes.
    images = warm_images(6, 7)[0]
    for i, pixels in enumerate(images):
        write_image(tmp_path / "new" / f"{i}.png", pixels)
    np.save(tmp_path / "new.npy", images)
    model_uri = f"runs:/{run.info.run_id}/model"
    for source, out in ((tmp_path / "new", tmp_path / "png_codes.npy"), (tmp_path / "new.npy", tmp_path / "codes.npy")):
        assert encode.main([model_uri, str(source), "--out", str(out), "--tracking-uri", tracking_uri,
                            "--reconstructions", str(out.with_suffix(".recon.npy"))]) == 0
    tracking.configure_uri(tracking_uri)
    model = tracking.load_pickled_model(model_uri)  # the logged model as MLflow pickled it: encode rebuilt its own
    mlflow.set_tracking_uri(None)
    expected = model.encode(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()) / 255.0).detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "codes.npy"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "png_codes.npy"), np.load(tmp_path / "codes.npy"))
    assert np.load(tmp_path / "codes.recon.npy").shape == (6, 3, 16, 16)


def test_a_flat_folder_trains_without_labels(run_cli, tracking_uri, tmp_path):
    write_flat_folder(tmp_path / "scans", n=60, size=12)
    done = run_cli("dataset=folder", "dataset.path=scans", "embed=pca", "tracking.experiment=scans",
                   f"tracking.uri={tracking_uri}", *FAST)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert output.count("folder has no labels: the metrics that need them (knn, probe, kmeans: test_* and pca_*), "
                        "the views' kNN accuracies are left out") == 1
    assert "skipped" not in output  # left out by their declaration, not as failures
    run = _single_run(tracking_uri, "scans")
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert not NO_LABEL_METRICS & set(metrics)
    for name in ("test_loss", "embed_trust", "embed_time", "val_loss"):
        assert np.isfinite(metrics[name]), name
    references.assert_matches(references.logged_run(tracking_uri, run.info.run_id, tmp_path / "logged", tmp_path))
    assert {"reconstructions.png", "interpolation.png", "pca.png", "loss_curves.png", "explorer.html",
            "checkpoint"} <= artifact_paths(tracking_uri, run.info.run_id)


def test_an_npz_of_float_images_trains(run_cli, tracking_uri, tmp_path):
    images, labels = colour_images(80, 3, 12)
    grey = images.mean(axis=3) / 255.0  # floats in [0, 1], (N, H, W)
    np.savez(tmp_path / "mine.npz", x_train=grey[:60], x_test=grey[60:], y_train=labels[:60], y_test=labels[60:])
    done = run_cli("dataset=arrays", "dataset.path=mine.npz", "dataset.name=mine", "model=conv", "embed=pca",
                   f"tracking.uri={tracking_uri}", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    run = _single_run(tracking_uri, "mine")
    assert run.info.status == "FINISHED" and run.info.run_name == "conv-b32-mine"
    references.assert_matches(references.logged_run(tracking_uri, run.info.run_id, tmp_path / "logged", tmp_path))


def test_cifar10_svhn_and_emnist_train_in_one_multirun(run_cli, tracking_uri, tmp_path):
    root = tmp_path / "data"
    write_cifar10(root, n_per_batch=20)
    write_svhn(root, n_train=80, n_test=30)
    write_emnist(root, "balanced", n_train=80, n_test=30)
    # ++: the sweep's own config is composed with the default dataset (digits), which has no root to override.
    done = run_cli("-m", "dataset=cifar10,svhn,emnist", f"++dataset.root={root}", "++dataset.download=false",
                   "embed=pca", "model.bottleneck=8", "tracking.experiment=standard", f"tracking.uri={tracking_uri}",
                   *FAST)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    children = [r for r in runs_in(tracking_uri, "standard") if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in children) == ["ae32-b8-cifar10", "ae32-b8-emnist", "ae32-b8-svhn"]
    assert all(r.info.status == "FINISHED" for r in children)
    for child in children:
        references.assert_matches(references.logged_run(tracking_uri, child.info.run_id, tmp_path / child.info.run_id))
    for shape in ("(3, 32, 32)", "(1, 28, 28)"):
        assert f"of shape {shape}" in output


def _dead_proxy() -> dict[str, str]:
    """Proxy settings pointing at a port nothing listens on: no download can reach the network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    return {"http_proxy": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "no_proxy": "",
            "NO_PROXY": ""}


def _bad_folder(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "imgs"
    if kind == "empty":
        folder.mkdir()
        return
    write_flat_folder(folder, n=20, size=8)
    if kind == "corrupt":
        (folder / "0002.png").write_bytes(b"not a png at all")
    elif kind == "mixed":
        write_image(folder / "0009.png", np.zeros((10, 8), dtype=np.uint8))


def _bad_npz(tmp_path: Path, kind: str) -> None:
    images = np.zeros((20, 8, 8), dtype=np.uint8)
    arrays = {"no-x_train": {"x_test": images}, "labels": {"x_train": images, "x_test": images,
                                                           "y_train": np.zeros(7, int), "y_test": np.zeros(20, int)},
              "floats": {"x_train": images + 1.5, "x_test": images * 1.0}}[kind]
    np.savez(tmp_path / "x.npz", **arrays)


BAD_INPUTS = [
    ("empty folder", ["dataset=folder", "dataset.path=imgs"], lambda t: _bad_folder(t, "empty"),
     "imgs holds no PNG or JPEG images; put the images there"),
    ("corrupt image", ["dataset=folder", "dataset.path=imgs"], lambda t: _bad_folder(t, "corrupt"),
     "cannot read imgs/0002.png as a PNG or JPEG image"),
    ("mixed sizes", ["dataset=folder", "dataset.path=imgs"], lambda t: _bad_folder(t, "mixed"),
     "images in imgs differ in size: 0000.png is 8x8 but 0009.png is 10x8; give dataset.image_size=8"),
    ("no such path", ["dataset=folder", "dataset.path=nowhere"], lambda t: None,
     "error: dataset.path='nowhere' is invalid: there is no such folder"),
    ("x_train missing", ["dataset=arrays", "dataset.path=x.npz"], lambda t: _bad_npz(t, "no-x_train"),
     "x.npz holds no x_train (it holds: x_test)"),
    ("label count", ["dataset=arrays", "dataset.path=x.npz"], lambda t: _bad_npz(t, "labels"),
     "y_train in x.npz holds 7 labels but x_train 20 images"),
    ("floats above 1", ["dataset=arrays", "dataset.path=x.npz"], lambda t: _bad_npz(t, "floats"),
     "x_train in x.npz holds float values from 1.5 to 1.5; float pixels must lie in [0, 1]"),
    ("emnist split", ["dataset=emnist", "dataset.split=greek"], lambda t: None,
     "error: dataset.split='greek' is invalid: choose one of balanced, byclass, bymerge, digits, letters, mnist."),
    ("cifar10 offline", ["dataset=cifar10", "dataset.root=./data", "dataset.download=true"], lambda t: None,
     "dataset cifar10: files not found. Expected data_batch_1"),
]


@pytest.mark.parametrize(("overrides", "make", "message"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_before_any_run(run_cli, tracking_uri, tmp_path, overrides, make, message):
    make(tmp_path)
    done = run_cli(*overrides, f"tracking.uri={tracking_uri}", *FAST, env=_dead_proxy(), timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert message in output, output[-2000:]
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "[ERROR]" in line]) == 1
    if overrides[0] == "dataset=cifar10":
        assert "download failed (" in output  # it tried, through the dead proxy, and says so
    assert_no_running(tracking_uri)
    assert runs_in(tracking_uri) == []
