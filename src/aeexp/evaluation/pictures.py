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

from aeexp import data, files, models, novelty
from aeexp.evaluation import EXPLORER, RECONSTRUCTIONS, figures, guard, health
from aeexp.evaluation.pipeline import Evaluation, Views, labels_of
from aeexp.models.inference import reconstruct, to_float

RECONSTRUCTION_EXAMPLES = 12
INTERPOLATION_STEPS = 9
PRIOR_SAMPLES = (4, 8)
TRAVERSAL_IMAGES = 3  # test images traversed (the first of each class in turn)
TRAVERSAL_DIMENSIONS = 5  # the code dimensions of largest variance varied, one at a time
TRAVERSAL_QUANTILES = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)  # the values given, as quantiles of the codes' own
TRAVERSALS = "traversals.png"


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


@torch.no_grad()
def traversal_images(subject: Subject, codes: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
    """Latent traversals of a few test images (``TRAVERSAL_IMAGES``): each of the ``TRAVERSAL_DIMENSIONS`` code
    dimensions with the largest variance over the test ``codes``, set in turn to the quantiles
    ``TRAVERSAL_QUANTILES`` of its values over the test codes (of the prior, a model with ``prior_quantiles``), and
    decoded. The images ``(rows, steps, C, H, W)``, a row label per (image, dimension), a column label per quantile."""
    model, dataset = subject.model, subject.dataset
    model.eval()
    shown = examples(dataset)[:TRAVERSAL_IMAGES]
    codes = np.asarray(codes, dtype=np.float32)
    if not len(shown) or not guard.finite(codes):
        raise ValueError("it needs a test image and finite codes")
    dimensions = np.argsort(-codes.var(axis=0), kind="stable")[:TRAVERSAL_DIMENSIONS]
    probabilities = torch.tensor(TRAVERSAL_QUANTILES)
    prior = getattr(model, "prior_quantiles", None)
    values = (prior(probabilities).cpu().numpy() if callable(prior)
              else np.quantile(codes, TRAVERSAL_QUANTILES, axis=0)).astype(np.float32)
    device = next(model.parameters()).device
    rows, labels = [], []
    for i in shown:
        for d in dimensions:
            varied = np.repeat(codes[i:i + 1], len(TRAVERSAL_QUANTILES), axis=0)
            varied[:, d] = values[:, d]
            rows.append(model.decode(torch.from_numpy(varied).to(device)).float().cpu().numpy())
            labels.append(f"{_image_name(dataset, int(i))}: z{d}")
    unit = "prior quantile" if callable(prior) else "quantile"
    return np.stack(rows), labels, [f"{unit} {q:.2f}" if k == 0 else f"{q:.2f}"
                                    for k, q in enumerate(TRAVERSAL_QUANTILES)]


def _traversals(subject: Subject, codes: np.ndarray) -> figures.Figure:
    images, rows, columns = traversal_images(subject, codes)
    return figures.traversal_grid(images, rows, columns, f"{subject.label}: latent traversals, each of the most "
                                  "varied code dimensions in turn")


def _kl_figure(subject: Subject, kl: np.ndarray) -> figures.Figure:
    return figures.bar_chart(kl, f"{subject.label}: KL from the prior per code dimension\n(mean over the "
                             f"{subject.dataset.name} test images)", "code dimension", "KL (nats)",
                             threshold=health.COLLAPSED_KL, log_scale=True)


def _codebook_figure(subject: Subject, counts: np.ndarray) -> figures.Figure:
    order = np.sort(counts)[::-1]
    used = int((counts > 0).sum())
    return figures.bar_chart(order, f"{subject.label}: codebook use on the {subject.dataset.name} test images\n"
                             f"{used} of {len(counts)} entries used", "codebook entries, most used first",
                             "times chosen")


def health_contents(subject: Subject, codes: np.ndarray) -> dict[str, Callable[[], bytes]]:
    """Per file name, what makes the latent health figures: ``traversals.png`` for every model, ``kl_per_dimension.png``
    (a model with ``kl_per_dimension``), ``codebook_usage.png`` (a model with ``codebook_usage``)."""
    images = subject.dataset.test.images
    contents = {TRAVERSALS: functools.cache(lambda: png(_traversals(subject, codes)))}
    if callable(getattr(subject.model, "kl_per_dimension", None)):
        contents["kl_per_dimension.png"] = lambda: png(_kl_figure(subject, health.kl_per_dimension(subject.model,
                                                                                                    images)))
    if callable(getattr(subject.model, "codebook_usage", None)):
        contents["codebook_usage.png"] = lambda: png(_codebook_figure(subject, health.codebook_usage(subject.model,
                                                                                                     images)))
    return contents


def view_figure(subject: Subject, views: Views, name: str, metrics: dict[str, float]) -> figures.Figure:
    """``<view>.png``: a view's points coloured by class, titled with its metrics."""
    measured = [f"{label} {metrics[f'embed_{name}_{key}']:.3f}" for key, label in
                (("knn_acc", "5-NN acc in 2-D"), ("trust", "trustworthiness")) if f"embed_{name}_{key}" in metrics]
    dataset = subject.dataset
    return figures.embedding_scatter(views.points[name], views.labels, dataset.class_names,
                                     f"{views.titles.get(name, name)} of {subject.label} codes on {dataset.name} "
                                     f"test images\n{', '.join(measured)}")


def explorer_page(subject: Subject, views: Views, shown: Sequence[tuple[str, bytes]] = ()) -> str:
    """``explorer.html``: the first view computed, each point showing its test image and reconstruction on hover, and
    the figures ``shown`` (caption, PNG) a click away."""
    from aeexp.explorer import explorer_html

    name, points = next(iter(views.points.items()))
    dataset = subject.dataset
    images = dataset.test.images[torch.as_tensor(views.chosen, device=dataset.test.images.device)]
    return explorer_html(points, views.labels, dataset.class_names, images.cpu().numpy(),
                         reconstruct(subject.model, images).numpy(),
                         f"{views.titles.get(name, name)} of {subject.name} codes (bottleneck "
                         f"{subject.model.bottleneck}) on {dataset.name}: hover a point for its image and "
                         "reconstruction" + (", click the legend to hide a class" if views.labels is not None else ""),
                         shown)


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


def test_errors(subject: Subject) -> np.ndarray:
    """Each test image's reconstruction error (:func:`aeexp.novelty.image_errors`), float32."""
    images = subject.dataset.test.images
    return novelty.image_errors(to_float(images).cpu().numpy(), reconstruct(subject.model, images).numpy())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def reconstruction_contents(subject: Subject) -> dict[str, Callable[[], bytes]]:
    """``reconstructions.npz`` (the report's panel) and ``test_errors.npy`` (what ``aeexp encode`` ranks new images
    by), what makes them."""
    return {RECONSTRUCTIONS: lambda: _npz(reconstruction_examples(subject)),
            novelty.TEST_ERRORS: lambda: _npy(test_errors(subject))}


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
    views = view_contents(subject, evaluation.views, evaluation.metrics, explorer=False)
    contents.update(views)
    if callable(getattr(subject.model, "sample", None)):
        contents["prior_samples.png"] = lambda: png(_prior_samples(subject))
    latent = health_contents(subject, evaluation.codes)
    contents.update(latent)
    contents.update(reconstruction_contents(subject))
    if evaluation.views.points:
        contents[EXPLORER] = lambda: explorer_page(subject, evaluation.views,
                                                   _made([("latent traversals", latent[TRAVERSALS])])).encode("utf-8")
    return contents


def _made(figures: Sequence[tuple[str, Callable[[], bytes]]]) -> list[tuple[str, bytes]]:
    """Those of ``figures`` (caption, what makes its PNG) that can be made (one that cannot was skipped already)."""
    made = []
    for caption, make in figures:
        try:
            made.append((caption, make()))
        except Exception:  # its own file's skip says why
            continue
    return made


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
