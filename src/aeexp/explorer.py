"""An interactive, self-contained HTML explorer of a 2-D embedding (bokeh, resources inline: works offline).

Points are coloured by class; hovering a point shows its image (and its reconstruction) and class; clicking a
legend entry hides that class. Unlabelled images are points of one colour, named by their number.
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Sequence

import numpy as np

THUMBNAIL_PIXELS = 84  # tooltip images are drawn about this wide, scaled by a whole factor without smoothing
THUMBNAIL_LEVELS = 16  # levels kept of each channel in the thumbnails
_TOOLTIP = """
<div style="font: 12px sans-serif; padding: 2px;">
  <div style="font-weight: 600; margin-bottom: 4px;">@label <span style="color: #888;">#@index</span></div>
  <div style="display: flex; gap: 6px;">
    <div style="text-align: center;">
      <img src="@image" width="{w}" height="{h}" alt="input"
           style="image-rendering: pixelated; border: 1px solid #ccc;">
      <div style="color: #666;">input</div>
    </div>{rec}
  </div>
</div>
"""
_TOOLTIP_REC = """
    <div style="text-align: center;">
      <img src="@reconstruction" width="{w}" height="{h}" alt="reconstruction"
           style="image-rendering: pixelated; border: 1px solid #ccc;">
      <div style="color: #666;">output</div>
    </div>"""


def _as_uint8_images(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, 3, H, W)`` images, float in [0, 1] or uint8, as uint8 ``(N, H, W)``
    (grey) or ``(N, H, W, 3)`` (colour)."""
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim == 4 and array.shape[1] == 3:
        array = array.transpose(0, 2, 3, 1)
    if array.ndim != 3 and not (array.ndim == 4 and array.shape[3] == 3):
        raise ValueError(f"images must have shape (N, H, W), (N, 1, H, W) or (N, 3, H, W), not {array.shape}")
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def png_data_uris(images: np.ndarray, levels: int = THUMBNAIL_LEVELS) -> list[str]:
    """One small PNG ``data:`` URI per image (see :func:`_as_uint8_images` for the shapes; float in [0, 1] or
    uint8), grey or colour as the images are.

    Each channel's values are rounded to ``levels`` evenly spaced levels (2 to 256): 16 look the same as 256 at
    thumbnail size and make the PNGs about 40% smaller.
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must lie in [2, 256], not {levels}")
    pixels = _as_uint8_images(images)
    if levels < 256:
        step = 255.0 / (levels - 1)
        pixels = (np.round(pixels / step) * step).round().astype(np.uint8)
    return ["data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii") for image in pixels]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8-bit PNG of a uint8 array, ``(H, W)`` greyscale or ``(H, W, 3)`` RGB: no row filter, zlib at level 9.

    Written out rather than through Pillow: ~4x faster for thumbnails (0.16 s against 0.46 s with
    ``optimize=True`` for 3,000 Fashion-MNIST images) and a little smaller, as filters gain nothing on 28x28 images.
    """
    height, width = pixels.shape[:2]
    colour = pixels.ndim == 3
    row_bytes = width * (3 if colour else 1)
    rows = np.zeros((height, row_bytes + 1), dtype=np.uint8)  # each row starts with its filter type, 0 = none
    rows[:, 1:] = pixels.reshape(height, row_bytes)
    # 8 bits, greyscale (0) or RGB (2), deflate, no filter method, no interlace
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if colour else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 9)) + _png_chunk(b"IEND", b""))


def _palette(n: int) -> list[str]:
    from bokeh.palettes import Category10, Category20, Turbo256

    if n <= 10:
        return list(Category10[10][:n])
    if n <= 20:
        return list(Category20[20][:n])
    return [Turbo256[int(i)] for i in np.linspace(0, 255, n)]


def _check_sizes(points: np.ndarray, labels: np.ndarray, n_classes: int, images: np.ndarray,
                 reconstructions: np.ndarray | None) -> None:
    """ValueError unless there is a point, a label in [0, n_classes) and an image (and reconstruction) each."""
    n = len(points)
    if points.shape != (n, 2) or labels.shape != (n,) or len(images) != n:
        raise ValueError(f"points {points.shape}, labels {labels.shape} and images ({len(images)}) do not match")
    if reconstructions is not None and len(reconstructions) != n:
        raise ValueError(f"{len(reconstructions)} reconstructions for {n} images")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")


def _figures_html(shown: Sequence[tuple[str, bytes]]) -> str:
    """Each (caption, PNG) of ``shown`` in a collapsed box at the page's top right, opened by a click."""
    boxes = "".join(
        f'<details style="background: #fff; border: 1px solid #ccc; padding: 4px 8px; margin-bottom: 4px;">'
        f'<summary style="cursor: pointer;">{html.escape(caption)}</summary>'
        f'<img src="data:image/png;base64,{base64.b64encode(content).decode("ascii")}" alt="{html.escape(caption)}" '
        'style="max-width: 90vw; max-height: 85vh;"></details>' for caption, content in shown)
    return f'<div style="position: fixed; top: 8px; right: 8px; z-index: 10; font: 13px sans-serif;">{boxes}</div>'


def explorer_html(points: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str], images: np.ndarray,
                  reconstructions: np.ndarray | None, title: str, shown: Sequence[tuple[str, bytes]] = ()) -> str:
    """The complete HTML page of an interactive scatter plot of ``points`` ``(N, 2)``, coloured by ``labels``
    (indices into ``class_names``; None: unlabelled images, one colour, no legend); hovering shows ``images[i]``
    (and ``reconstructions[i]``), grey or colour, the legend toggles classes; each figure of ``shown`` (caption,
    PNG: a run's latent traversals) opens from a box at the top right. Bokeh's JavaScript is inlined: the page needs
    no network.
    """
    from bokeh.embed import file_html
    from bokeh.models import ColumnDataSource, HoverTool, Title
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    points = np.asarray(points, dtype=np.float64)
    labelled = labels is not None
    n = len(points)
    labels = np.asarray(labels).astype(int) if labelled else np.zeros(n, dtype=int)
    class_names = list(class_names) if labelled else [""]
    _check_sizes(points, labels, len(class_names), images, reconstructions)
    image_uris = np.array(png_data_uris(images), dtype=object)
    rec_uris = np.array(png_data_uris(reconstructions), dtype=object) if reconstructions is not None else None
    height, width = _as_uint8_images(images[:1]).shape[1:3] if n else (0, 0)
    scale = max(1, round(THUMBNAIL_PIXELS / max(width, 1)))  # 28x28 -> 3x, 8x8 digits -> 10x
    tw, th = width * scale, height * scale

    # Fills its window (or the MLflow UI's artifact iframe), but no smaller than 480 x 400 pixels.
    fig = figure(title=title, sizing_mode="stretch_both", min_width=480, min_height=400,
                 tools="pan,wheel_zoom,box_zoom,reset,save", active_scroll="wheel_zoom", toolbar_location="above",
                 match_aspect=True)
    legend_hint = " · click a legend entry to hide a class" if labelled else ""
    fig.add_layout(Title(text=f"{n} points · hover a point to see its image{legend_hint}", text_font_style="italic",
                         text_color="#666", text_font_size="11px"), "above")
    fig.title.text_font_size = "15px"
    fig.axis.visible = False
    fig.grid.grid_line_alpha = 0.3
    renderers = []
    for c, (name, color) in enumerate(zip(class_names, _palette(len(class_names)), strict=True)):
        idx = np.flatnonzero(labels == c)
        if not len(idx):
            continue
        data = {"x": points[idx, 0], "y": points[idx, 1], "index": idx, "label": [str(name)] * len(idx),
                "image": list(image_uris[idx])}
        if rec_uris is not None:
            data["reconstruction"] = list(rec_uris[idx])
        legend = {"legend_label": str(name)} if labelled else {}
        renderer = fig.scatter("x", "y", source=ColumnDataSource(data), size=5, color=color, alpha=0.75,
                               name=f"class {c}", **legend)
        renderers.append(renderer)
    rec_html = _TOOLTIP_REC.format(w=tw, h=th) if rec_uris is not None else ""
    fig.add_tools(HoverTool(renderers=renderers, tooltips=_TOOLTIP.format(w=tw, h=th, rec=rec_html),
                            point_policy="snap_to_data"))
    if labelled and fig.legend:
        fig.legend.click_policy = "hide"
        fig.legend.title = "class (click to hide)"
        fig.legend.label_text_font_size = "11px"
        fig.legend.location = "top_left"
        fig.add_layout(fig.legend[0], "right")
    page = file_html(fig, resources=INLINE, title=title)
    return page.replace("</body>", _figures_html(shown) + "</body>", 1) if shown else page
