"""`aeexp compare --experiment` over separate runs of mixed settings (a plain run resumed to a longer training, a
plain run of another seed, a sweep's two jobs, an SGD run), from real CLI runs in a real sqlite store: runs grouped
and labelled by the settings that tell them apart (a resumed run by those it finished with), the report written to
the store's artifacts and said where, and report.html looked at in headless Chromium at 1600 px: no wider than the
window, every image at its own size, every legend entry and row label inside its figure (#26 item 3)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FAST
from matplotlib.colors import to_rgba
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text
from mlflow.tracking import MlflowClient

from aeexp import compare, report, tracking
from aeexp.evaluation import figures
from aeexp.tracking import RunRecord

COMMON = [*FAST, "trainer.epochs=2", "embed=pca"]
WIDTH = 1600  # the browser window's width, px
# The settings of the five runs, each as the words of its label (the resumed run and the seed-1 run are one setting)
SETTINGS = {frozenset({"noise=none", "bottleneck=4", "optimizer=AdamW"}): ("0 1", 2),
            frozenset({"noise=masking", "bottleneck=2", "optimizer=AdamW"}): ("0", 1),
            frozenset({"noise=masking", "bottleneck=8", "optimizer=AdamW"}): ("0", 1),
            frozenset({"noise=none", "bottleneck=4", "optimizer=SGD"}): ("0", 1)}


@dataclass
class Store:
    folder: Path
    uri: str
    runs: list[RunRecord]
    parent_run_id: str


def _aeexp(folder: Path, *args: str) -> str:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run([sys.executable, "-m", "aeexp", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Store:
    folder = tmp_path_factory.mktemp("mixed")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    (folder / "mlflow.db").write_bytes(store_template.read_bytes())
    short = _aeexp(folder, *COMMON, "trainer.epochs=1", f"tracking.uri={uri}")
    (resumed,) = re.findall(r"run (\w{32}) in experiment", short)
    _aeexp(folder, f"resume={resumed}", "trainer.epochs=2", "trainer.progress=false", f"tracking.uri={uri}")
    _aeexp(folder, *COMMON, "seed=1", f"tracking.uri={uri}")
    _aeexp(folder, "-m", *COMMON, "model.noise=masking", "model.bottleneck=2,8", f"tracking.uri={uri}")
    _aeexp(folder, *COMMON, "optimizer=sgd", f"tracking.uri={uri}")
    tracking.use_uri(uri)
    runs = tracking.experiment_runs("digits")
    (parent,) = [run for run in runs if "sweep.name" in run.tags]
    assert MlflowClient(uri).get_run(resumed).data.params["trainer.epochs"] == "1"  # as MLflow keeps it
    return Store(folder, uri, [run for run in runs if run is not parent], parent.run_id)


def _compare(store: Store, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "aeexp", "compare", "--tracking-uri", store.uri, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def written(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`aeexp compare --experiment digits`, no --out: the folder it says it wrote to."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    done = _compare(store, cwd, "--experiment", "digits")
    assert done.returncode == 0, done.stderr[-3000:]
    where = re.search(r"wrote \d+ files to (\S+): open (\S+)\n", done.stderr)
    assert where, done.stderr[-2000:]
    assert list(cwd.iterdir()) == []  # nothing in the working directory
    folder = Path(where.group(1))
    artifacts = Path(MlflowClient(store.uri).get_experiment_by_name("digits").artifact_location)
    assert folder == artifacts / "comparison" and Path(where.group(2)) == folder / "report.html"
    return folder


def test_runs_are_grouped_and_labelled_by_the_settings_that_differ(store, written):
    with (written / compare.SETTINGS_CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    found = {frozenset(row["setting"].split()): (row["seeds"], int(row["n"])) for row in rows}
    assert found == SETTINGS  # the resumed run with the seed-1 run: both trained 2 epochs
    with (written / "comparison.csv").open() as handle:
        labels = [row["overrides"] for row in csv.DictReader(handle)]
    assert len(labels) == 5 and all(len(label) < 60 for label in labels), labels
    assert not [label for label in labels if re.search(r"_target_|betas|fused|lr=", label)], labels


def _expected_verdict(store: Store) -> str:
    groups = report.settings(store.runs)
    best = min(groups, key=lambda group: group.summary("test_mse")[0])
    return f"Best on test_mse (lower is better): {best.label}, "


def _drawn_boxes(figure: figures.Figure, dpi: int) -> list[tuple[str, Any]]:
    """The box of everything each axes draws (its tick labels, title, axis labels) and of each legend and each of
    its entries, in pixels of the figure saved at ``dpi``."""
    figure.set_dpi(dpi)
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    boxes = [(f"axes {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in figure.axes if ax.axison]
    for legend in figure.legends:
        boxes += [("legend", legend.get_window_extent(renderer))]
        boxes += [(text.get_text(), text.get_window_extent(renderer)) for text in legend.get_texts()]
    return [(name, box) for name, box in boxes if box is not None]


def _page(written: Path) -> tuple[int, dict[str, dict[str, float]], str]:
    """report.html in a 1600 px window: the page's width, each image's box and natural size, and its text."""
    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.goto((written / "report.html").as_uri())
            width = page.evaluate("() => document.documentElement.scrollWidth")
            boxes = page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll('img, table'))
                .map((e, i) => [e.alt || 'table' + i, {left: e.getBoundingClientRect().left + e.clientLeft
                 + window.scrollX, right: e.getBoundingClientRect().right + window.scrollX, width: e.clientWidth,
                 natural: e.naturalWidth || 0, naturalHeight: e.naturalHeight || 0}]))""")
            return width, boxes, page.inner_text("body")
        finally:
            browser.close()


def _check_labels_inside(name: str, figure: figures.Figure, dpi: int, image: dict[str, float],
                         wanted: Sequence[set[str]], labels: Sequence[Text]) -> None:
    """Everything ``figure`` (as saved to ``name`` at ``dpi``) draws inside it, so inside its image on the page and
    the window; ``labels`` (its legend's entries or its rows' labels) are the ``wanted`` ones, whole."""
    boxes = _drawn_boxes(figure, dpi)
    renderer = figure.canvas.get_renderer()
    boxes += [(label.get_text(), label.get_window_extent(renderer)) for label in labels]
    width, height = figure.canvas.get_width_height()
    assert (width, height) == (image["natural"], image["naturalHeight"]), name  # the PNG is this figure
    for text, box in boxes:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, (name, text, box)
        assert image["left"] + box.x1 * image["width"] / width <= WIDTH, (name, text)
    assert sorted(sorted(label.get_text().split()) for label in labels) == sorted(sorted(words) for words in wanted)
    figures.plt.close(figure)


def test_the_report_fits_a_1600_px_window_with_every_label_whole(store, written):
    width, boxes, text = _page(written)
    assert width <= WIDTH, width  # (a wide table scrolls inside itself)
    for name, box in boxes.items():
        assert box["right"] <= WIDTH, (name, box)
        if box["natural"]:
            assert box["width"] == box["natural"], (name, box)  # shown at its own size: its text as drawn
    assert _expected_verdict(store) in text
    tracking.use_uri(store.uri)
    figure = compare.bottleneck_figure(store.runs)
    lines = {frozenset({"ae32", "on", "digits", *words} - {f"bottleneck={b}" for b in (2, 4, 8)}) for words in SETTINGS}
    _check_labels_inside("metrics_vs_bottleneck.png", figure, compare.PLOT_DPI, boxes["metrics_vs_bottleneck.png"],
                         [*lines, {"PCA", "on", "digits"}], figure.legends[0].get_texts())
    panel = report.reconstruction_panel(store.runs, tracking.download_artifact)
    rows = [{"input"}, *[words | {f"seed={seed}"} for words, (seeds, _) in SETTINGS.items() for seed in seeds.split()]]
    _check_labels_inside("reconstruction_panel.png", panel, compare.RECONSTRUCTION_DPI,
                         boxes["reconstruction_panel.png"], rows, panel.axes[0].get_yticklabels())


def test_each_setting_has_its_own_colour_and_marker_and_a_single_size_pca_shows(store):
    tracking.use_uri(store.uri)
    figure = compare.bottleneck_figure(store.runs)
    ax = next(ax for ax in figure.axes if ax.get_title() == "test_mse")
    lines = [container.lines[0] for container in ax.containers if isinstance(container, ErrorbarContainer)]
    styles = {(to_rgba(line.get_color()), line.get_marker()) for line in lines}
    assert len(lines) == 3 and len(styles) == 3 and len({colour for colour, _ in styles}) == 3
    (pca,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert pca.get_marker() == "x" and sorted(pca.get_xdata()) == [2, 4, 8]
    figures.plt.close(figure)
    one_size = [run for run in store.runs if run.params.get("model.bottleneck") == "4"]
    figure = compare.bottleneck_figure(one_size)  # PCA at a single size: its cross shows
    ax = next(ax for ax in figure.axes if ax.get_title() == "test_mse")
    (pca,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(pca.get_xdata()) == [4] and pca.get_marker() == "x" and pca.get_markersize() > 0
    figures.plt.close(figure)


def test_compare_of_a_sweep_logs_to_its_parent_run_and_writes_nowhere_else(store, tmp_path):
    done = _compare(store, tmp_path / "cwd", "--parent-run", store.parent_run_id)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "cwd").iterdir()) == []
    assert f"logged the report to parent run {store.parent_run_id} under comparison/" in done.stderr
    logged = {Path(a.path).name for a in MlflowClient(store.uri).list_artifacts(store.parent_run_id, "comparison")}
    assert {"report.html", "comparison.md", compare.SETTINGS_CSV} <= logged


def test_compare_help_is_whole(tmp_path):
    done = subprocess.run([sys.executable, "-m", "aeexp", "compare", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for words in ("--out OUT the folder to write the report to", "comparison.md", "one-line verdict",
                  "The last line says where.", "aeexp compare --experiment digits"):
        assert words in text, words
    paragraphs = [" ".join(p.split()) for p in done.stdout.split("\n\n") if p.strip()]
    assert all(p.endswith((".", ")", ":")) or p.startswith(("usage:", "examples:")) for p in paragraphs), paragraphs


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}, one run"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} over {len(values)} seeds"


def test_the_verdict_names_the_best_setting_and_its_margins(store, written):
    """The verdict atop comparison.md, from the runs' own test_mse: the best setting (mean over its seeds, their
    spread), its margin over the next and over its PCA baseline (#26 item 8)."""
    groups = report.settings(store.runs)
    values = [([r.metrics["test_mse"] for r in g.runs], g) for g in groups]
    ranked = sorted(values, key=lambda pair: float(np.mean(pair[0])))
    (best, group), (second, runner_up) = ranked[0], ranked[1]
    gap, pca = float(np.mean(second) - np.mean(best)), group.runs[0].metrics["pca_test_mse"]
    verdict = (written / "comparison.md").read_text(encoding="utf-8").split("\n\n")[1].replace("\\", "")
    assert verdict.startswith(f"Best on test_mse (lower is better): {group.label}, {_spread(best)}; {gap:.4f} ("), \
        verdict
    assert f"below the next ({runner_up.label}: {_spread(second)}); " in verdict
    assert verdict.endswith(f"{'above' if np.mean(best) > pca else 'below'} PCA of the same size ({pca:.4f}).")
