"""What the MLflow UI shows of aeexp's runs: its model-training view, the headline metrics as the runs table's
columns, a summary at the top of each run's page.

MLflow 3.17's UI has two views, *GenAI* and *Model training*, switched at the top of its sidebar. It keeps the
choice in the browser (``localStorage``), starts a new browser in GenAI, and does not read the view from the
experiment: its ``mlflow.experimentKind`` tag, MLflow's own mark of an experiment's kind, only stops the UI from
asking for it. So aeexp does three things:

- its experiments carry ``mlflow.experimentKind=custom_model_development`` (what the UI's own "Machine learning"
  choice writes) and a runs-table view, ``mlflow.sharedViewState.aeexp``, whose columns are the headline metrics;
- the links it prints open the model-training view and that runs table (``?workflowType=machine_learning``,
  ``viewStateShareKey=aeexp``, both the UI's own URL parameters);
- ``mlflow ui --app-name aeexp`` (and ``mlflow server --app-name aeexp``) serves MLflow's UI with *Model training*
  as the view of a browser that has not chosen one, on every page (the compare view and a run's page too), and with
  the assistant panel closed until asked for: :func:`create_app`, an ``mlflow.app`` plugin.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
VIEW_KEY = "aeexp"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
SUMMARY_TAG = "mlflow.note.content"  # a run's description, the top of its page in the UI
# The runs table's columns, in order: the final metrics a run is judged by, each beside its PCA baseline.
HEADLINE_METRICS = ("val_loss", "test_mse", "pca_test_mse", "test_knn_acc", "pca_knn_acc", "embed_knn_acc",
                    "embed_trust")
OPEN_MODEL_TRAINING = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store

# The UI's own settings of a browser, as its code names them in localStorage (MLflow 3.17): the view, and whether
# its assistant panel has opened by itself once. Set only where the browser has none; if a later MLflow renames
# them, the UI opens as MLflow makes it, and nothing else changes.
BROWSER_DEFAULTS = {"mlflow.workflowType_v1": json.dumps("machine_learning"),
                    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}


def experiment_tags() -> dict[str, str]:
    """The tags of an experiment aeexp logs to: its kind (model training) and its runs-table view."""
    columns = [f"metrics.`{name}`" for name in HEADLINE_METRICS]
    view = {"selectedColumns": [*columns, "attributes.`Duration`"], "columnOrder": columns}
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING, VIEW_TAG: json.dumps(view)}


def ui_address(tracking_uri: str) -> str:
    """Where the UI of the store at ``tracking_uri`` is: the tracking server itself (without a login the URI holds:
    links are shown and shared), else ``mlflow ui``'s address."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return DEFAULT_UI
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl().rstrip("/")


def experiment_link(ui: str, experiment_id: str) -> str:
    """The experiment's runs table, in the model-training view, with the headline metrics as columns."""
    return f"{ui}/#/experiments/{experiment_id}/runs?{OPEN_MODEL_TRAINING}&viewStateShareKey={VIEW_KEY}"


def run_link(ui: str, experiment_id: str, run_id: str) -> str:
    """A run's page, in the model-training view."""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}?{OPEN_MODEL_TRAINING}"


SUMMARY = [("test_mse", "test MSE", "pca_test_mse", ".4f"), ("test_knn_acc", "5-NN accuracy of the codes",
                                                            "pca_knn_acc", ".3f"),
           ("test_probe_acc", "linear probe accuracy", "pca_probe_acc", ".3f"),
           ("embed_knn_acc", "5-NN accuracy in the 2-D view", None, ".3f"),
           ("test_loss", "test loss", None, ".4f")]


def run_summary(metrics: dict[str, float]) -> str:
    """A run's description (markdown, the top of its page): the headline metrics beside PCA of the same size, and
    where the rest is on the page."""
    rows = [f"| {label} | {metrics[name]:{spec}} | " + (f"{metrics[pca]:{spec}} |" if pca in metrics else "– |")
            for name, label, pca, spec in SUMMARY if name in metrics]
    stopped = (f"Trained {metrics['stopped_epoch']:.0f} epochs" +
               (f", the best at epoch {metrics['best_epoch']:.0f} (its weights evaluated)" if "best_epoch" in metrics
                else "") + ". ") if "stopped_epoch" in metrics else ""
    return "\n".join([
        "| metric (test split) | this run | PCA of the same size |", "| --- | --- | --- |", *rows, "",
        f"{stopped}The loss curves: *Model metrics* (`train_loss`, `val_loss`) or `loss_curves.png` under "
        "*Artifacts*, with the other figures and `explorer.html`. The model: *Logged models* below (MLflow 3 keeps it "
        "with the experiment's *Models*, not under *Artifacts*)."])


def _with_browser_defaults(html: str) -> str:
    """MLflow's ``index.html`` with a first script that sets :data:`BROWSER_DEFAULTS` where the browser has none."""
    script = ("<script>(function(){try{var s=window.localStorage,d=" + json.dumps(BROWSER_DEFAULTS) +
              ";for(var k in d){if(s.getItem(k)===null){s.setItem(k,d[k]);}}}catch(e){}})();</script>")
    return html.replace("<head>", "<head>" + script, 1)


def _serve_index_with_defaults(flask_app: Any) -> None:
    """Make the UI's page (the view ``serve``, every path the React app owns) carry the browser defaults."""
    from pathlib import Path

    from flask import Response

    original = flask_app.view_functions.get("serve")
    index = Path(flask_app.static_folder or "") / "index.html"
    if original is None or not index.is_file():  # a source install without the built UI: nothing to change
        return

    def serve() -> Any:
        response = Response(_with_browser_defaults(index.read_text(encoding="utf-8")), mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"  # never the cached page of a plain `mlflow ui` on this port
        return response

    flask_app.view_functions["serve"] = serve


def create_app() -> Any:
    """The ``aeexp`` app of ``mlflow ui`` / ``mlflow server --app-name aeexp``: MLflow's own server, its UI's page
    with :data:`BROWSER_DEFAULTS`. Under uvicorn (MLflow's default) the FastAPI app MLflow builds around its Flask
    app, as its ``basic-auth`` app does; under waitress or gunicorn the Flask app."""
    import os

    from mlflow.server import app as flask_app

    _serve_index_with_defaults(flask_app)
    # MLflow tells its apps which server runs them in this variable (private to it; the basic-auth app reads it too)
    if os.environ.get("_MLFLOW_SGI_NAME", "uvicorn") == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app
