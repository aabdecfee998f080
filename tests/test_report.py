"""The sweep report from a real seed sweep on a real server: runs grouped by setting with the mean and standard
deviation of real numbers, error bars and PCA baselines in the metrics plot, the reconstruction panel, and
report.html looked at in headless Chromium, offline and inside the MLflow UI's artifact viewer."""

from __future__ import annotations

import csv
import html.parser
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.container import ErrorbarContainer
from mlflow.tracking import MlflowClient
from mlflow_store import new_store

from aeexp import compare, report
from aeexp.evaluation import figures as plots
from aeexp.tracking import RunRecord

SEEDS = ("0", "1", "2")
SWEEP = ["-m", "seed=0,1,2", "model.bottleneck=2,8", "trainer.epochs=2", "trainer.progress=false", "embed=pca",
         "embed.n_samples=200", "tracking.experiment=seed_report"]


def _seed_sweep(server_uri: str, cwd: Path) -> dict[str, Any]:
    """A real multirun over seed=0,1,2 x bottleneck 2,8 on digits, logged to the session's MLflow server."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "aeexp", *SWEEP, f"tracking.uri={server_uri}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(server_uri)
    experiment = client.get_experiment_by_name("seed_report")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    (parent,) = [r for r in runs if "sweep.name" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"parent": parent, "children": children, "experiment_id": experiment.experiment_id,
            "report_dir": Path(parent.data.tags["sweep.dir"]) / "comparison"}


def _records(children: list[Any]) -> list[RunRecord]:
    return [RunRecord(c.info.run_id, c.info.run_name, c.info.status, dict(c.data.params), dict(c.data.metrics),
                      dict(c.data.tags), c.info.experiment_id) for c in children]


def _check_aggregation(seed_sweep: dict[str, Any], server_uri: str) -> None:
    children = seed_sweep["children"]
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    with (seed_sweep["report_dir"] / compare.SETTINGS_CSV).open() as handle:
        rows = {row["setting"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"bottleneck=2", "bottleneck=8"}  # (what the sweep varies but the seed, by its last part)
    for bottleneck in ("2", "8"):
        row = rows[f"bottleneck={bottleneck}"]
        mine = [c for c in children if c.data.params["model.bottleneck"] == bottleneck]
        assert sorted(c.data.params["seed"] for c in mine) == list(SEEDS)
        assert row["n"] == "3" and sorted(row["seeds"].split()) == list(SEEDS) and row["bottleneck"] == bottleneck
        for metric in ("test_mse", "test_knn_acc", "val_loss", "embed_knn_acc"):
            values = [c.data.metrics[metric] for c in mine]
            assert float(row[f"{metric}_mean"]) == pytest.approx(np.mean(values), abs=6e-5)
            assert float(row[f"{metric}_std"]) == pytest.approx(np.std(values, ddof=1), abs=6e-5)
        assert float(row["test_knn_acc_std"]) > 0  # the seeds really differ
        for measure in ("code_cka", "code_knn10_overlap"):  # the codes' stability over the 3 pairs of seeds
            assert 0.0 <= float(row[f"{measure}_mean"]) <= 1.0 and 0.0 < float(row[f"{measure}_std"]) <= 1.0
    markdown = (seed_sweep["report_dir"] / "comparison.md").read_text()
    assert f"| bottleneck=8 | 3 | 0 1 2 | digits | ae32 | 8 | {rows['bottleneck=8']['val_loss_mean']} ± " in markdown
    best = min(("2", "8"), key=lambda b: float(rows[f"bottleneck={b}"]["test_mse_mean"]))
    assert f"Best on test\\_mse (lower is better): bottleneck={best}, " in markdown  # the verdict, under the title
    with (seed_sweep["report_dir"] / "comparison.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 6  # the per-run rows stay
    logged = {Path(a.path).name for a in MlflowClient(server_uri).list_artifacts(seed_sweep["parent"].info.run_id,
                                                                                  "comparison")}
    assert {"comparison.csv", compare.SETTINGS_CSV, "comparison.md", "metrics_vs_bottleneck.png",
            "reconstruction_panel.png", "pca_panel.png", "report.html"} <= logged


def _check_metrics_plot(seed_sweep: dict[str, Any]) -> None:
    groups = report.settings(_records(seed_sweep["children"]))
    shown = report.shown(_records(seed_sweep["children"]))
    assert {"test_mse", "test_knn_acc", "test_probe_acc"} <= set(shown.plotted) and shown.views == ["pca"]
    curves = report.curves(groups, shown.plotted, shown.baselines)
    figure = plots.metrics_vs_bottleneck(curves, shown.plotted)
    axes = {ax.get_title(): ax for ax in figure.axes}
    for metric in ("test_mse", "test_knn_acc"):
        ax = axes[metric]
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        x, means = bars.lines[0].get_data()
        expected = {int(g.param("model.bottleneck")): g.summary(metric) for g in groups}
        assert list(x) == [2, 8]
        assert list(means) == pytest.approx([expected[2][0], expected[8][0]])
        segments = bars.lines[2][0].get_segments()  # one vertical bar per point: mean - std .. mean + std
        assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([2 * expected[2][1], 2 * expected[8][1]])
        (dashed,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        pca = {int(g.param("model.bottleneck")): g.summary(shown.baselines[metric])[0] for g in groups}
        assert list(dashed.get_ydata()) == pytest.approx([pca[2], pca[8]])
        assert dashed.get_marker() == "x"  # (a cross at each size: PCA at one size shows too)
        assert to_rgba(dashed.get_color()) != to_rgba(bars.lines[0].get_color())
    plots.plt.close(figure)
    assert (seed_sweep["report_dir"] / "metrics_vs_bottleneck.png").read_bytes()[:4] == b"\x89PNG"


def _check_reconstruction_panel(seed_sweep: dict[str, Any], server_uri: str) -> None:
    from aeexp import tracking

    tracking.use_uri(server_uri)
    figure = report.reconstruction_panel(_records(seed_sweep["children"]), tracking.download_artifact)
    (ax,) = figure.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "input"
    assert sorted(labels[1:]) == sorted(f"seed={s} bottleneck={b}" for s in SEEDS for b in ("2", "8"))
    assert len(ax.get_xticklabels()) == 0 and ax.images[0].get_array().shape[0] == 7 * 9 - 1  # 7 rows of 8x8
    plots.plt.close(figure)


_IMAGES_JS = "() => Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0, i.src.slice(0, 22)])"


def _check_page(frame: Any, children: list[Any]) -> None:
    """The page's tables and inlined figures, as the browser shows them."""
    frame.get_by_text("By setting: mean ± standard deviation over seeds").wait_for(timeout=30_000)
    images = frame.evaluate(_IMAGES_JS)
    assert [i[0] for i in images] == ["metrics_vs_bottleneck.png", "reconstruction_panel.png", "pca_panel.png"]
    assert all(ok and src == "data:image/png;base64," for _, ok, src in images), images
    tables = frame.locator("table")
    assert tables.count() == 2
    assert tables.nth(0).locator("tbody tr").count() == 2 and tables.nth(1).locator("tbody tr").count() == 6
    text = frame.inner_text("body")
    assert "Best on test_mse (lower is better): bottleneck=" in text  # the verdict
    for child in children:
        assert child.info.run_name in text


def _check_offline(seed_sweep: dict[str, Any], chromium: Any, server_uri: str) -> None:
    page_file = seed_sweep["report_dir"] / "report.html"
    context = chromium.new_context(offline=True)
    requested: list[str] = []

    def only_local(route: Any) -> None:
        requested.append(route.request.url)
        (route.continue_ if route.request.url.startswith(("file:", "data:")) else route.abort)()

    context.route("**/*", only_local)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(page_file.as_uri())
        assert page.title() == seed_sweep["parent"].info.run_name
        _check_page(page.main_frame, seed_sweep["children"])
        assert errors == [] and all(u.startswith(("file:", "data:")) for u in requested), requested
        links = page.locator("a").evaluate_all("links => links.map(a => [a.textContent, a.href, a.target])")
    finally:
        context.close()
    expected = {c.info.run_name: f"{server_uri}/#/experiments/{seed_sweep['experiment_id']}/runs/{c.info.run_id}"
                                 "?workflowType=machine_learning" for c in seed_sweep["children"]}
    assert {name: href for name, href, _ in links} == expected and {t for *_, t in links} == {"_blank"}
    page = chromium.new_page()  # a link leads to the run in the MLflow UI
    try:
        name, href, _ = links[0]
        page.goto(href)
        page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
    finally:
        page.close()


def _check_in_artifact_viewer(seed_sweep: dict[str, Any], chromium: Any, server_uri: str, tmp_path: Path) -> None:
    parent = seed_sweep["parent"].info.run_id
    page = chromium.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(f"{server_uri}/#/experiments/{seed_sweep['experiment_id']}/runs/{parent}/artifacts")
        page.get_by_text("comparison", exact=True).first.click(timeout=60_000)
        page.get_by_text("report.html", exact=True).first.click(timeout=30_000)
        iframe = page.locator("iframe.mlflow-html-iframe")
        iframe.wait_for(timeout=30_000)
        frame = iframe.element_handle().content_frame()
        assert frame is not None
        _check_page(frame, seed_sweep["children"])
        page.screenshot(path=str(tmp_path / "report-in-mlflow.png"))
    finally:
        page.close()


def test_a_seed_sweep_report(server_uri: str, tmp_path: Path) -> None:
    """One sweep for every check (tests of a module may land on different workers, each with its own server)."""
    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    seed_sweep = _seed_sweep(server_uri, tmp_path)
    _check_aggregation(seed_sweep, server_uri)
    _check_metrics_plot(seed_sweep)
    _check_reconstruction_panel(seed_sweep, server_uri)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            _check_offline(seed_sweep, chromium, server_uri)
            _check_in_artifact_viewer(seed_sweep, chromium, server_uri, tmp_path)
        finally:
            chromium.close()


PARENT = "sweep <script>alert('parent')</script> & co"
METRICS = ("val_loss", "test_loss", "test_mse")  # what the marked-up runs log
# (run name, job overrides, status, error): markup and ampersands in every field the page shows; no spaces inside an
# override (the job's overrides are split on them).
MARKED_UP = [("<img src=x onerror=alert(1)>", "model.bottleneck=2 +model.note=<img/src=x/onerror=alert(2)>",
              "FINISHED", None),
             ("a & b <script>alert(3)</script>", "model.bottleneck=8 +model.note=<b>bold</b>&amp;", "FINISHED", None),
             ("<iframe src=javascript:alert(4)>", "model.bottleneck=8 +model.note=<b>bold</b>&amp;", "FAILED",
              "RuntimeError: <script>alert(5)</script> & more")]


class _Elements(html.parser.HTMLParser):
    """Every element of a page (tag and attributes), every run of text between tags, and the tag each text is in."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.text_parents: set[str] = set()
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in ("img", "meta"):  # void elements: no end tag
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, (tag, self.open)

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if data.strip():
            self.text_parents.add(self.open[-1] if self.open else "")


def _marked_up_sweep(uri: str) -> str:
    """A sweep's parent run and its children in a real sqlite store, as the MLflow client records them; the parent's
    id."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("markup")
    parent = client.create_run(experiment, run_name=PARENT, tags={"sweep.name": "markup"}).info.run_id
    for i, (name, overrides, status, error) in enumerate(MARKED_UP):
        tags = {"mlflow.parentRunId": parent, "sweep.job_overrides": overrides, **({"error": error} if error else {})}
        run = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        for key, value in (("dataset.name", "digits"), ("model.name", "ae32"), ("seed", "0"),
                           ("model.bottleneck", overrides.split()[0].split("=")[1])):
            client.log_param(run, key, value)
        for metric in METRICS:
            client.log_metric(run, metric, 0.5 + i / 10)
        client.set_terminated(run, status)
    client.set_terminated(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def marked_up_report(store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`aeexp compare --parent-run` on the marked-up sweep; the folder of its report (made once for the tests that
    read it)."""
    import mlflow

    folder = tmp_path_factory.mktemp("marked-up")
    uri = new_store(folder / "mlflow.db", store_template)
    parent = _marked_up_sweep(uri)
    try:
        assert compare.main(["--parent-run", parent, "--tracking-uri", uri, "--out", str(folder / "out")]) == 0
    finally:
        mlflow.set_tracking_uri(None)
    return folder / "out"


def test_report_html_shows_markup_in_run_names_overrides_and_errors_as_text(marked_up_report):
    """`aeexp compare --parent-run` on a sweep whose parent name, run names, overrides and error hold <script>,
    <img onerror=...>, <iframe> and &: report.html shows each as the text it is, and holds no element but its own."""
    out = marked_up_report
    page = _Elements()  # (<wbr>: where the page lets a long column name break; a name's own is escaped)
    page.feed((out / "report.html").read_text(encoding="utf-8").replace("<wbr>", ""))
    tags = {tag for tag, _ in page.elements}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "thead", "tbody", "tr",
                    "th", "td", "a", "img"}, tags
    for tag, attributes in page.elements:
        assert not [name for name in attributes if name.startswith("on")], (tag, attributes)
        if tag == "img":
            assert attributes["src"].startswith("data:image/png;base64,"), attributes
        if tag == "a":
            assert attributes["href"].startswith(report.DEFAULT_UI + "/#/experiments/"), attributes
    texts = [text.strip() for text in page.texts]
    assert texts.count(PARENT) == 2  # the page's title and heading: the name as it is (it says "sweep " already)
    columns = compare.columns(METRICS)  # the runs' table: its header cells, in order, and nothing between them
    assert [i for i in range(len(texts)) if texts[i:i + len(columns)] == columns], texts
    assert page.text_parents <= {"title", "style", "h1", "h2", "p", "th", "td", "a"}  # no stray text in a table
    rows = [attributes.get("class") for tag, attributes in page.elements if tag == "tr"]  # a head's has none
    assert rows.count("FAILED") == 1 and rows.count("FINISHED") == 2 and set(rows) == {None, "", "FINISHED", "FAILED"}
    links = [attributes["href"] for tag, attributes in page.elements if tag == "a"]
    assert len(set(links)) == len(links) == len(MARKED_UP)  # each run's name, and nothing else, opens it
    setting_columns, _ = report.shown_rows([], METRICS)
    assert len([tag for tag, _ in page.elements if tag == "th"]) == len(columns) + len(setting_columns)
    for name, overrides, _, error in MARKED_UP:
        assert name in texts, name
        assert overrides.split()[1] in " ".join(texts), overrides
        assert error is None or error in texts, error


def test_comparison_md_shows_markup_in_run_names_overrides_and_errors_as_text(marked_up_report):
    """comparison.md of the same sweep, rendered as GitHub and MLflow render Markdown (raw HTML passed through):
    no element but the tables' and headings', each name, override and error shown as the text it is (#25)."""
    from markdown_it import MarkdownIt

    out = marked_up_report
    rendered = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(
        (out / "comparison.md").read_text(encoding="utf-8"))
    page = _Elements()
    page.feed(rendered)
    assert {tag for tag, _ in page.elements} <= {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td"}, rendered
    assert all(attributes in ({}, {"style": "text-align:left"}) for _, attributes in page.elements), rendered
    texts = [text.strip() for text in page.texts]
    assert PARENT in texts
    for name, overrides, _, error in MARKED_UP:
        assert name in texts, name
        assert overrides.split()[1].removeprefix("+model.") in " ".join(texts), overrides
        assert error is None or error in texts, error


def test_the_latent_health_comes_after_the_metrics_a_run_is_judged_by_and_is_not_plotted():
    """The report's columns: the losses, each metric of the metric list beside PCA's, the 2-D view's, then the test
    codes' latent health by name: aeexp's own (test_latent_*, test_codebook_*, also in a run measured without them
    each epoch) and a health component of one's own (test_<name> with <name> measured each epoch too)."""
    metrics = {"val_loss": 0.1, "test_loss": 0.1, "test_mse": 0.02, "pca_test_mse": 0.03, "test_knn_acc": 0.9,
               "pca_knn_acc": 0.8, "test_zeta": 0.5, "embed_knn_acc": 0.7, "embed_trust": 0.9,
               "test_latent_active_units": 8.0, "latent_active_units": 8.0, "test_smoothness": 1.0, "smoothness": 1.0}
    older = {"test_mse": 0.02, "test_codebook_used": 3.0}  # (its health measured by aeexp evaluate only)
    shown = report.shown([RunRecord(name, name, "FINISHED", {}, logged, {})
                          for name, logged in (("a", metrics), ("b", older))])
    assert shown.columns == ["val_loss", "test_loss", "test_mse", "pca_test_mse", "test_knn_acc", "pca_knn_acc",
                             "test_zeta", "embed_knn_acc", "embed_trust", "test_codebook_used",
                             "test_latent_active_units", "test_smoothness"]
    assert shown.plotted == ["test_loss", "test_mse", "test_knn_acc", "test_zeta", "embed_knn_acc"]
