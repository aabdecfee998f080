"""The embedding explorer: one self-contained bokeh HTML page, checked as text, offline in Chromium, and inside
the MLflow UI's artifact viewer on a real server."""

from __future__ import annotations

import base64
import gzip
import html
import io
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from idx import synthetic_images
from PIL import Image

from aeexp.explorer import THUMBNAIL_LEVELS, explorer_html, png_bytes, png_data_uris

N, SIDE = 3000, 28
CLASS_NAMES = [f"class-{c}" for c in range(10)]
# Measured 4.66 MB for these noisy synthetic images (worst case: noise does not compress; 1.27 MB of it is
# bokeh's JavaScript) and 4.05 MB for 3000 real Fashion-MNIST test images with reconstructions.
MAX_BYTES = 5_500_000
PNG_URI = "data:image/png;base64,"


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    """3000 class-structured 28x28 images, blurred 'reconstructions' and 2-D points clustered by class."""
    images, labels = synthetic_images(N, seed=3, size=SIDE)
    pixels = images.astype(np.float32) / 255.0
    blurred = (pixels + np.roll(pixels, 1, 1) + np.roll(pixels, 1, 2) + np.roll(pixels, (1, 1), (1, 2))) / 4
    rng = np.random.default_rng(0)
    centres = np.stack([labels % 4, labels // 4], axis=1) * 6.0
    points = centres + rng.normal(size=(N, 2))
    return {"points": points, "labels": labels.astype(int), "images": images, "reconstructions": blurred}


@pytest.fixture(scope="module")
def page_html(data: dict[str, Any]) -> str:
    return explorer_html(data["points"], data["labels"], CLASS_NAMES, data["images"], data["reconstructions"],
                         "Explorer of a test run")


@pytest.fixture(scope="module")
def page_file(page_html: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("explorer") / "explorer.html"
    path.write_text(page_html, encoding="utf-8")
    return path


class _Resources(HTMLParser):
    """Every URL-valued attribute and every <script>/<link> tag of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.scripts: list[dict[str, str | None]] = []
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href", "srcset", "data", "action", "poster"):
            if attributes.get(name):
                self.urls.append((tag, name, attributes[name] or ""))
        if tag == "script":
            self.scripts.append(attributes)
        if tag == "link":
            self.links.append(attributes)


def _bokeh_document(page: str) -> dict[str, Any]:
    """The bokeh document JSON embedded in the page (HTML-escaped inside a script tag)."""
    found = re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.S)
    assert len(found) == 1
    (doc,) = json.loads(html.unescape(found[0])).values()
    return doc


def _objects(node: Any, name: str) -> Iterator[dict[str, Any]]:
    """Every serialized bokeh object of type ``name`` under ``node``."""
    if isinstance(node, dict):
        if node.get("type") == "object" and node.get("name") == name:
            yield node
        for value in node.values():
            yield from _objects(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value, name)


def _column(value: Any) -> list[Any]:
    """A serialized column as a list: plain JSON lists, or bokeh's base64 (possibly gzipped) ndarrays."""
    if isinstance(value, dict) and value.get("type") == "ndarray":
        raw = base64.b64decode(value["array"]["data"])
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return np.frombuffer(raw, dtype=value["dtype"]).tolist()
    return list(value)


def _columns(source: dict[str, Any]) -> dict[str, list[Any]]:
    return {name: _column(value) for name, value in source["attributes"]["data"]["entries"]}


def test_the_page_is_self_contained_and_small(page_html: str) -> None:
    size = len(page_html.encode("utf-8"))
    assert size < MAX_BYTES, f"{size / 1e6:.2f} MB"
    resources = _Resources()
    resources.feed(page_html)
    assert resources.scripts, "bokeh's JavaScript is inlined"
    assert all("src" not in attributes for attributes in resources.scripts), resources.scripts
    assert resources.links == []
    assert [u for u in resources.urls if not u[2].startswith(("data:", "#"))] == []
    # Outside the script bodies (bokeh's inlined JavaScript holds a dormant MathJax CDN loader, used only for
    # TeX labels; the Chromium test below shows the page requests nothing), nothing points to the network.
    lowered = re.sub(r"<script([^>]*)>.*?</script>", r"<script\1></script>", page_html, flags=re.S).lower()
    for needle in ('src="http', "src='http", 'href="http', "href='http", "<script src=", "url(http", "url('http",
                   'url("http', "@import", "cdn.bokeh.org"):
        assert needle not in lowered, needle


def test_the_page_holds_every_class_and_one_png_per_image(page_html: str, data: dict[str, Any]) -> None:
    doc = _bokeh_document(page_html)
    sources = [_columns(s) for s in _objects(doc, "ColumnDataSource")]
    assert len(sources) == len(CLASS_NAMES)  # one renderer (and source) per class
    assert sorted({label for s in sources for label in s["label"]}) == CLASS_NAMES
    legend_labels = [item["attributes"]["label"]["value"] for item in _objects(doc, "LegendItem")]
    assert legend_labels == CLASS_NAMES
    assert next(_objects(doc, "Legend"))["attributes"]["click_policy"] == "hide"
    (hover,) = _objects(doc, "HoverTool")
    tooltip = hover["attributes"]["tooltips"]
    assert '<img src="@image"' in tooltip and '<img src="@reconstruction"' in tooltip and "@label" in tooltip
    indices = sorted(i for s in sources for i in s["index"])
    assert indices == list(range(N))
    for column in ("image", "reconstruction"):
        uris = [uri for s in sources for uri in s[column]]
        assert len(uris) == N and all(uri.startswith(PNG_URI) for uri in uris)
    first = sources[0]
    with Image.open(io.BytesIO(base64.b64decode(first["image"][0][len(PNG_URI):]))) as image:
        assert image.format == "PNG" and image.size == (SIDE, SIDE)
        # Same picture as the input, up to the 16 grey levels the thumbnails keep.
        original = data["images"][first["index"][0]].astype(int)
        assert np.abs(np.asarray(image, dtype=int) - original).max() <= 9
    assert "Explorer of a test run" in page_html


def test_thumbnails_are_exact_pngs_of_the_grey_levels_kept() -> None:
    images = np.random.default_rng(3).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    step = 255 / (THUMBNAIL_LEVELS - 1)
    for image, uri in zip(images, png_data_uris(images), strict=True):
        with Image.open(io.BytesIO(base64.b64decode(uri[len(PNG_URI):]))) as decoded:
            assert decoded.format == "PNG" and decoded.mode == "L" and decoded.size == (28, 28)
            kept = np.asarray(decoded)
        np.testing.assert_array_equal(kept, (np.round(image / step) * step).round().astype(np.uint8))
    odd = np.arange(7 * 3, dtype=np.uint8).reshape(7, 3)  # not square, any size
    with Image.open(io.BytesIO(png_bytes(odd))) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), odd)


def test_thumbnails_and_inputs() -> None:
    floats = np.linspace(0, 1, 2 * 4 * 4).reshape(2, 4, 4)
    assert png_data_uris(floats) == png_data_uris((floats * 255).round().astype(np.uint8))
    assert len(png_data_uris(floats[:, None])) == 2  # (N, 1, H, W) as the models produce
    page = explorer_html(np.zeros((2, 2)), np.array([0, 1]), ["a", "b"], floats, None, "no reconstructions")
    assert "@reconstruction" not in html.unescape(page)
    with pytest.raises(ValueError, match="labels"):
        explorer_html(np.zeros((2, 2)), np.array([0, 2]), ["a", "b"], floats, None, "bad labels")


# In the page (or the iframe) holding the plot: where point k of class renderer r is on the screen.
_POINT_JS = """([r, k]) => {
  const plot = Bokeh.documents[0].roots()[0];
  const view = Bokeh.index.get_one(plot);
  const data = plot.renderers[r].data_source.data;
  const rect = view.canvas_view.el.getBoundingClientRect();
  return {x: rect.left + view.frame.x_scale.compute(data.x[k]), y: rect.top + view.frame.y_scale.compute(data.y[k]),
          label: data.label[k]};
}"""
_VISIBLE_JS = "() => Bokeh.documents[0].roots()[0].renderers.map(r => r.visible)"
_READY_JS = ("() => window.Bokeh !== undefined && Bokeh.documents.length === 1 && Bokeh.documents[0].is_idle"
             " && Bokeh.index.find_one(Bokeh.documents[0].roots()[0]) !== null")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Debian Chromium for the module's browser tests."""
    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _hover_and_toggle(page: Any, frame: Any, offset: tuple[float, float] = (0.0, 0.0)) -> None:
    """Hover a point of class 3 in ``frame`` (at ``offset`` in ``page``): its tooltip shows the class and two
    images; clicking the legend entry of class 3 hides exactly that class."""
    frame.wait_for_function(_READY_JS, timeout=30_000)
    frame.locator("canvas").first.wait_for(timeout=30_000)
    assert frame.evaluate(_VISIBLE_JS) == [True] * len(CLASS_NAMES)
    point = frame.evaluate(_POINT_JS, [3, 0])
    assert point["label"] == "class-3"
    page.mouse.move(offset[0] + point["x"] - 3, offset[1] + point["y"] - 3)
    page.mouse.move(offset[0] + point["x"], offset[1] + point["y"])
    tooltip_image = frame.locator('img[alt="input"]').first
    tooltip_image.wait_for(state="visible", timeout=10_000)
    assert tooltip_image.get_attribute("src").startswith(PNG_URI)
    assert frame.locator('img[alt="reconstruction"]').first.is_visible()
    assert tooltip_image.evaluate("img => img.complete && img.naturalWidth") == SIDE  # the PNG decoded
    tooltip_text = tooltip_image.evaluate("img => img.parentElement.parentElement.parentElement.textContent")
    assert re.match(r"\s*class-3 #\d+\s+input\s+output\s*$", tooltip_text), tooltip_text
    frame.get_by_text("class-3", exact=True).click()  # the legend entry
    frame.wait_for_function("() => !Bokeh.documents[0].roots()[0].renderers[3].visible", timeout=10_000)
    assert frame.evaluate(_VISIBLE_JS) == [c != 3 for c in range(len(CLASS_NAMES))]


def test_the_page_works_offline_in_chromium(chromium: Any, page_file: Path, tmp_path: Path) -> None:
    context = chromium.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    requested: list[str] = []

    def _only_local(route: Any) -> None:
        requested.append(route.request.url)
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", _only_local)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_file.as_uri())
        assert page.title() == "Explorer of a test run"
        _hover_and_toggle(page, page.main_frame)
        page.screenshot(path=str(tmp_path / "explorer.png"))
        assert errors == []
        assert all(url.startswith(("file:", "data:", "blob:")) for url in requested), requested
    finally:
        context.close()


def test_the_page_works_in_the_mlflow_ui_artifact_viewer(chromium: Any, page_file: Path, server_uri: str,
                                                         tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server_uri)
    experiment_id = client.create_experiment("explorer_ui")
    run_id = client.create_run(experiment_id, run_name="explorer-run").info.run_id
    client.log_artifact(run_id, str(page_file))
    client.set_terminated(run_id)
    page = chromium.new_page(viewport={"width": 1600, "height": 1100})
    try:
        page.goto(f"{server_uri}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
        page.get_by_text("explorer.html", exact=True).first.click(timeout=60_000)
        iframe = page.locator("iframe.mlflow-html-iframe")
        iframe.wait_for(timeout=30_000)
        # MLflow 3 shows .html artifacts as a blob: URL in an iframe sandboxed to "allow-scripts": bokeh's
        # scripts run, but with an opaque origin (no cookies, storage or access to the UI).
        assert iframe.get_attribute("sandbox") == "allow-scripts"
        frame = iframe.element_handle().content_frame()
        assert frame is not None and frame.url.startswith("blob:")
        frame.wait_for_function(_READY_JS, timeout=30_000)
        box = iframe.bounding_box()
        assert box is not None
        _hover_and_toggle(page, frame, (box["x"], box["y"]))
        page.screenshot(path=str(tmp_path / "mlflow-explorer.png"))
    finally:
        page.close()
