"""A run's pictures as files: what its model draws (reconstructions, interpolations, prior samples), its loss curves,
a figure per 2-D view, the explorer page of the first view and ``reconstructions.npz`` (the sweep report's panel).
Each is made on its own: one that cannot be made is skipped (:mod:`.guard`), the others are written."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aeexp import data, files, models
from aeexp.evaluation import EXPLORER, RECONSTRUCTIONS, figures, guard
from aeexp.evaluation.pipeline import Evaluation, Views, labels_of
from aeexp.models.inference import reconstruct, to_float

RECONSTRUCTION_EXAMPLES = 12
INTERPOLATION_STEPS = 9
PRIOR_SAMPLES = (4, 8)


@dataclass
class Subject:
    """What the pictures show: a model (named ``name`` in titles) and its dataset, with the run's seed."""

    model: models.Autoencoder
    dataset: data.Dataset
    name: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.name} (bottleneck {self.model.bottleneck})"


def png(figure: figures.Figure) -> bytes:
    """``figure`` drawn as a PNG, and closed."""
    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        figures.plt.close(figure)


def write_bytes(content: bytes, path: Path) -> None:
    """``content`` into ``path``, whole or not at all."""
    files.write_atomically([(path, lambda file: file.write(content))])


def _image_name(dataset: data.Dataset, index: int) -> str:
    """What a figure calls test image ``index``: its class, or its number when the images have no labels."""
    labels = dataset.test.labels
    return dataset.class_names[int(labels[index])] if labels is not None else f"#{index}"


def examples(dataset: data.Dataset) -> np.ndarray:
    """The test images the figures show: the first of each class in turn (the first images when unlabelled)."""
    labels = labels_of(dataset.test)
    return (np.arange(min(RECONSTRUCTION_EXAMPLES, len(dataset.test))) if labels is None
            else figures.pick_one_per_class(labels, RECONSTRUCTION_EXAMPLES))


@torch.no_grad()
def _reconstructions(subject: Subject) -> figures.Figure:
    """Inputs above outputs (noisy input, output, clean target for a model that trains on corrupted images)."""
    model, dataset = subject.model, subject.dataset
    shown = examples(dataset)
    originals = to_float(dataset.test.images[shown])
    with torch.random.fork_rng(devices=[]):  # seeded noise, the global RNG left as it was
        torch.manual_seed(subject.seed)
        noisy = model.corrupt(originals)
    model.eval()
    outputs = model(noisy).float().cpu().numpy()
    return figures.reconstruction_grid(originals.cpu().numpy(), outputs, [_image_name(dataset, i) for i in shown],
                                       noisy=None if noisy is originals else noisy.cpu().numpy())


@torch.no_grad()
def _interpolation(subject: Subject) -> figures.Figure:
    """Decoded points on the line between the codes of pairs of test images (of different classes, when labelled)."""
    model, dataset, shown = subject.model, subject.dataset, examples(subject.dataset)
    model.eval()
    pairs = [(int(shown[i]), int(shown[i + 1])) for i in range(0, min(len(shown) - 1, 8), 2)]
    if not pairs:
        raise ValueError(f"it needs two test images, and the test split has {len(dataset.test)}")
    weights = torch.linspace(0.0, 1.0, INTERPOLATION_STEPS, device=dataset.test.images.device)[:, None]
    rows = []
    for a, b in pairs:
        codes = model.encode(to_float(dataset.test.images[[a, b]]))
        rows.append(model.decode((1 - weights) * codes[0] + weights * codes[1]).cpu().numpy())
    names = [f"{_image_name(dataset, a)} -> {_image_name(dataset, b)}" for a, b in pairs]
    return figures.image_grid(np.stack(rows), f"{subject.label}: decoded codes between two test images", names)


@torch.no_grad()
def _prior_samples(subject: Subject) -> figures.Figure:
    """Decoded draws from the model's prior (a model with ``sample(n, generator)``)."""
    subject.model.eval()
    rows, columns = PRIOR_SAMPLES
    images = subject.model.sample(rows * columns, torch.Generator().manual_seed(subject.seed)).float().cpu().numpy()
    return figures.image_grid(images.reshape(rows, columns, *images.shape[1:]),
                              f"{subject.name}: decoded samples of its prior")


def view_figure(subject: Subject, views: Views, name: str, metrics: dict[str, float]) -> figures.Figure:
    """``<view>.png``: a view's points coloured by class, titled with its metrics."""
    measured = [f"{label} {metrics[f'embed_{name}_{key}']:.3f}" for key, label in
                (("knn_acc", "5-NN acc in 2-D"), ("trust", "trustworthiness")) if f"embed_{name}_{key}" in metrics]
    dataset = subject.dataset
    return figures.embedding_scatter(views.points[name], views.labels, dataset.class_names,
                                     f"{views.titles.get(name, name)} of {subject.label} codes on {dataset.name} "
                                     f"test images\n{', '.join(measured)}")


def explorer_page(subject: Subject, views: Views) -> str:
    """``explorer.html``: the first view computed, each point showing its test image and reconstruction on hover."""
    from aeexp.explorer import explorer_html

    name, points = next(iter(views.points.items()))
    dataset = subject.dataset
    images = dataset.test.images[torch.as_tensor(views.chosen, device=dataset.test.images.device)]
    return explorer_html(points, views.labels, dataset.class_names, images.cpu().numpy(),
                         reconstruct(subject.model, images).numpy(),
                         f"{views.titles.get(name, name)} of {subject.name} codes (bottleneck "
                         f"{subject.model.bottleneck}) on {dataset.name}: hover a point for its image and "
                         "reconstruction" + (", click the legend to hide a class" if views.labels is not None else ""))


@torch.no_grad()
def reconstruction_examples(subject: Subject) -> dict[str, np.ndarray]:
    """The arrays of ``reconstructions.npz``: the example test images (the same for every run on the dataset) and the
    model's outputs of them, float16."""
    shown = examples(subject.dataset)
    inputs = to_float(subject.dataset.test.images[shown])
    subject.model.eval()
    outputs = subject.model(inputs).float().cpu().numpy()
    return {"indices": shown, "inputs": inputs.cpu().numpy().astype(np.float16), "outputs": outputs.astype(np.float16)}


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def view_contents(subject: Subject, views: Views, metrics: dict[str, float], explorer: bool = True
                  ) -> dict[str, Callable[[], bytes]]:
    """Per file name, what makes it: ``<view>.png`` of each view computed and (with ``explorer``) the explorer page
    of the first."""
    contents: dict[str, Callable[[], bytes]] = {
        f"{name}.png": functools.partial(lambda name: png(view_figure(subject, views, name, metrics)), name)
        for name in views.points}
    if explorer and views.points:
        contents[EXPLORER] = lambda: explorer_page(subject, views).encode("utf-8")
    return contents


def reconstruction_contents(subject: Subject) -> dict[str, Callable[[], bytes]]:
    """``reconstructions.npz``, what makes it."""
    return {RECONSTRUCTIONS: lambda: _npz(reconstruction_examples(subject))}


def _contents(subject: Subject, evaluation: Evaluation, history: Sequence[dict[str, float]]
              ) -> dict[str, Callable[[], bytes]]:
    """Per file name, what makes a run's picture."""
    contents = {
        "reconstructions.png": lambda: png(_reconstructions(subject)),
        "loss_curves.png": lambda: png(figures.loss_curves([e["train_loss"] for e in history],
                                                           [e["val_loss"] for e in history],
                                                           str(getattr(subject.model, "loss", "")))),
        "interpolation.png": lambda: png(_interpolation(subject)),
    }
    views = view_contents(subject, evaluation.views, evaluation.metrics)
    contents.update({name: make for name, make in views.items() if name != EXPLORER})
    if callable(getattr(subject.model, "sample", None)):
        contents["prior_samples.png"] = lambda: png(_prior_samples(subject))
    contents.update(reconstruction_contents(subject))
    contents.update({name: make for name, make in views.items() if name == EXPLORER})
    return contents


def write(contents: dict[str, Callable[[], bytes]], folder: Path, skips: guard.Skips,
          check_stop: Callable[[], None]) -> list[Path]:
    """Each file of ``contents`` into ``folder``; the paths written. One that cannot be made is skipped; one that
    cannot be written (a full disk) raises OSError."""
    written = []
    for name, make in contents.items():
        check_stop()
        content = skips.attempt(name, make)
        if content is not None:
            write_bytes(content, folder / name)
            written.append(folder / name)
    return written


def write_all(subject: Subject, evaluation: Evaluation, history: Sequence[dict[str, float]], folder: Path,
              check_stop: Callable[[], None]) -> list[Path]:
    """Every picture of a run into ``folder`` (see :func:`write`); what cannot be made is in ``evaluation.skips``."""
    return write(_contents(subject, evaluation, history), folder, evaluation.skips, check_stop)
