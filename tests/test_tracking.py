"""The MLflow layer against a real sqlite store: params in batches, run status, fast failures."""

from __future__ import annotations

import socket
import time

import pytest
from mlflow.tracking import MlflowClient
from mlflow_store import runs_in

from aeexp import tracking
from aeexp.errors import TrackingError


def test_more_params_than_one_batch_and_long_values(tracking_uri):
    tracking.configure(tracking_uri, "params")
    params = {f"group.key{i:03d}": i for i in range(250)}
    params["long.value"] = "x" * 7000
    with tracking.start_run("many-params", {"purpose": "test"}) as run_id:
        tracking.log_params(params)
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert len(run.data.params) == 251
    assert run.data.params["group.key249"] == "249"
    assert len(run.data.params["long.value"]) == tracking.MAX_PARAM_LENGTH
    assert run.data.tags["purpose"] == "test"
    assert run.info.status == "FINISHED"


def test_an_error_inside_a_run_marks_it_failed_with_the_error(tracking_uri):
    tracking.configure(tracking_uri, "failing")
    with pytest.raises(ValueError), tracking.start_run("boom", {}):
        tracking.log_metrics({"x": 1.0}, step=1)
        raise ValueError("bad things")
    (run,) = runs_in(tracking_uri, "failing")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ValueError: bad things"


def test_interrupt_marks_the_run_killed(tracking_uri):
    tracking.configure(tracking_uri, "interrupted")
    with pytest.raises(KeyboardInterrupt), tracking.start_run("ctrl-c", {}):
        raise KeyboardInterrupt
    (run,) = runs_in(tracking_uri, "interrupted")
    assert run.info.status == "KILLED"


def test_unreachable_server_fails_within_seconds():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(TrackingError, match=f"tracking server http://127.0.0.1:{port} is unreachable"):
        tracking.configure(f"http://127.0.0.1:{port}", "x")
    assert time.perf_counter() - started < tracking.SERVER_CHECK_TIMEOUT_S + 2


def test_something_that_is_not_mlflow_is_refused():
    """A plain HTTP server that answers 404 on /health is not taken for a tracking server."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(TrackingError, match="does not answer like an MLflow tracking server"):
            tracking.configure(f"http://127.0.0.1:{server.server_port}", "x")
    finally:
        server.shutdown()


def test_sqlite_in_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(TrackingError, match="does not exist"):
        tracking.configure(f"sqlite:///{tmp_path}/no/such/dir/mlflow.db", "x")


def test_sqlite_uri_that_is_not_a_database_is_refused(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("this is not sqlite " * 100)
    with pytest.raises(TrackingError, match="cannot open"):
        tracking.configure(f"sqlite:///{bogus}", "x")
