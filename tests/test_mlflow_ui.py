"""What a researcher sees in the MLflow UI (a real `mlflow server`, headless Chromium, a fresh browser each time):
aeexp's experiments open in the model-training view, not MLflow 3's GenAI overview."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM_ARGS, chromium_path, expand_sweep
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server
from mlflow_store import runs_in

from aeexp import mlflow_ui

GENAI_ONLY = ("Judges", "Playground", "Token Usage")  # in the GenAI view's sidebar and overview, never in the other
MODEL_TRAINING_ONLY = "Model registry"  # in the model-training view's sidebar


@dataclass
class Sweep:
    """A finished two-job sweep in an sqlite store, as a server serves it (``folder/server.db``)."""

    folder: Path
    experiment_id: str
    parent: Any
    children: list[Any]
    printed_link: str  # the link the sweep's closing lines give


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Sweep:
    folder = tmp_path_factory.mktemp("ui-store")
    shutil.copyfile(store_template, folder / "server.db")
    uri = f"sqlite:///{folder / 'server.db'}"
    done = subprocess.run([sys.executable, "-m", "aeexp", "-m", "model.bottleneck=2,8", *FAST, "embed=pca",
                           f"tracking.uri={uri}"], cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    link = re.search(r"the sweep in the MLflow UI: (\S+)", done.stdout + done.stderr)
    assert link, (done.stdout + done.stderr)[-3000:]
    runs = runs_in(uri, "digits")
    parent = next(run for run in runs if "sweep.name" in run.data.tags)
    children = sorted((run for run in runs if run is not parent), key=lambda run: run.info.run_name)
    return Sweep(folder, parent.info.experiment_id, parent, children, link.group(1))


@pytest.fixture
def new_page() -> Iterator[Any]:
    """A page of a browser that has never opened the MLflow UI (no stored choice of view)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1500, "height": 900})
        finally:
            browser.close()


def _in_model_training(page: Any) -> str:
    """The page's text, after checking it is in the model-training view."""
    page.get_by_text(MODEL_TRAINING_ONLY, exact=True).first.wait_for(timeout=60_000)
    text = page.inner_text("body")
    assert not [word for word in GENAI_ONLY if word in text], text[:2000]
    return text


def _metric_rows_seen(page: Any, names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` the compare view's metrics table shows as it is scrolled from top to bottom, half a box
    at a time (a virtualized table: only the rows in view are on the page)."""
    box = page.locator(".ReactVirtualized__Grid").first
    seen: set[str] = set()
    top = 0
    while True:
        box.evaluate("(box, top) => { box.scrollTop = top; }", top)
        page.wait_for_timeout(300)
        seen |= {name for name in names if box.get_by_text(name, exact=True).count()}
        height, shown = box.evaluate("box => [box.scrollHeight, box.clientHeight]")
        if top + shown >= height or shown == 0:
            return seen
        top += max(shown // 2, 1)


def test_the_experiment_is_tagged_as_model_training(sweep):
    tags = MlflowClient(f"sqlite:///{sweep.folder / 'server.db'}").get_experiment(sweep.experiment_id).tags
    assert tags[mlflow_ui.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(tags[mlflow_ui.VIEW_TAG])
    assert view["columnOrder"][:3] == ["metrics.`val_loss`", "metrics.`test_mse`", "metrics.`pca_test_mse`"]


def test_the_link_aeexp_prints_opens_the_runs_table_with_the_headline_metrics(sweep, new_page):
    """Plain `mlflow server`: the link from the sweep's closing lines (its address made the test server's)."""
    with mlflow_server(sweep.folder) as server:
        new_page.goto(sweep.printed_link.replace(mlflow_ui.DEFAULT_UI, server))
        expand_sweep(new_page, sweep.parent.info.run_name, [child.info.run_name for child in sweep.children])
        text = _in_model_training(new_page)
    headers = text[text.index("Run Name"):]
    assert all(f"\n{name}\n" in headers for name in mlflow_ui.HEADLINE_METRICS[:5]), headers[:600]
    assert f"{sweep.children[0].data.metrics['test_mse']:.4f}"[:5] in text


def test_with_the_aeexp_app_every_page_opens_in_model_training(sweep, new_page):
    """`mlflow server --app-name aeexp` (as `mlflow ui --app-name aeexp`): a browser's first open of the experiment
    shows its runs table, not the GenAI overview; so do the compare view of the sweep's jobs, with the headline
    metrics, the parent's page and a job's page, which starts with the run's summary."""
    ids = [child.info.run_id for child in sweep.children]
    with mlflow_server(sweep.folder, options=["--app-name", "aeexp"]) as server:
        new_page.goto(f"{server}/#/experiments/{sweep.experiment_id}")
        new_page.get_by_text(sweep.parent.info.run_name, exact=True).first.wait_for(timeout=60_000)
        assert "Run Name" in _in_model_training(new_page)
        new_page.goto(f"{server}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([sweep.experiment_id])}")
        new_page.get_by_text("Comparing 2 Runs", exact=False).first.wait_for(timeout=60_000)
        _in_model_training(new_page)
        # Its metrics table is alphabetical (MLflow's order), in a box of its own that shows only the rows in view:
        # test_* come late, the latent health's test_latent_* among them.
        new_page.get_by_text("best_epoch", exact=True).first.wait_for(timeout=60_000)
        wanted = (*mlflow_ui.HEADLINE_METRICS, "test_latent_active_units", "latent_active_units")  # and the health
        assert _metric_rows_seen(new_page, wanted) == set(wanted)
        new_page.goto(f"{server}/#/experiments/{sweep.experiment_id}/runs/{sweep.parent.info.run_id}")
        new_page.get_by_text("Child runs", exact=True).first.wait_for(timeout=60_000)
        _in_model_training(new_page)
        new_page.goto(f"{server}/#/experiments/{sweep.experiment_id}/runs/{ids[0]}")
        new_page.get_by_text("PCA of the same size", exact=True).first.wait_for(timeout=60_000)
        summary = _in_model_training(new_page)
    assert summary.index("PCA of the same size") < summary.index("Metrics (")  # the summary first, then the table
