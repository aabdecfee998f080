"""Figures as pure functions: arrays in, matplotlib Figure out (no MLflow, no files): a run's (reconstructions,
image grids, loss curves, 2-D views) and a sweep report's (metrics against bottleneck, reconstruction and image
panels, an Optuna study's history).

Text from outside (class names, dataset and run names, titles) is shown as it is written, never read as
matplotlib's mathtext: a class folder named ``$$a^2$$`` is a label, not a formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def plain(text: str) -> str:
    """``text`` as matplotlib shows it literally: each ``$`` escaped, so no mathtext is parsed."""
    return str(text).replace("$", r"\$")


def pick_one_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` examples: the first of each class in turn, then the next ones."""
    picked: list[int] = []
    remaining = {c: list(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    while len(picked) < min(n, len(labels)):
        for members in remaining.values():
            if members and len(picked) < n:
                picked.append(int(members.pop(0)))
    return np.array(picked, dtype=int)


def _mosaic(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """Images ``(rows, columns, C, H, W)`` as one array, ``pad`` white pixels between them: ``(H', W')`` for grey
    images, ``(H', W', 3)`` for colour ones (C = 3); of other channel counts the first channel, in grey."""
    rows, columns, channels, height, width = images.shape
    pixels = images.transpose(0, 1, 3, 4, 2) if channels == 3 else images[:, :, 0]
    canvas = np.ones((rows * (height + pad) - pad, columns * (width + pad) - pad, *pixels.shape[4:]),
                     dtype=np.float32)
    for r in range(rows):
        for c in range(columns):
            top, left = r * (height + pad), c * (width + pad)
            canvas[top:top + height, left:left + width] = pixels[r, c]
    return canvas


def _grid_axes(fig: Figure, images: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str] = (),
               fontsize: float = 8, ax: Axes | None = None) -> None:
    """One axes (``ax``, else a new one filling ``fig``) showing ``images`` ``(rows, columns, C, H, W)`` as a mosaic
    (in colour when C = 3), rows and columns labelled by ticks.

    One image instead of an axes per cell: matplotlib lays out and draws a few artists instead of hundreds.
    """
    height, width = images.shape[-2:]
    ax = fig.add_subplot() if ax is None else ax
    ax.imshow(np.clip(_mosaic(images), 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([r * (height + 1) + (height - 1) / 2 for r in range(len(row_labels))],
                  [plain(label) for label in row_labels], fontsize=fontsize)
    ax.set_xticks([c * (width + 1) + (width - 1) / 2 for c in range(len(column_labels))],
                  [plain(label) for label in column_labels], fontsize=fontsize)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, titles: Sequence[str] = (),
                        noisy: np.ndarray | None = None) -> Figure:
    """Originals (top row) above their reconstructions; images ``(n, C, H, W)`` in [0, 1], ``titles`` above the
    columns.

    With ``noisy`` (a denoising AE) three rows: the noisy input, the output and the clean target.
    """
    n = len(originals)
    if noisy is None:
        rows = [("input", originals), ("output", reconstructions)]
    else:
        rows = [("noisy input", noisy), ("output", reconstructions), ("clean target", originals)]
    fig = plt.figure(figsize=(1.1 * n + 0.6, 1.3 * len(rows)))
    _grid_axes(fig, np.stack([images for _, images in rows]), [label for label, _ in rows], list(titles)[:n])
    fig.tight_layout()
    return fig


def image_grid(images: np.ndarray, title: str, row_labels: Sequence[str] = ()) -> Figure:
    """A grid of images ``(rows, columns, C, H, W)`` in [0, 1] (e.g. interpolations, samples), one title."""
    rows, columns = images.shape[:2]
    fig = plt.figure(figsize=(0.9 * columns + 0.8, 0.9 * rows + 0.6))
    _grid_axes(fig, images, list(row_labels)[:rows])
    fig.suptitle(plain(title), fontsize=10)
    fig.tight_layout()
    return fig


def loss_curves(train_loss: Sequence[float], val_loss: Sequence[float], loss_name: str) -> Figure:
    """Training and validation loss per epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = np.arange(1, len(train_loss) + 1)
    ax.plot(epochs, train_loss, marker="o", ms=3, label="train")
    ax.plot(epochs, val_loss, marker="o", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(plain(f"{loss_name} loss"))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def embedding_scatter(points: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str], title: str
                      ) -> Figure:
    """2-D points coloured by class, with a legend of class names; in one colour, without a legend, when ``labels``
    is None (unlabelled images)."""
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.7, color=cmap(0))
    for c, name in enumerate(class_names if labels is not None else []):
        mask = labels == c
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=4, alpha=0.7, color=cmap(c % cmap.N), label=plain(name))
    ax.set_title(plain(title), fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if labels is not None:
        ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


@dataclass
class Curve:
    """One line of :func:`metrics_vs_bottleneck`: ``(bottleneck, mean, std)`` points of a metric for one setting on
    one dataset (``std`` 0 for a single run); ``baseline`` draws it dashed, without markers."""

    metric: str
    label: str
    dataset: str
    points: list[tuple[int, float, float]]
    baseline: bool = False


MARKERS = "osD^vP*Xhp<>"
BASELINE_STYLES = (("--", "#444444"), ("-.", "#888888"), (":", "#222222"))  # a dataset's baseline each
CHAR_WIDTH = 0.7 / 72  # inches per point of font size: a generous average width of a character
TEXT_DPIS = (60, 72, 80, 90, 100, 150)  # what a text's width is measured at: those of aeexp's figures and more


def _legend_layout(labels: Sequence[str], width: float, fontsize: float) -> tuple[list[str], int]:
    """Legend entries that fit a figure ``width`` inches wide: each label wrapped to the width, and the number of
    columns the widest entry allows (at most 3)."""
    import textwrap

    handle = 0.7  # inches: the line sample and the gaps around an entry
    chars = max(12, int((width - handle - 0.2) / (fontsize * CHAR_WIDTH)))
    wrapped = ["\n".join(textwrap.wrap(label, chars)) or label for label in labels]
    widest = max((len(line) for label in wrapped for line in label.split("\n")), default=1)
    return wrapped, max(1, min(3, len(wrapped), int(width // (widest * fontsize * CHAR_WIDTH + handle))))


def _draw_curve(ax: Axes, curve: Curve, style: dict[str, object]) -> None:
    x, mean, std = (np.array(v, dtype=float) for v in zip(*sorted(curve.points), strict=True))
    if curve.baseline:  # with a cross at each size: a baseline at a single size is a point, not an empty line
        ax.plot(x, mean, marker="x", markersize=8, label=plain(curve.label), **style)
    else:
        ax.errorbar(x, mean, yerr=std if std.any() else None, capsize=3, markersize=6, label=plain(curve.label),
                    **style)


def metrics_vs_bottleneck(curves: Sequence[Curve], metric_names: Sequence[str]) -> Figure:
    """One panel per metric: value against bottleneck size, one line per setting in a colour and marker of its own,
    with error bars (the standard deviation over seeds) where there is a spread; a dataset's baseline in grey,
    dashed, with a cross at each size. The legend below the panels names every line, each label whole."""
    columns = min(2, len(metric_names))
    rows = -(-len(metric_names) // columns)
    width, fontsize = 5.2 * columns, 9
    settings = list(dict.fromkeys(c.label for c in curves if not c.baseline))
    palette = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    styles: dict[tuple[bool, str], dict[str, object]] = {
        (False, name): {"color": palette(i % palette.N), "marker": MARKERS[i % len(MARKERS)]}
        for i, name in enumerate(settings)}
    for i, dataset in enumerate(dict.fromkeys(c.dataset for c in curves if c.baseline)):
        line, colour = BASELINE_STYLES[i % len(BASELINE_STYLES)]
        styles[(True, dataset)] = {"linestyle": line, "color": colour}
    labels = list(dict.fromkeys(plain(c.label) for c in sorted(curves, key=lambda c: (c.baseline, c.label))))
    wrapped, legend_columns = _legend_layout(labels, width, fontsize)
    legend_height = (sum(label.count("\n") + 1 for label in wrapped) / legend_columns + 1) * fontsize * 1.5 / 72
    fig = plt.figure(figsize=(width, 3.8 * rows + legend_height), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(metric_names):]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metric_names, strict=False):
        for curve in sorted((c for c in curves if c.metric == metric), key=lambda c: (c.baseline, c.label)):
            _draw_curve(ax, curve, styles[(curve.baseline, curve.dataset if curve.baseline else curve.label)])
        sizes = sorted({p[0] for c in curves if c.metric == metric for p in c.points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel("bottleneck")
        ax.set_title(plain(metric))
        ax.grid(alpha=0.3)
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    if handles:
        order = [name for name in labels if name in handles]
        fig.legend([handles[name] for name in order], [wrapped[labels.index(name)] for name in order],
                   loc="outside lower center", ncol=legend_columns, frameon=False, fontsize=fontsize)
    return fig


def _text_width(texts: Sequence[str], fontsize: float) -> float:
    """The width in inches of the widest of ``texts`` drawn at ``fontsize`` points, as the Agg renderer draws it at
    the resolutions figures are saved at (hinting makes a text up to 12% wider at one than at another)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    widest = 0.0
    for dpi in TEXT_DPIS:
        fig = Figure(dpi=dpi)
        renderer = FigureCanvasAgg(fig).get_renderer()
        for text in texts:
            widest = max(widest, Text(0, 0, plain(text), fontsize=fontsize, figure=fig).get_window_extent(renderer)
                         .width / dpi)
    return 1.03 * widest


def reconstruction_panel(groups: Sequence[tuple[str, np.ndarray, Sequence[tuple[str, np.ndarray]]]]) -> Figure:
    """The same test images through several models: per group ``(title, inputs, rows)`` a block with the inputs
    ``(n, C, H, W)`` on top and one row per ``(label, outputs)`` below (a group per dataset: sizes differ). The
    figure is as wide as its longest row label and its images: every label shows whole."""
    cell, title_height, gap, fontsize = 0.6, 0.3, 0.15, 7  # inches, inches, inches, points
    labels = [["input", *[label for label, _ in rows]] for _, _, rows in groups]
    left = _text_width([label for block in labels for label in block], fontsize) + 0.25
    sizes = [(len(block) * cell * inputs.shape[-2] / inputs.shape[-1], len(inputs) * cell)
             for block, (_, inputs, _) in zip(labels, groups, strict=True)]
    width = left + max(w for _, w in sizes) + 0.2
    height = sum(h + title_height + gap for h, _ in sizes) + gap
    fig = plt.figure(figsize=(width, height))
    top = height - gap
    for block, (title, inputs, rows), (h, w) in zip(labels, groups, sizes, strict=True):
        top -= title_height + h
        ax = fig.add_axes((left / width, top / height, w / width, h / height))
        ax.set_anchor("W")
        _grid_axes(fig, np.stack([inputs, *[outputs for _, outputs in rows]]), block, fontsize=fontsize, ax=ax)
        ax.set_title(plain(title), fontsize=9)
        top -= gap
    return fig


def optimization_history(numbers: Sequence[int], values: Sequence[float], pruned: Sequence[bool], objective: str,
                         minimize: bool = True) -> Figure:
    """An Optuna study: the objective of each trial (pruned trials at their last reported value, hollow) and the
    best so far among the completed ones."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    numbers, values, pruned = np.asarray(numbers), np.asarray(values, dtype=float), np.asarray(pruned, dtype=bool)
    done = ~pruned & np.isfinite(values)
    ax.scatter(numbers[done], values[done], color="tab:blue", label="trial", zorder=3)
    if pruned.any():
        ax.scatter(numbers[pruned], values[pruned], facecolors="none", edgecolors="tab:red", label="pruned", zorder=3)
    if done.any():
        best = (np.minimum if minimize else np.maximum).accumulate(values[done])
        ax.step(numbers[done], best, where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(plain(objective))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_panel(images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 4) -> Figure:
    """Images (e.g. each run's t-SNE figure) side by side with their titles."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(plain(title), fontsize=10)
    fig.tight_layout()
    return fig


def traversal_grid(images: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str], title: str
                   ) -> Figure:
    """Latent traversals: images ``(rows, steps, C, H, W)`` in [0, 1], a row per (image, code dimension) varied over
    the steps, the steps' values above the columns."""
    rows, columns = images.shape[:2]
    fig = plt.figure(figsize=(0.62 * columns + 1.6, 0.62 * rows + 0.8))
    _grid_axes(fig, images, list(row_labels)[:rows], list(column_labels)[:columns], fontsize=7)
    fig.suptitle(plain(title), fontsize=9)
    fig.tight_layout()
    return fig


def bar_chart(values: Sequence[float], title: str, xlabel: str, ylabel: str, threshold: float | None = None,
              log_scale: bool = False) -> Figure:
    """One bar per value (a code dimension's KL, a codebook entry's use), with a dashed ``threshold`` line."""
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, min(12.0, 3.0 + 0.12 * len(values))), 3.8))
    ax.bar(np.arange(len(values)), values, width=0.8, color="tab:blue")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.legend(fontsize=8)
    if log_scale and (values > 0).any():
        ax.set_yscale("log")
    ax.set_xlabel(plain(xlabel))
    ax.set_ylabel(plain(ylabel))
    ax.set_title(plain(title), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
