"""The MLflow layer against a real sqlite store and real servers: params in batches, run status, fast failures,
credentials never shown, a server with a login, a new store used by several processes at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hydra
import mlflow
import mlflow.artifacts
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server
from mlflow_store import runs_in

from aeexp import encode, model_files, tracking
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


@pytest.mark.parametrize(("text", "masked"), [
    ("postgresql://u:s3cret@db.example:5432/mlflow", "postgresql://u:***@db.example:5432/mlflow"),
    ("error at http://alice:p@ss@host:5000 (HTTP 500)", "error at http://alice:***@host:5000 (HTTP 500)"),
    ("https://ghp_token123@host/api", "https://***@host/api"),
    ("mysql://host/db?user=u&password=s3cret&x=1", "mysql://host/db?user=u&password=***&x=1"),
    ("sqlite:////data/mlflow.db and http://127.0.0.1:5000", "sqlite:////data/mlflow.db and http://127.0.0.1:5000"),
    ("mail me at a@b.org", "mail me at a@b.org"),
    # as Hydra writes a sweep job's overrides (the sweep.job_overrides tag, the launch lines): ":" and "=" escaped
    ("tracking.uri=http\\://alice\\:PW@host\\:5000 model.bottleneck=2",
     "tracking.uri=http\\://alice\\:***@host\\:5000 model.bottleneck=2"),
    ("tracking.uri=mysql\\://host/db?password\\=s3cret", "tracking.uri=mysql\\://host/db?password\\=***"),
])
def test_redact_masks_the_credentials_of_every_uri(text, masked):
    assert tracking.redact(text) == masked


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared"])
def test_an_in_memory_sqlite_store_is_refused(uri):
    """Its runs would vanish when the command ends; MLflow would accept it."""
    with pytest.raises(TrackingError) as info:
        tracking.configure(uri, "x")
    assert str(info.value) == (f"tracking.uri={uri} is an in-memory database: the runs would be lost when the command "
                               "ends; give a file, e.g. tracking.uri=sqlite:///mlflow.db")


RACE_SCRIPT = """
import sys, time
from pathlib import Path
from aeexp import tracking
store, go = sys.argv[1], Path(sys.argv[2])
Path(sys.argv[3]).touch()  # imported: ready
while not go.exists():
    time.sleep(0.005)
tracking.configure(f"sqlite:///{store}", "race")
with tracking.start_run("racer", {}) as run_id:
    tracking.log_metrics({"x": 1.0}, step=1)
print(run_id)
"""


def test_processes_that_start_together_on_a_new_sqlite_file_all_succeed(tmp_path):
    """Three processes wait until MLflow is imported in each, then use one store file that does not exist yet: each
    would run MLflow's schema migrations, and all but one failed (``duplicate column name``). Now the store is made
    by one at a time."""
    store, go = tmp_path / "new" / "mlflow.db", tmp_path / "go"
    store.parent.mkdir()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    ready = [tmp_path / f"ready-{i}" for i in range(3)]
    racers = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(store), str(go), str(flag)], env=env,
                               text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for flag in ready]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # all at once
    outcomes = [racer.communicate(timeout=180) for racer in racers]
    for racer, (_, err) in zip(racers, outcomes, strict=True):
        assert racer.returncode == 0, err[-3000:]
    runs = runs_in(f"sqlite:///{store}", "race")
    assert sorted(r.info.run_id for r in runs) == sorted(out.strip() for out, _ in outcomes)
    assert {r.info.status for r in runs} == {"FINISHED"}


MLFLOW_CLIENT = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient

store = Path(sys.argv[1])
while not store.exists():  # the moment aeexp touches the new store: an MLflow UI or a notebook opening it too
    time.sleep(0.005)
MlflowClient(f"sqlite:///{store}").search_experiments()
print("the other client opened the store", flush=True)
"""


def test_a_joblib_sweep_on_a_new_store_that_another_mlflow_client_opens_at_once_runs(tmp_path, run_cli):
    """A second MLflow client (not aeexp: it takes no lock) creates a new sqlite store the moment the sweep does:
    MLflow's schema migrations ran twice at once and the sweep exited 1 before its jobs started (2 of 3 tries here).
    The sweep now waits for the other to finish making the store. Twice, each on a new store."""
    for attempt in range(2):
        store = tmp_path / f"store-{attempt}" / "mlflow.db"
        store.parent.mkdir()
        other = subprocess.Popen([sys.executable, "-c", MLFLOW_CLIENT, str(store)], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        try:
            done = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.bottleneck=2,4",
                           f"tracking.uri=sqlite:///{store}", SMALL[0], *SMALL[2:], timeout=400)
            assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
            assert "Creating initial MLflow database tables" in other.communicate(timeout=120)[0]
        finally:
            other.kill()  # (nothing, if it has ended)
            other.wait()
        runs = runs_in(f"sqlite:///{store}", "digits")
        assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}


# The state two MLflow processes' collided schema migrations leave a new SQLite store in (seen in the test above, 1
# run in 4 on a busy machine): migrated part way, to the revision before `7ac759974ad8` (run tags widened, a batch
# migration that copies `tags` into `_alembic_tmp_tags`), with the loser's copy left behind: SQLite runs MLflow's
# migrations outside a transaction. MLflow alone then fails on every later try ("table _alembic_tmp_tags already
# exists"), for aeexp and for the MLflow UI alike.
BEFORE_TAGS_WIDENED = "df50e92ffc5e"


def _half_made_store(path: Path, run: bool = False) -> str:
    """A new store as collided migrations leave it (above), holding one run when ``run``; its URI. The file's mtime
    is set a minute back: nobody is writing it."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base

    uri = f"sqlite:///{path}"
    engine = sqlalchemy.create_engine(uri)
    Base.metadata.create_all(engine)
    config = _get_alembic_config(uri)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, BEFORE_TAGS_WIDENED)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250) NOT NULL, "
                                           "value VARCHAR(8000), run_uuid VARCHAR(32) NOT NULL)"))
        if run:
            connection.execute(sqlalchemy.text(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                "start_time, source_version, lifecycle_stage, artifact_uri, experiment_id) VALUES ('a' || hex(1), "
                "'precious', 'LOCAL', '', '', 'me', 'FINISHED', 0, '', 'active', '/tmp/x', 0)"))
    engine.dispose()
    back = time.time() - 60
    os.utime(path, (back, back))
    return uri


def test_a_new_store_left_half_made_by_collided_migrations_is_made_afresh(tmp_path):
    uri = _half_made_store(tmp_path / "mlflow.db")
    with pytest.raises(Exception, match="_alembic_tmp_tags already exists"):  # MLflow alone: stuck for good
        MlflowClient(uri).search_experiments()
    try:
        assert tracking.configure_uri(uri) == uri  # (in this process: MLflow's cached engine of the old file goes)
        assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]
        experiment = MlflowClient(uri).create_experiment("after")
        MlflowClient(uri).create_run(experiment, tags={"t": "x" * 6000})  # the widened tags: at the schema's head
    finally:
        mlflow.set_tracking_uri(None)


def test_a_half_made_store_that_holds_a_run_is_never_deleted(tmp_path, monkeypatch):
    path = tmp_path / "mlflow.db"
    uri = _half_made_store(path, run=True)
    monkeypatch.setattr(tracking, "STORE_ATTEMPTS", 2)  # (the error, not the waiting, is what this test is about)
    try:
        with pytest.raises(TrackingError, match=r"cannot use .* as an MLflow store .*_alembic_tmp_tags already exists"):
            tracking.configure_uri(uri)
    finally:
        mlflow.set_tracking_uri(None)
    import sqlite3

    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT name FROM runs").fetchall() == [("precious",)]


# --- a shared server with a login (the README's cluster recipe), and a password in the URI --------------------

ADMIN, ADMIN_PASSWORD = "admin", "aeexp-Admin-pw-4f9c"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Iterator[str]:
    """``mlflow server --app-name basic-auth`` on 127.0.0.1, as the README shows it."""
    env = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "aeexp-test-secret", "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with mlflow_server(tmp_path_factory.mktemp("auth-server"), store_template, ["--app-name", "basic-auth"],
                       env) as uri:
        yield uri


@pytest.fixture
def logged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's MLflow client logs in as the README says: credentials in the environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    yield
    mlflow.set_tracking_uri(None)


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The ``error:`` lines of a finished command (Hydra logs to stdout), from ``error:`` on."""
    lines = (done.stdout + done.stderr).splitlines()
    return [line[line.index("error: "):] for line in lines if "error: " in line]


SMALL = ["model.widths=[16]", "model.bottleneck=4", "trainer.epochs=1", "trainer.progress=false", "embed=pca",
         "embed.n_samples=100"]


def test_without_a_login_the_server_refuses_in_one_line(auth_server, run_cli, logged_in):
    done = run_cli(f"tracking.uri={auth_server}", *SMALL, timeout=180,
                   env={"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""})
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert _error_lines(done) == [
        f"error: cannot use experiment 'digits' at {auth_server}: the server requires a login (HTTP 401); set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment"]
    assert runs_in(auth_server) == []


def _everything_logged(run_id: str, destination: Path) -> list[Path]:
    """Every artifact of the run and of its model, downloaded."""
    MlflowClient().download_artifacts(run_id, "", str(destination / "run"))
    mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(destination / "model"))
    return [p for p in destination.rglob("*") if p.is_file()]


def test_a_password_in_the_tracking_uri_is_shown_and_recorded_nowhere(auth_server, run_cli, logged_in, tmp_path):
    """A run with ``tracking.uri=http://admin:<password>@host``: the run is logged (the server takes the login from
    the URI), and the password is in no line printed, not in cli.log, params, tags or any artifact. The same run
    checks the ``tracking=server`` preset, ``+tags.*`` and the ``versions.*`` tags."""
    with_login = auth_server.replace("http://", f"http://{ADMIN}:{ADMIN_PASSWORD}@")
    done = run_cli("tracking=server", f"tracking.uri={with_login}", "+tags.owner=me", "+tags.project=aeexp-16",
                   *SMALL, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    masked = auth_server.replace("http://", f"http://{ADMIN}:***@")
    assert ADMIN_PASSWORD not in done.stdout + done.stderr
    assert f"at {masked}" in done.stdout + done.stderr
    (log,) = (tmp_path / "outputs").glob("*/*/cli.log")
    assert ADMIN_PASSWORD not in log.read_text() and masked in log.read_text()

    mlflow.set_tracking_uri(auth_server)
    (run,) = runs_in(auth_server, "digits")
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == masked
    assert ADMIN_PASSWORD not in repr(run.data.params) + repr(run.data.tags)
    assert {k: run.data.tags[k] for k in ("owner", "project", "versions.mlflow", "versions.hydra")} == {
        "owner": "me", "project": "aeexp-16", "versions.mlflow": mlflow.__version__,
        "versions.hydra": hydra.__version__}
    logged = _everything_logged(run.info.run_id, tmp_path / "logged")
    assert {"config.yaml", "checkpoint.pt", model_files.WEIGHTS, model_files.CONFIG} <= {p.name for p in logged}
    assert [p for p in logged if ADMIN_PASSWORD.encode() in p.read_bytes()] == []

    # The model comes back over the server, the login from the environment, made from its config and weights.
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((3, 8, 8), dtype=np.uint8))
    assert encode.main([f"runs:/{run.info.run_id}/model", str(images), "--out", str(tmp_path / "codes.npy"),
                        "--tracking-uri", auth_server]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (3, 4)


def test_a_password_in_the_tracking_uri_of_a_sweep_is_shown_and_recorded_nowhere(auth_server, run_cli, logged_in,
                                                                                  tmp_path):
    """``-m tracking.uri=http://admin:<password>@host model.bottleneck=2,4``: the jobs log in with it (each takes it
    from its own config, not from the sweep file), and the password is in no launch line, no child's
    ``sweep.job_overrides`` tag, not in ``.aeexp_sweep.json``, the report (local and the server's copy) or any log.
    (Hydra's own copies of the command line, ``.hydra/`` and ``multirun.yaml``, keep it as typed: README.)"""
    with_login = auth_server.replace("http://", f"http://{ADMIN}:{ADMIN_PASSWORD}@")
    done = run_cli("-m", f"tracking.uri={with_login}", "model.bottleneck=2,4", *SMALL[:1], *SMALL[2:], timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ADMIN_PASSWORD not in done.stdout + done.stderr
    assert "#1 : tracking.uri=http\\://admin\\:***@127.0.0.1" in done.stdout + done.stderr
    ours = [p for p in (tmp_path / "multirun").rglob("*")
            if p.is_file() and ".hydra" not in p.parts and p.name != "multirun.yaml"]
    assert {".aeexp_sweep.json", "report.html", "cli.log"} <= {p.name for p in ours}
    assert [p for p in ours if ADMIN_PASSWORD.encode() in p.read_bytes()] == []

    mlflow.set_tracking_uri(auth_server)
    runs = runs_in(auth_server, "digits")
    (parent,) = [run for run in runs if "sweep.name" in run.data.tags]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(run.data.params["model.bottleneck"] for run in children) == ["2", "4"]
    assert {run.info.status for run in [parent, *children]} == {"FINISHED"}
    assert all("tracking.uri=http\\://admin\\:***@" in run.data.tags["sweep.job_overrides"] for run in children)
    assert ADMIN_PASSWORD not in "".join(repr(run.data.params) + repr(run.data.tags) for run in runs)
    server_copy = Path(MlflowClient().download_artifacts(parent.info.run_id, "comparison", str(tmp_path / "logged")))
    assert (server_copy / "report.html").is_file()
    assert [p for p in server_copy.rglob("*") if p.is_file() and ADMIN_PASSWORD.encode() in p.read_bytes()] == []


def test_the_server_preset_points_at_a_local_server(make_config):
    assert make_config("tracking=server").tracking.uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(("given", "secret", "masked", "error"), [
    # A PostgreSQL URI with a password (no such server, no driver)
    (["tracking.uri=postgresql://mlflow:pg-s3cret-pw@127.0.0.1:1/mlflow"], "pg-s3cret-pw",
     "postgresql://mlflow:***@127.0.0.1:1/mlflow", "cannot use experiment 'digits' at {masked}: "),
    # a URI with a password as a dataset's path, refused before MLflow is imported
    (["dataset=arrays", "dataset.path=https://alice:ds-s3cret-pw@data.example/x.npz"], "ds-s3cret-pw",
     "https://alice:***@data.example/x.npz", "dataset.path='{masked}' is invalid: there is no such file"),
], ids=["tracking.uri", "dataset.path"])
def test_a_password_in_a_uri_is_masked_in_the_error_and_cli_log(run_cli, tmp_path, given, secret, masked, error):
    done = run_cli(*given, *SMALL, timeout=180)
    assert done.returncode == 1
    assert secret not in done.stdout + done.stderr
    (line,) = _error_lines(done)
    assert line.startswith("error: " + error.format(masked=masked)), line
    # (.hydra/ keeps the command line as the user typed it, in the user's own folder)
    written = [path for path in tmp_path.rglob("*") if path.is_file() and ".hydra" not in path.parts]
    assert [path for path in written if secret.encode() in path.read_bytes()] == []
    # A run refused over its data leaves no folder; one refused over its tracking store keeps its log, masked.
    logs = list((tmp_path / "outputs").glob("*/*/cli.log"))
    assert len(logs) == (1 if given[0].startswith("tracking.uri") else 0)
    assert all(masked in log.read_text() for log in logs)


def test_runs_made_outside_the_active_run_mask_credentials_too(tracking_uri):
    """A sweep's parent run (tags and params of the sweep's overrides) and a failed job's run (its error)."""
    tracking.configure(tracking_uri, "sweeps")
    overrides = "model.bottleneck=2,8 tracking.uri=http://u:pw-in-sweep@10.0.0.5:5000"
    parent = tracking.open_run("sweeps", "sweep", {"sweep.overrides": overrides}, {"sweep.overrides": overrides})
    tracking.set_run_tag(parent, "error", f"job 1 failed at {overrides}")
    failed = tracking.record_failed_run("sweeps", "job", {"sweep.job_overrides": overrides}, {"x": 1},
                                        "TrackingError: lost http://u:pw-in-sweep@10.0.0.5:5000", parent)
    tracking.end_run_by_id(parent, "FAILED")
    for run in runs_in(tracking_uri, "sweeps"):
        recorded = repr(run.data.tags) + repr(run.data.params)
        assert "pw-in-sweep" not in recorded and "http://u:***@10.0.0.5:5000" in recorded, recorded
    assert {r.info.run_id for r in runs_in(tracking_uri, "sweeps")} == {parent, failed}


def test_an_experiment_made_before_is_tagged_to_open_in_model_training(tracking_uri):
    """An experiment aeexp did not make (an older aeexp's, or one made in the UI) is tagged when aeexp logs to it,
    and a tag that says otherwise is corrected; its other tags are kept."""
    from aeexp import mlflow_ui

    client = MlflowClient(tracking_uri)
    made_before = client.create_experiment("older", tags={"team": "vision", mlflow_ui.EXPERIMENT_KIND_TAG:
                                                          "genai_development"})
    tracking.configure(tracking_uri, "older")
    tags = client.get_experiment(made_before).tags
    assert tags["team"] == "vision"
    assert {key: tags[key] for key in mlflow_ui.experiment_tags()} == mlflow_ui.experiment_tags()
    assert tags[mlflow_ui.EXPERIMENT_KIND_TAG] == "custom_model_development"
