"""A real `mlflow server` on 127.0.0.1 for the tests: started on a free port, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

STARTUP_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def mlflow_server(directory: Path, template: Path | None = None, options: Sequence[str] = (),
                  env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run ``mlflow server`` (sqlite backend, artifacts in ``directory``) and yield its URI.

    A new backend store starts as a copy of ``template`` (an empty store MLflow made and migrated) when given.
    ``options``: more command-line options (``--app-name basic-auth``); ``env``: more environment variables.
    """
    store = directory / "server.db"
    if template is not None and not store.exists():
        shutil.copyfile(template, store)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = (directory / "server.log").open("w")
    process = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}",
         "--artifacts-destination", str(directory / "artifacts"), *options],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # No job runner: by default the server also starts eight processes for MLflow's GenAI jobs, which import
        # MLflow for ~30 s of CPU right after start-up and slow every run logging to it meanwhile.
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
             **(env or {})},
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(directory / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
