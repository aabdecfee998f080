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


def metrics_vs_bottleneck(curves: Sequence[Curve], metric_names: Sequence[str]) -> Figure:
    """One panel per metric: value against bottleneck size, one line per setting, with error bars (the standard
    deviation over seeds) where there is a spread; baselines dashed. A dataset has one colour for all its lines
    (its settings differ by marker), so a baseline sits in the colour of its dataset."""
    columns = min(2, len(metric_names))
    rows = -(-len(metric_names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(metric_names):]:
        ax.axis("off")
    palette = plt.get_cmap("tab10")
    colours = {name: palette(i % 10) for i, name in enumerate(dict.fromkeys(c.dataset for c in curves))}
    markers = dict(zip(dict.fromkeys(c.label for c in curves if not c.baseline), "osD^vP*Xhp<>" * 8, strict=False))
    for ax, metric in zip(axes.flat, metric_names, strict=False):
        for curve in sorted((c for c in curves if c.metric == metric), key=lambda c: (c.baseline, c.label)):
            x, mean, std = (np.array(v, dtype=float) for v in zip(*sorted(curve.points), strict=True))
            if curve.baseline:
                ax.plot(x, mean, linestyle="--", color=colours[curve.dataset], label=plain(curve.label))
            else:
                ax.errorbar(x, mean, yerr=std if std.any() else None, marker=markers[curve.label], capsize=3,
                            color=colours[curve.dataset], label=plain(curve.label))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bottleneck")
        ax.set_title(plain(metric))
        ax.grid(alpha=0.3)
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        legend_rows = -(-len(labels) // 3)
        fig.legend(list(handles.values()), labels, loc="lower center", ncol=min(3, len(labels)), frameon=False)
        fig.tight_layout(rect=(0, min(0.4, 0.05 * legend_rows / rows + 0.02), 1, 1))
    else:
        fig.tight_layout()
    return fig


def reconstruction_panel(groups: Sequence[tuple[str, np.ndarray, Sequence[tuple[str, np.ndarray]]]]) -> Figure:
    """The same test images through several models: per group ``(title, inputs, rows)`` a block with the inputs
    ``(n, C, H, W)`` on top and one row per ``(label, outputs)`` below (a group per dataset: sizes differ)."""
    heights = [len(rows) + 1 for _, _, rows in groups]
    columns = max(len(inputs) for _, inputs, _ in groups)
    fig = plt.figure(figsize=(0.75 * columns + 2.6, 0.62 * sum(heights) + 0.45 * len(groups)))
    grid = fig.add_gridspec(len(groups), 1, height_ratios=heights)
    for place, (title, inputs, rows) in zip(grid, groups, strict=True):
        images = np.stack([inputs, *[outputs for _, outputs in rows]])
        ax = fig.add_subplot(place)
        _grid_axes(fig, images, ["input", *[label for label, _ in rows]], fontsize=7, ax=ax)
        ax.set_title(plain(title), fontsize=9)
    fig.tight_layout()
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
