"""Colour end to end, in process: every model family on 3x32x32 images (the CPU fast path on colour is in
test_speed_paths), the figures and the explorer's thumbnails in colour (read back from the PNGs they are), the PCA
baseline over all channels, and the figures and explorer of unlabelled images."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pytest
import torch
from image_sets import colour_images, shows_colour
from PIL import Image

from aeexp import data, encode, models
from aeexp.evaluation import baseline, guard, lists, metrics
from aeexp.evaluation import figures as plots
from aeexp.explorer import explorer_html, png_data_uris
from aeexp.models import inference
from aeexp.training import loop, optim

CPU = torch.device("cpu")
COLOUR = (3, 32, 32)


def colour_split(n: int, seed: int) -> data.Split:
    images, labels = colour_images(n, seed, 32)
    return data.Split(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels).long())


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=60)
    plots.plt.close(figure)
    return buffer.getvalue()


FAMILIES = [("ae32", []), ("conv", []), ("vae", []), ("vae", ["model.kind=conv"]), ("vqvae", []),
            ("vqvae", ["model.kind=conv"]), ("sparse", [])]


@pytest.mark.parametrize(("preset", "overrides"), FAMILIES, ids=[" ".join([p, *o]) for p, o in FAMILIES])
def test_every_model_family_trains_on_colour_images(make_config, preset, overrides):
    cfg = make_config("dataset=cifar10", f"model={preset}", *overrides)  # the presets as shipped (no digits code)
    torch.manual_seed(0)
    model = models.build(cfg.model, COLOUR)
    train, val = colour_split(192, 0), colour_split(64, 1)
    before = inference.reconstruction_mse(model, val.images)
    optimizer = torch.optim.Adam(optim.parameter_groups(model), lr=3e-3)
    history = loop.fit(model, train, val, epochs=3, batch_size=64, optimizer=optimizer, seed=0,
                       step=loop.make_step(model, optimizer, CPU), progress=False)
    assert np.isfinite(history.train_loss + history.val_loss).all()
    assert inference.reconstruction_mse(model, val.images) < 0.7 * before  # it learnt to reconstruct colour images
    x = inference.to_float(val.images[:5])
    assert model(x).shape == (5, *COLOUR) and model.encode(x).shape == (5, model.bottleneck)
    if hasattr(model, "sample"):
        assert model.sample(4, torch.Generator().manual_seed(0)).shape == (4, *COLOUR)


def test_image_figures_are_in_colour_for_colour_images_and_grey_for_grey_ones():
    colour = colour_images(6, 0, 16)[0].transpose(0, 3, 1, 2) / 255.0
    grey = colour.mean(axis=1, keepdims=True)
    for images, is_colour in ((colour, True), (grey, False)):
        grid = plots.reconstruction_grid(images, images * 0.8, [f"#{i}" for i in range(6)])
        mosaic = grid.axes[0].get_images()[0].get_array()
        assert mosaic.shape == ((2 * 16 + 1, 6 * 16 + 5, 3) if is_colour else (2 * 16 + 1, 6 * 16 + 5))
        if is_colour:
            np.testing.assert_allclose(mosaic[:16, 17:33], colour[1].transpose(1, 2, 0))  # input 1, as RGB
        assert shows_colour(figure_png(grid)) is is_colour
        rows = plots.image_grid(np.stack([images, images]), "interpolations", ["a", "b"])
        assert shows_colour(figure_png(rows)) is is_colour


def test_explorer_thumbnails_are_colour_pngs_of_colour_images():
    images = colour_images(20, 0, 8)[0].transpose(0, 3, 1, 2)
    for image, uri in zip(images, png_data_uris(images, levels=256), strict=True):
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as decoded:
            assert decoded.mode == "RGB" and decoded.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(decoded), image.transpose(1, 2, 0))
    page = explorer_html(np.random.default_rng(0).random((20, 2)), np.arange(20) % 2, ["a", "b"], images,
                         images / 255.0, "colour")
    pngs = [base64.b64decode(t) for t in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html.unescape(page))]
    thumbnails = [png for png in pngs if Image.open(io.BytesIO(png)).size == (8, 8)]  # not bokeh's own logo
    assert len(thumbnails) == 40 and all(shows_colour(png) for png in thumbnails)


def test_figures_and_the_explorer_of_unlabelled_images():
    points = np.random.default_rng(0).random((30, 2))
    scatter = plots.embedding_scatter(points, None, [], "no classes")
    assert scatter.axes[0].get_legend() is None and len(scatter.axes[0].collections) == 1
    plots.plt.close(scatter)
    images = colour_images(30, 0, 8)[0].transpose(0, 3, 1, 2)
    page = html.unescape(explorer_html(points, None, [], images, None, "unlabelled"))
    assert "click to hide" not in page and "hide a class" not in page
    assert page.count("data:image/png;base64,") == 30 + 1  # and bokeh's logo


def test_the_pca_baseline_uses_every_channel():
    from sklearn.decomposition import PCA

    images, labels = colour_images(300, 0, 12)  # 432 values an image: a quick eigendecomposition
    split = data.Split(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels))
    images = split.images.numpy()
    flat = images.reshape(300, -1) / 255.0
    reference = PCA(n_components=6).fit(flat[:240])
    expected_mse = np.mean((reference.inverse_transform(reference.transform(flat[240:])) - flat[240:]) ** 2)
    shipped = lists.shipped().metrics
    got = baseline.pca_metrics(split.images[:240], labels[:240], split.images[240:], labels[240:], 6, shipped,
                               guard.Skips())
    assert got["pca_test_mse"] == pytest.approx(expected_mse, rel=1e-5)
    expected_knn = metrics.knn_accuracy(reference.transform(flat[:240]), labels[:240],
                                        reference.transform(flat[240:]), labels[240:])
    assert got["pca_knn_acc"] == pytest.approx(expected_knn, abs=0.02)
    unlabelled = baseline.pca_metrics(split.images[:240], None, split.images[240:], None, 6, shipped, guard.Skips())
    assert unlabelled == {"pca_test_mse": got["pca_test_mse"]}  # no labels, no kNN accuracy


def test_encode_makes_png_colour_grey_as_pillow_does_and_grey_colour(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    pillow = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in rgb])
    np.testing.assert_array_equal(encode.png_channels(rgb, 1), pillow)
    grey = rgb[..., 0]
    as_colour = encode.png_channels(grey, 3)
    assert as_colour.shape == (5, 7, 9, 3) and (as_colour == grey[..., None]).all()
    assert encode.png_channels(rgb, 3) is rgb and encode.png_channels(grey, 1) is grey
    # A folder of grey and colour PNGs is read as colour, the grey ones' channels equal.
    Image.fromarray(rgb[0]).save(tmp_path / "a.png")
    Image.fromarray(grey[1]).save(tmp_path / "b.png")
    images = encode.read_images(tmp_path)
    assert images.array.shape == (2, 7, 9, 3) and images.files == ["a.png", "b.png"]
    np.testing.assert_array_equal(images.array[1], np.repeat(grey[1][..., None], 3, axis=2))
    assert encode.fit_to_model(images.array, (3, 7, 9)).shape == (2, 3, 7, 9)
    assert encode.fit_to_model(rgb[0], (3, 7, 9)).shape == (1, 3, 7, 9)  # one (H, W, 3) image
