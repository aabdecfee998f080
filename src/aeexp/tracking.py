"""Everything that talks to MLflow: where runs go, runs, params, metrics, figures, the model."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from aeexp import mlflow_ui, model_files
from aeexp.errors import TrackingError
from aeexp.redaction import mask_credentials_in_logs, redact

log = logging.getLogger(__name__)
# MLflow's SQL store logs every failed statement with its traceback (dozens of lines each) before raising it as an
# MlflowException, which aeexp reports in one line: the log adds nothing but noise.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

MLFLOW_VERSION = mlflow.__version__
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000
SERVER_CHECK_TIMEOUT_S = 5.0
STORE_LOCK_TIMEOUT_S = 120.0

mask_credentials_in_logs()


def _check_server(uri: str) -> None:
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=SERVER_CHECK_TIMEOUT_S)
    except requests.RequestException as err:
        raise TrackingError(
            f"tracking server {redact(uri)} is unreachable ({type(err).__name__}); start it with "
            f"`mlflow server --host 127.0.0.1 --port {urlparse(uri).port or 5000}` or set tracking.uri"
        ) from None
    if response.status_code != 200:
        raise TrackingError(
            f"{redact(uri)} does not answer like an MLflow tracking server (GET /health -> HTTP "
            f"{response.status_code}); check tracking.uri"
        )


def _in_memory(uri: str) -> bool:
    """Whether a ``sqlite:`` URI names a database that lives in memory (``sqlite://``, ``sqlite:///:memory:``)."""
    parsed = urlparse(uri)
    path = parsed.path.lstrip("/") if uri.startswith("sqlite:///") else ""
    return path in ("", ":memory:") or path.startswith("file::memory:") or "mode=memory" in parsed.query


def _sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI: ``sqlite:///rel.db`` -> rel.db, ``sqlite:////abs.db`` -> /abs.db."""
    return Path(urlparse(uri).path[1:])


def _check_sqlite(uri: str) -> Path:
    """The database file of a ``sqlite:`` URI, after checking that it can be used as one; TrackingError if not."""
    if _in_memory(uri):
        raise TrackingError(f"tracking.uri={uri} is an in-memory database: the runs would be lost when the command "
                            "ends; give a file, e.g. tracking.uri=sqlite:///mlflow.db")
    path = _sqlite_path(uri)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise TrackingError(f"tracking.uri={uri}: folder {directory} does not exist; create it first")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrackingError(f"tracking.uri={uri}: {path} is not writable; choose another place")
    try:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as err:
        raise TrackingError(f"tracking.uri={uri}: cannot open {path} as SQLite ({err})") from None
    return path


_ready_stores: set[str] = set()


@contextlib.contextmanager
def _folder_lock(directory: Path, store: Path) -> Iterator[None]:
    """An exclusive lock (``flock``) on ``directory`` for the block, waited for up to STORE_LOCK_TIMEOUT_S. Where the
    system or filesystem cannot lock a folder (Windows, some network filesystems) the block runs unlocked."""
    try:
        import fcntl

        descriptor = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        deadline = time.monotonic() + STORE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(f"{store}: another process has been creating this MLflow store for "
                                        f"{STORE_LOCK_TIMEOUT_S:.0f} s; look for a stuck aeexp process, or retry"
                                        ) from None
                time.sleep(0.05)
            except OSError:  # this filesystem has no flock
                break
        yield
    finally:
        os.close(descriptor)  # and with it the lock


STORE_ATTEMPTS = 6  # MLflow's creation of a new SQLite store tried this often while another process makes it
STORE_SETTLE_S = 2.0  # a store whose file has not changed this long is no longer being made


def _schema_head() -> str | None:
    """The schema revision of the SQL stores this MLflow makes (the head of its migrations); None if unknown."""
    try:
        from alembic.script import ScriptDirectory
        from mlflow.store import db_migrations

        return ScriptDirectory(os.path.dirname(db_migrations.__file__)).get_current_head()
    except Exception:  # another MLflow's layout: MLflow itself judges the schema
        return None


def _store_state(path: Path) -> tuple[bool, str | None]:
    """Whether the SQLite file holds tables, and the schema revision it is at (None: none yet); (True, None) while
    another process holds it locked (it is being written)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "alembic_version" not in tables:
                return bool(tables), None
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            return True, row[0] if row else None
    except sqlite3.Error:
        return True, None


def _settle(path: Path, deadline: float) -> None:
    """Wait while another process (an MLflow UI, a notebook: not aeexp, whose processes take the folder's lock) is
    making the store: it has tables, not yet at this MLflow's schema revision, and its file still changes. Starting
    MLflow's migrations meanwhile would run them twice at once, and both fail."""
    head = _schema_head()
    while time.monotonic() < deadline:
        has_tables, revision = _store_state(path)
        if not has_tables or head is None or revision == head:
            return
        try:
            if time.time() - path.stat().st_mtime > STORE_SETTLE_S:
                return  # not being made: MLflow judges it (e.g. an older MLflow's store)
        except OSError:
            return
        time.sleep(0.2)


def _holds_nothing(path: Path) -> bool:
    """Whether the SQLite file holds no one's data: every table empty but the schema's own bookkeeping
    (``alembic_version``, a batch migration's ``_alembic_tmp_*`` copies) and MLflow's Default experiment."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                if table == "alembic_version" or table.startswith(("_alembic_tmp_", "sqlite_")):
                    continue
                rows = connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                if rows > (1 if table == "experiments" else 0):
                    return False
            return True
    except sqlite3.Error:
        return False


def _forget_engine(uri: str) -> None:
    """Close MLflow's cached database engine of ``uri`` (``SqlAlchemyStore._engine_map``, not public: without it the
    pooled connections would go on writing to a deleted file); nothing where this MLflow has no such cache."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
    except (ImportError, AttributeError):
        return
    if engine is not None:
        engine.dispose()


def _remake_if_left_half_made(uri: str, path: Path) -> bool:
    """Delete the store at ``path`` when MLflow's schema migrations were left half done on it (another program's
    collided with ours: SQLite runs MLflow's migrations outside a transaction, so a failed one leaves its tables
    behind, and every later try fails on them) and nobody is still writing it and it holds nothing; True if it was
    deleted (the next try makes it afresh). A store with anything in it is never touched."""
    head = _schema_head()
    has_tables, revision = _store_state(path)
    try:
        settled = time.time() - path.stat().st_mtime > STORE_SETTLE_S
    except OSError:
        return False
    if not has_tables or head is None or revision == head or not settled or not _holds_nothing(path):
        return False
    _forget_engine(uri)
    for leftover in (path, *(path.with_name(path.name + end) for end in ("-journal", "-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    log.warning("%s: a new MLflow store left half made (its schema migrations collided with another program's) "
                "and holding nothing was deleted, to be made afresh", path)
    return True


def _create_store_once(uri: str, path: Path) -> None:
    """Let MLflow create (or only open) the SQLite store at ``path`` while this process holds a lock on its folder,
    once per process. Processes that start together on a file that does not exist yet would otherwise all run
    MLflow's schema migrations at once, and all but one fail (``duplicate column name: step``). Another program
    making the store at the same time (an MLflow UI or client, which takes no lock) is waited for, and if the two
    collided anyway, MLflow is asked again once it is done."""
    key = str(path.resolve())
    if key in _ready_stores:
        return
    deadline = time.monotonic() + STORE_LOCK_TIMEOUT_S
    with _folder_lock(path.resolve().parent, path):
        for attempt in range(1, STORE_ATTEMPTS + 1):
            _settle(path, deadline)
            if attempt > 1:  # the try before failed: perhaps on a store our collided migrations left half made
                _remake_if_left_half_made(uri, path)
            try:
                MlflowClient(uri).search_experiments(max_results=1)
                break
            except Exception as err:
                if attempt == STORE_ATTEMPTS or time.monotonic() > deadline:
                    raise TrackingError(
                        f"tracking.uri={uri}: cannot use {path} as an MLflow store ({short_error(err)}); if another "
                        "program (an MLflow UI or client) was creating it at the same time, their schema migrations "
                        "collided: once it is done, run again (or delete the file if it holds no runs)") from None
                log.info("%s: MLflow could not open it (%s), perhaps while another program makes it; trying again",
                         path, short_error(err))
                time.sleep(0.5 * attempt)
    _ready_stores.add(key)


def use_uri(uri: str | None) -> str:
    """Point MLflow at ``uri`` (None: its default) without checking it; return the URI in force."""
    mlflow.set_tracking_uri(uri or None)
    return mlflow.get_tracking_uri()


def configure_uri(uri: str | None) -> str:
    """Point MLflow at ``uri`` (None: MLflow's default) after checking it can be used; return the URI in force.

    A SQLite store is created (or opened) here, one process at a time (see :func:`_create_store_once`).
    """
    scheme = urlparse(uri).scheme if uri else ""
    if scheme in ("http", "https"):
        _check_server(uri)
    if uri and redact(uri) != uri:  # MLflow prints "View run ... at <the URI>" to stdout, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    store = _check_sqlite(uri) if scheme == "sqlite" else None  # before MLflow is pointed at it
    resolved = use_uri(uri)
    if store is None and urlparse(resolved).scheme == "sqlite":  # MLflow's default
        store = _check_sqlite(resolved)
    if store is not None:
        _create_store_once(resolved, store)
    return resolved


def use_existing_store(uri: str | None, wanted: str) -> str:
    """Point MLflow at ``uri`` (None: its default) to read what is there: a SQLite file that does not exist is refused
    (MLflow would create an empty store and then not find ``wanted`` in it, e.g. ``run 3f2a...``); else as
    :func:`configure_uri`. Returns the URI in force."""
    resolved = use_uri(uri)
    store = Path(resolved[len("sqlite:///"):]) if resolved.startswith("sqlite:///") else None
    if store is not None and not store.exists():
        fix = ("check --tracking-uri" if uri else
               "run this where you trained (next to its mlflow.db) or pass --tracking-uri")
        raise TrackingError(f"no MLflow store at {redact(resolved)}, so no {wanted}; {fix}")
    return configure_uri(uri)


def configure(uri: str | None, experiment: str) -> str:
    """Point MLflow at ``uri`` (None: MLflow's default) and ``experiment``; fail fast if unusable.

    Returns the tracking URI in force.
    """
    resolved = configure_uri(uri)
    try:
        found = mlflow.set_experiment(experiment)
        _tag_for_the_ui(found.experiment_id, found.tags)
    except Exception as err:
        raise TrackingError(redact(f"cannot use experiment {experiment!r} at {resolved}: {_refusal(err)}")) from None
    return resolved


def _tag_for_the_ui(experiment_id: str, tags: Mapping[str, str]) -> None:
    """Give the experiment (new, or made before) the tags that make the MLflow UI show it as model training, with
    the headline metrics as its runs table's columns (:mod:`aeexp.mlflow_ui`); those it has already are kept."""
    client = MlflowClient()
    for key, value in mlflow_ui.experiment_tags().items():
        if tags.get(key) != value:
            try:
                client.set_experiment_tag(experiment_id, key, value)
            except Exception as err:  # e.g. a server's user who may log runs but not change the experiment
                log.warning("could not tag experiment %s for the MLflow UI (%s): it may open in its GenAI view",
                            experiment_id, short_error(err))
                return


def experiment_id(experiment: str) -> str:
    """The id of experiment ``experiment``; TrackingError if there is none."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} at {redact(mlflow.get_tracking_uri())}")
    return found.experiment_id


def local_artifact_folder(experiment: str) -> Path | None:
    """The folder on this machine that holds experiment ``experiment``'s artifacts (a local store's ``mlruns/<id>``);
    None when they are elsewhere (a server's, a bucket); TrackingError if there is no such experiment."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} at {redact(mlflow.get_tracking_uri())}")
    location = urlparse(found.artifact_location)
    if location.scheme == "file":
        return Path(url2pathname(location.path))
    return Path(found.artifact_location) if not location.scheme else None


def describe_run(run_id: str, markdown: str) -> None:
    """Set run ``run_id``'s description, the top of its page in the MLflow UI."""
    set_run_tag(run_id, mlflow_ui.SUMMARY_TAG, markdown)


def _refusal(err: Exception) -> str:
    """Why the store refused: for a server that asks for a login, what to set; else the error in one line."""
    text = str(err)
    if "error code 401" in text:
        return ("the server requires a login (HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "in the environment")
    if "error code 403" in text:
        return ("the server refused this user (HTTP 403); ask its admin for permission on the experiment, or check "
                "MLFLOW_TRACKING_USERNAME")
    return short_error(err)


@dataclass
class RunRecord:
    """What the comparison report needs of one run, without MLflow types."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    experiment_id: str = ""
    deleted: bool = False  # in MLflow's trash (deleted, not yet garbage-collected)


def _record(run: Any) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or run.info.run_id, run.info.status,
                     dict(run.data.params), dict(run.data.metrics), dict(run.data.tags), run.info.experiment_id,
                     run.info.lifecycle_stage == "deleted")


def current_uri() -> str:
    """The tracking URI in force."""
    return mlflow.get_tracking_uri()


@contextlib.contextmanager
def start_run(run_name: str | None, tags: Mapping[str, str], parent_run_id: str | None = None,
              run_id: str | None = None) -> Iterator[str]:
    """An MLflow run around the block: FINISHED if it ends normally, KILLED on Ctrl-C/SIGTERM, else FAILED with
    the error as a tag.

    With ``parent_run_id`` it is a child of that run (also when the parent lives in another process); with
    ``run_id`` the existing run is continued (resumed) instead of a new one started.
    """
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=run_name, tags=_redacted(tags), parent_run_id=parent_run_id)
    try:
        if run_id is not None:
            set_tags(tags)
        yield run.info.run_id
    except BaseException as err:
        # KILLED: stopped on request (Ctrl-C/SIGTERM) or on purpose (an error with run_status, e.g. pruned)
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else getattr(err, "run_status", "FAILED")
        with contextlib.suppress(Exception):
            mlflow.set_tag("error", redact(f"{type(err).__name__}: {err}")[:5000])
        try:
            mlflow.end_run(status=status)
        except Exception as tracking_err:  # e.g. the server went away: keep the original error
            log.error("could not mark run %s %s in MLflow: %s", run.info.run_id, status, short_error(tracking_err))
        raise
    mlflow.end_run(status="FINISHED")


CHECKPOINT_TAG = "aeexp.checkpoint"


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log one local file to the active run."""
    mlflow.log_artifact(str(path), artifact_path)


def find_run(run_id: str) -> tuple[RunRecord, str]:
    """Run ``run_id`` and the name of its experiment; TrackingError naming the store if there is none."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:
        raise TrackingError(f"no run {run_id!r} at {redact(mlflow.get_tracking_uri())}; check the id (mlflow ui "
                            "shows it) and tracking.uri") from None
    return _record(run), client.get_experiment(run.info.experiment_id).name


def latest_run_with_tag(tag: str) -> str | None:
    """The id of the most recently started run, in any experiment, that has the tag ``tag``."""
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    runs = client.search_runs(ids, filter_string=f"tags.`{tag}` LIKE '%'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _redacted(values: Mapping[str, Any]) -> dict[str, str]:
    """Tags or params as strings, with the credentials of any URI in them masked."""
    return {str(key): redact(str(value)) for key, value in values.items()}


def _param_batches(params: Mapping[str, Any]) -> Iterator[dict[str, str]]:
    """Params as batches within MLflow's limits (100 per call, 6000 chars per value), credentials masked."""
    items = [(key, value[:MAX_PARAM_LENGTH]) for key, value in _redacted(params).items()]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        yield dict(items[start:start + MAX_PARAMS_PER_BATCH])


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run, in batches within MLflow's limits."""
    for batch in _param_batches(params):
        mlflow.log_params(batch)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def log_metrics_to(run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log metrics at ``step`` to run ``run_id`` without making it the active run: its status and end time stay as
    they are."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
        MlflowClient().log_batch(run_id, metrics=batch[start:start + MAX_METRICS_PER_BATCH])


def log_artifact_to(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Log one local file to run ``run_id`` (which need not be the active run)."""
    MlflowClient().log_artifact(run_id, str(path), artifact_path)


def set_tags(tags: Mapping[str, str]) -> None:
    mlflow.set_tags(_redacted(tags))


def log_text(text: str, filename: str) -> None:
    """Log ``text`` (credentials masked) as the active run's artifact ``filename``."""
    mlflow.log_text(redact(text), filename)


MODEL_PATH = "model"


def log_model(model: Any, example_input: Any, config_yaml: str) -> None:
    """Log a torch autoencoder as the run's ``model``: pickled (loadable with ``mlflow.pytorch.load_model``, which
    runs code from the file), and in ``model/extra_files/`` as files that rebuild it without running any
    (:mod:`aeexp.model_files`: the weights, ``config_yaml`` and the image shape)."""
    with tempfile.TemporaryDirectory(prefix="aeexp-model-") as folder:
        safe_files = model_files.write(Path(folder), model, redact(config_yaml))
        _log_pickled_model(model, example_input, safe_files)


def _log_pickled_model(model: Any, example_input: Any, extra_files: list[Path]) -> None:
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model.eval()
    import torch

    with torch.no_grad():
        example_output = model(torch.as_tensor(example_input)).numpy()
    signature = infer_signature(example_input, example_output)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
    # Pickle keeps the whole module (encode/decode included); pt2 would keep only forward().
    pytorch_logger = logging.getLogger("mlflow.pytorch")
    level = pytorch_logger.level
    pytorch_logger.setLevel(logging.ERROR)  # its pickle-safety warning is noise for our own models
    try:
        with _requirements_unchecked():
            mlflow.pytorch.log_model(model, name=MODEL_PATH, signature=signature, pip_requirements=requirements,
                                     serialization_format="pickle", extra_files=[str(p) for p in extra_files])
    finally:
        pytorch_logger.setLevel(level)


@contextlib.contextmanager
def _requirements_unchecked() -> Iterator[None]:
    """Skip MLflow's check of a logged model's requirements against the installed packages, inside the block.

    The check reads the file list of every installed distribution (0.5 s a run on 2 cores), and ours were just read
    from the running torch and MLflow, so it cannot fail. MLflow has no switch for it: this swaps its private
    checker for a no-op and puts it back after; where that checker is not found (another MLflow), nothing changes.
    """
    from mlflow.utils import environment

    checker = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if checker is None:
        yield
        return
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = checker


def load_pickled_model(model_uri: str) -> Any:
    """A logged autoencoder back as a torch module, unpickled: this runs whatever code the model's file holds, so
    only for a model from a trusted source (:func:`download_model_files` and :mod:`aeexp.model_files` run none)."""
    import mlflow.pytorch

    return mlflow.pytorch.load_model(model_uri, map_location="cpu")


class NoModelFiles(TrackingError):
    """The model exists but has no :mod:`aeexp.model_files` (logged by an older aeexp, or outside aeexp)."""


def download_model_files(model_uri: str, destination: Path) -> Path:
    """The folder of :mod:`aeexp.model_files` of the logged model ``model_uri`` (``runs:/<id>/model``,
    ``models:/<name>/<version>``, ...), downloaded under ``destination``; the pickled model is not fetched.

    NoModelFiles when the model exists without them; TrackingError (one line) when there is no such model.
    """
    import mlflow.artifacts

    base = model_uri.rstrip("/")
    try:
        folder = Path(mlflow.artifacts.download_artifacts(f"{base}/{model_files.FOLDER}", dst_path=str(destination)))
        if model_files.present(folder):
            return folder
    except Exception as err:  # MlflowException, or OSError from an artifact store
        missing = short_error(err)
    else:
        missing = f"{folder} lacks them"
    try:
        mlflow.artifacts.download_artifacts(f"{base}/MLmodel", dst_path=str(destination / "probe"))
    except Exception:
        raise TrackingError(redact(f"cannot load model {model_uri} from {mlflow.get_tracking_uri()}: {missing}; check "
                                   "the run id and that the run logged its model under model/ (e.g. "
                                   "runs:/<run id>/model)")) from None
    raise NoModelFiles(f"{model_uri} has no {model_files.FOLDER}/{model_files.WEIGHTS} (logged by an older aeexp, or "
                       "outside aeexp)")


def open_run(experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Create a run that outlives this call and is not the active run (a sweep's parent); end it with
    :func:`end_run_by_id`."""
    client = MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    run = client.create_run(experiment_id, run_name=run_name, tags=_redacted(tags))
    for batch in _param_batches(params):
        client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in batch.items()])
    return run.info.run_id


def record_failed_run(experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any],
                      error: str, parent_run_id: str | None) -> str:
    """A run that failed before it could start (e.g. a sweep job with invalid values), marked FAILED."""
    all_tags = {**tags, "error": error[:5000]}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run_id = open_run(experiment, run_name, all_tags, params)
    end_run_by_id(run_id, "FAILED")
    return run_id


def end_run_by_id(run_id: str, status: str) -> None:
    MlflowClient().set_terminated(run_id, status=status)


def reopen_run(run_id: str) -> None:
    """Mark an ended (or abandoned) run RUNNING again, without making it the active run (a resumed sweep's
    parent); end it with :func:`end_run_by_id`."""
    MlflowClient().update_run(run_id, status="RUNNING")


def set_run_tag(run_id: str, key: str, value: str) -> None:
    MlflowClient().set_tag(run_id, key, redact(value)[:5000])


def get_run(run_id: str) -> RunRecord:
    try:
        return _record(MlflowClient().get_run(run_id))
    except Exception as err:
        raise TrackingError(f"no run {run_id!r} at {redact(mlflow.get_tracking_uri())} ({type(err).__name__})"
                            ) from None


def child_runs(parent_run_id: str) -> list[RunRecord]:
    """The runs whose parent is ``parent_run_id``, oldest first."""
    parent = MlflowClient().get_run(parent_run_id)
    runs = MlflowClient().search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                      order_by=["attributes.start_time ASC"], max_results=10_000)
    return [_record(run) for run in runs]


def experiment_runs(experiment: str) -> list[RunRecord]:
    """All runs of an experiment, oldest first."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} at {redact(mlflow.get_tracking_uri())}")
    runs = MlflowClient().search_runs([found.experiment_id], order_by=["attributes.start_time ASC"],
                                      max_results=10_000)
    return [_record(run) for run in runs]


def download_artifact(run_id: str, path: str, destination: Path) -> Path | None:
    """A run's artifact copied under ``destination``; None when the run has no such artifact."""
    try:
        return Path(MlflowClient().download_artifacts(run_id, path, str(destination)))
    except Exception:
        return None


def has_artifact(run_id: str, path: str) -> bool:
    """Whether run ``run_id`` has the artifact ``path`` (e.g. ``checkpoint/checkpoint.pt``)."""
    folder = path.rsplit("/", 1)[0] if "/" in path else None
    try:
        return any(a.path == path for a in MlflowClient().list_artifacts(run_id, folder))
    except Exception:
        return False


def log_artifacts_to(run_id: str, directory: Path, artifact_path: str) -> None:
    """Log every file of ``directory`` to run ``run_id`` (which need not be the active run)."""
    MlflowClient().log_artifacts(run_id, str(directory), artifact_path)


def short_error(err: BaseException) -> str:
    """An MLflow error in one line: the database's own error for an SQL store (whose messages go on with the
    statement and its parameters), else the first line."""
    lines = str(err).splitlines() or [type(err).__name__]
    database_error = next((line for line in lines if line.startswith("(") and "Error)" in line), lines[0])
    return database_error[:300]


def metric_steps(run_id: str, keys: Iterable[str]) -> dict[str, set[int]]:
    """The steps at which run ``run_id`` has logged each metric of ``keys``."""
    client = MlflowClient()
    return {key: {metric.step for metric in client.get_metric_history(run_id, key)} for key in keys}


def delete_tag(run_id: str, key: str) -> None:
    MlflowClient().delete_tag(run_id, key)


def delete_artifacts(artifact_path: str) -> None:
    """Delete a file or folder of the active run's artifacts (where the artifact store allows it)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(mlflow.get_artifact_uri()).delete_artifacts(artifact_path)
