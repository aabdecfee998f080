"""A trained model's test codes measured and viewed, the same for a run and for ``aeexp evaluate``: the test losses,
the metric list on its codes (``test_<name>``) and on PCA's of the same size (``pca_<name>``), and the 2-D views of
a sample of its codes with their own metrics (``embed_<view>_*``). Every step is guarded (:mod:`.guard`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from aeexp import data, models
from aeexp.data.sampling import sample_indices
from aeexp.evaluation import baseline, guard
from aeexp.evaluation import health as latent_health
from aeexp.evaluation.lists import Component, Lists, View
from aeexp.evaluation.metrics import cv_knn_accuracy, trustworthiness
from aeexp.models import inference

log = logging.getLogger(__name__)

StopCheck = Callable[[], None]  # raises to stop between steps (a run's Ctrl-C: aeexp.training.interrupt.check)


def _go_on() -> None:
    """The default :data:`StopCheck`: never stop."""


@dataclass
class Views:
    """The 2-D points of each view computed (``points[name]``, a figure's ``titles[name]``) of the test codes of rows
    ``chosen`` of the test split, and their labels (None: unlabelled)."""

    points: dict[str, np.ndarray]
    chosen: np.ndarray
    labels: np.ndarray | None
    titles: dict[str, str] = field(default_factory=dict)


@dataclass
class Evaluation:
    """What was measured (``metrics``), the test codes, their views, and what was skipped and why."""

    metrics: dict[str, float]
    codes: np.ndarray
    views: Views
    skips: guard.Skips


def labels_of(split: data.Split) -> np.ndarray | None:
    """A split's labels as a numpy array; None for unlabelled images."""
    return None if split.labels is None else split.labels.cpu().numpy()


def _say_unlabelled(dataset: data.Dataset, metrics: Mapping[str, Component], views: Mapping[str, View]) -> None:
    left_out = [name for name, component in {**metrics, **views}.items() if component.needs_labels]
    log.info("%s has no labels: %sthe views' kNN accuracies are left out, and the figures and the explorer do not "
             "colour points by class", dataset.name,
             f"the metrics that need them ({', '.join(left_out)}: test_* and pca_*), " if left_out else "")


def measure(model: models.Autoencoder, dataset: data.Dataset, metrics: Mapping[str, Component], seed: int,
            skips: guard.Skips, check_stop: StopCheck = _go_on, health: Mapping[str, Component] | None = None
            ) -> tuple[dict[str, float], np.ndarray]:
    """``test_loss``, ``test_mse``, the latent ``health`` of the test codes (``test_latent_*``, ...), ``test_<name>``
    of each metric on the model's codes and the PCA baseline (``pca_*``); also return the test codes."""
    test_images = dataset.test.images
    test_codes = inference.encode_all(model, test_images).numpy()
    results = {"test_loss": inference.evaluate_loss(model, test_images),
               "test_mse": inference.reconstruction_mse(model, test_images)}  # comparable to PCA's
    results.update(latent_health.measure(health or {}, model, test_images, test_codes, "test", skips))
    train_labels, test_labels = labels_of(dataset.train), labels_of(dataset.test)
    check_stop()
    if metrics:
        inputs = {"train_codes": inference.encode_all(model, dataset.train.images).numpy(), "test_codes": test_codes,
                  "train_labels": train_labels, "test_labels": test_labels, "seed": seed}
        results.update(guard.measure(metrics, inputs, "test", skips))
    check_stop()
    results.update(baseline.pca_metrics(dataset.train.images, train_labels, dataset.test.images, test_labels,
                                        model.bottleneck, metrics, skips))
    check_stop()
    return results, test_codes


def _view_metrics(name: str, codes: np.ndarray, points: np.ndarray, labels: np.ndarray | None, seed: int,
                  skips: guard.Skips) -> dict[str, float]:
    """How well a view's points keep the codes' neighbours (``trust``) and classes (``knn_acc``)."""
    measured = {}
    trust = skips.attempt(f"embed_{name}_trust", lambda: trustworthiness(codes, points))
    if trust is not None:
        measured["trust"] = trust
    if labels is not None:
        accuracy = skips.attempt(f"embed_{name}_knn_acc", lambda: cv_knn_accuracy(points, labels, seed=seed))
        if accuracy is not None:
            measured["knn_acc"] = accuracy
    return measured


def _points(view: View, codes: np.ndarray, labels: np.ndarray | None, seed: int, skips: guard.Skips
            ) -> np.ndarray | None:
    """The view's points of ``codes``, or None (skipped) when they cannot be made or are not ``(n, 2)`` finite."""
    if not guard.finite(codes):
        skips.skip(view.name, "the codes hold NaN or infinite values")
        return None
    log.info("2-D view %s of %d test codes", view.name, len(codes))
    points = skips.attempt(view.name, lambda: np.asarray(view(codes=codes, seed=seed, labels=labels), np.float32))
    if points is not None and points.shape != (len(codes), 2):
        skips.skip(view.name, f"it gave points of shape {points.shape}, not ({len(codes)}, 2)")
        return None
    if points is not None and not guard.finite(points):
        skips.skip(view.name, "its points hold NaN or infinite values (the codes may have collapsed to a point)")
        return None
    return points


def embed(codes: np.ndarray, labels: np.ndarray | None, views: Mapping[str, View], n_samples: int, seed: int,
          skips: guard.Skips, check_stop: StopCheck = _go_on) -> tuple[dict[str, float], Views]:
    """Each view on the same sample of at most ``n_samples`` codes (stratified by ``labels``):
    ``embed_<view>_{knn_acc,trust,time}`` (no ``knn_acc`` without labels); the first view's also as
    ``embed_knn_acc``, ``embed_trust``, ``embed_time``."""
    if n_samples < len(codes):
        chosen = sample_indices(labels, len(codes), n_samples, seed)
    else:
        chosen = np.arange(len(codes))
        if n_samples > len(codes):
            log.info("embed.n_samples=%d is more than the %d test images: embedding all of them", n_samples, len(codes))
    codes, labels = codes[chosen], None if labels is None else labels[chosen]
    results: dict[str, float] = {}
    shown = Views({}, chosen, labels, {name: view.title for name, view in views.items()})
    for i, view in enumerate(views.values()):
        check_stop()
        if view.needs_labels and labels is None:
            continue
        started = time.perf_counter()
        points = _points(view, codes, labels, seed, skips)
        if points is None:
            continue
        measured = {"time": time.perf_counter() - started, **_view_metrics(view.name, codes, points, labels, seed,
                                                                            skips)}
        results.update({f"embed_{view.name}_{key}": value for key, value in measured.items()})
        if i == 0:
            results.update({f"embed_{key}": value for key, value in measured.items()})
        shown.points[view.name] = points
    return results, shown


def evaluate(model: models.Autoencoder, dataset: data.Dataset, lists: Lists, n_samples: int, seed: int,
             check_stop: StopCheck = _go_on) -> Evaluation:
    """The whole evaluation of a trained model on its dataset's test split: :func:`measure`, then :func:`embed`."""
    skips = guard.Skips()
    if not dataset.labelled:
        _say_unlabelled(dataset, lists.metrics, lists.views)
    results, codes = measure(model, dataset, lists.metrics, seed, skips, check_stop, lists.health)
    embedded, views = embed(codes, labels_of(dataset.test), lists.views, n_samples, seed, skips, check_stop)
    return Evaluation({**results, **embedded}, codes, views, skips)


def summary(metrics: Mapping[str, float]) -> str:
    """The headline final metrics in one line: ``test_loss 0.1  test_mse 0.02 (PCA 0.03) ...`` (those measured)."""
    shown = [("test_loss", ".4f", None), ("test_mse", ".4f", "pca_test_mse"), ("test_knn_acc", ".3f", "pca_knn_acc"),
             ("embed_knn_acc", ".3f", None), ("embed_trust", ".3f", None)]
    return "  ".join(f"{name} {metrics[name]:{spec}}" + (f" (PCA {metrics[pca]:{spec}})" if pca in metrics else "")
                     for name, spec, pca in shown if name in metrics)
