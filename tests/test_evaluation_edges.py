"""Evaluation never loses a trained run: the smallest splits each data source allows, a collapsed code and a class
name matplotlib would read as a formula, each driven through a whole CLI run on real files and a real MLflow store.
Each run ends FINISHED, every metric it logged finite, and what could not be computed is said in one warning line
and tagged ``skipped.<name>``; a split that leaves nothing to train on is refused in one line before any run exists.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
from conftest import FAST
from image_sets import write_class_folders, write_image
from mlflow.tracking import MlflowClient
from mlflow_store import artifact_paths, assert_no_running, runs_in
from PIL import Image

VIEWS = "embed=[tsne,pca]"
FIGURES = {"reconstructions.png", "loss_curves.png", "interpolation.png", "tsne.png", "pca.png", "explorer.html"}


def _finished(run_cli, tracking_uri: str, experiment: str, *overrides: str, env: dict[str, str] | None = None):
    """Run the CLI; the run it made, checked: FINISHED, no traceback, finite metrics, each skip said and tagged."""
    done = run_cli(*overrides, f"tracking.uri={tracking_uri}", *FAST, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "[ERROR]" not in output, output[-3000:]
    (run,) = runs_in(tracking_uri, experiment)
    assert run.info.status == "FINISHED"
    assert all(math.isfinite(value) for value in run.data.metrics.values()), run.data.metrics
    skipped = {key.removeprefix("skipped."): reason for key, reason in run.data.tags.items()
               if key.startswith("skipped.")}
    for name, reason in skipped.items():
        assert reason and "\n" not in reason
        assert output.count(f"skipped {name}: {reason}") == 1, (name, output[-3000:])
    for name in ("tsne", "pca"):  # a view is computed with its metrics, or skipped, each metric said
        for key in ("knn_acc", "trust"):
            assert f"embed_{name}_{key}" in run.data.metrics or name in skipped or f"embed_{name}_{key}" in skipped
    return run, skipped


def _refused(run_cli, tracking_uri: str, *overrides: str) -> str:
    """Run the CLI; the one error line it printed, having made no run and no experiment."""
    done = run_cli(*overrides, f"tracking.uri={tracking_uri}", *FAST)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert_no_running(tracking_uri)
    assert runs_in(tracking_uri) == []
    assert [e.name for e in MlflowClient(tracking_uri).search_experiments()] == ["Default"]
    return errors[0]


def test_one_test_image(run_cli, tracking_uri):
    run, skipped = _finished(run_cli, tracking_uri, "digits", "dataset.test_size=1", VIEWS)
    # One point: no t-SNE, no trustworthiness (3 points), no cross-validation, no pair to interpolate between.
    assert {"tsne", "embed_pca_trust", "embed_pca_knn_acc", "interpolation.png"} <= set(skipped)
    assert skipped["embed_pca_trust"] == "ValueError: trustworthiness needs at least 3 points, not 1"
    assert {"test_loss", "test_mse", "test_knn_acc", "pca_test_mse", "pca_knn_acc"} <= set(run.data.metrics)
    assert {"reconstructions.png", "loss_curves.png", "pca.png", "explorer.html"} <= artifact_paths(
        tracking_uri, run.info.run_id)


def test_four_test_images(run_cli, tracking_uri):
    run, skipped = _finished(run_cli, tracking_uri, "digits", "dataset.test_size=4", VIEWS)
    assert "embed_knn_acc" in run.data.metrics or "embed_tsne_knn_acc" in skipped or "tsne" in skipped
    assert FIGURES - {"tsne.png", "explorer.html"} <= artifact_paths(tracking_uri, run.info.run_id)


def test_eight_test_images_of_mixed_modes_in_a_folder(run_cli, tracking_uri, tmp_path):
    write_class_folders(tmp_path / "mixed" / "train", n=40, size=8, classes=2, colour=False)
    grey, _ = write_class_folders(tmp_path / "scratch", n=8, size=8, classes=2, colour=False, seed=3)
    for i, (pixels, mode) in enumerate(zip(grey, ["L", "RGB", "P", "LA", "L", "RGB", "P", "RGBA"], strict=True)):
        path = write_image(tmp_path / "mixed" / "test" / f"class{i % 2}" / f"{i}.png", pixels)
        Image.open(path).convert(mode).save(path)
    run, _ = _finished(run_cli, tracking_uri, "mixed", "dataset=folder", f"dataset.path={tmp_path / 'mixed'}",
                       "dataset.name=mixed", "model.bottleneck=4", VIEWS)
    assert run.data.params["dataset.name"] == "mixed"


def test_three_classes_of_five_images_in_a_folder(run_cli, tracking_uri, tmp_path):
    write_class_folders(tmp_path / "tiny", n=15, size=8, classes=3, colour=False)
    _finished(run_cli, tracking_uri, "tiny", "dataset=folder", f"dataset.path={tmp_path / 'tiny'}",
              "dataset.name=tiny", "model.bottleneck=4", VIEWS)


def test_many_classes_of_three_images_in_a_folder(run_cli, tracking_uri, tmp_path):
    write_class_folders(tmp_path / "many", n=180, size=8, classes=60, colour=False)
    _finished(run_cli, tracking_uri, "many", "dataset=folder", f"dataset.path={tmp_path / 'many'}",
              "dataset.name=many", "model.bottleneck=4", VIEWS)


def test_a_class_named_like_a_formula_is_shown_as_written(run_cli, tracking_uri, tmp_path):
    """``$$a^2$$`` went into matplotlib's mathtext and crashed the figures after training."""
    images, labels = write_class_folders(tmp_path / "scratch", n=150, size=8, classes=2, colour=False)
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        write_image(tmp_path / "maths" / ("$$a^2$$" if label else "b_{1}") / f"{i}.png", pixels)
    run, skipped = _finished(run_cli, tracking_uri, "maths", "dataset=folder", f"dataset.path={tmp_path / 'maths'}",
                             "dataset.name=maths", "model.bottleneck=4", VIEWS)
    assert not skipped
    assert artifact_paths(tracking_uri, run.info.run_id) >= FIGURES


@pytest.mark.parametrize("fraction", ["0.9999", "0.99"])
def test_a_validation_share_that_leaves_no_training_image_is_refused(run_cli, tracking_uri, tmp_path, fraction):
    write_class_folders(tmp_path / "few", n=20, size=8, classes=2, colour=False)
    line = _refused(run_cli, tracking_uri, "dataset=folder", f"dataset.path={tmp_path / 'few'}", "dataset.name=few",
                    f"dataset.val_fraction={fraction}")
    assert "leaves none to train on; give more images or a smaller dataset.val_fraction" in line


def test_an_npz_with_one_training_image_is_refused(run_cli, tracking_uri, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", x_train=rng.integers(0, 256, (1, 8, 8), dtype=np.uint8),
             x_test=rng.integers(0, 256, (5, 8, 8), dtype=np.uint8))
    line = _refused(run_cli, tracking_uri, "dataset=arrays", f"dataset.path={tmp_path / 'one.npz'}",
                    "dataset.name=one")
    assert "holding out 1 of its 1 training images for validation" in line


COLLAPSED = '''
    import torch

    import aeexp.models


    class Collapsed(aeexp.models.DenseAutoencoder):
        """Every image gets the same code: a code collapsed to one point, as a VQ-VAE's codebook can collapse."""

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return super().encode(x) * 0.0
'''


def test_a_collapsed_code_skips_the_views_it_breaks(run_cli, tracking_uri, tmp_path):
    """The VQ-VAE reproducer of issue #23 (t-SNE's points NaN on a collapsed codebook), made certain."""
    code, configs = tmp_path / "code", tmp_path / "configs" / "model"
    code.mkdir()
    configs.mkdir(parents=True)
    (code / "collapsed.py").write_text(textwrap.dedent(COLLAPSED))
    (configs / "collapsed.yaml").write_text("_target_: collapsed.Collapsed\nwidths: [16]\nbottleneck: 4\n"
                                            "code_norm: none\n")
    run, skipped = _finished(run_cli, tracking_uri, "digits", "--config-dir", str(tmp_path / "configs"),
                             "model=collapsed", VIEWS, env={"PYTHONPATH": str(code)})
    assert "tsne" in skipped and "collapsed" in skipped["tsne"]
    assert {"test_loss", "test_knn_acc", "pca_knn_acc", "embed_pca_trust"} <= set(run.data.metrics)
    assert {"pca.png", "explorer.html"} <= artifact_paths(tracking_uri, run.info.run_id)  # the first view computed


