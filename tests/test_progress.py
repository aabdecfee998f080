"""What a fit prints while it trains: one live bar in a terminal, a few log lines in a log, whatever its length."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

from mlflow_store import runs_in

EPOCHS = 60  # as make demo's progress, on a shorter run: its 300-epoch cap gives the same number of lines
MOST_LINES = 30
# make demo's command (python -m aeexp: progress bar on) on a short digits run with a cheap view
DEMO = ["-m", "aeexp", f"trainer.epochs={EPOCHS}", "trainer.early_stopping.patience=null", "embed=pca",
        "embed.n_samples=200"]


def _env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}


def _in_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``python ARGS`` with its output to a pseudo-terminal (120 columns), as in a person's terminal; its exit
    code and everything it wrote there."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                               stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        code = process.wait(timeout=600)
    return code, b"".join(chunks).decode("utf-8", "replace")


def _progress_lines(output: str) -> list[str]:
    """The lines that report training progress: the bar's (each redraw of it returns to the line's start: one
    line) and the log's ``epoch k/N`` lines."""
    return [line for line in output.replace("\r\n", "\n").split("\n")
            if "epoch" in line and ("training" in line or re.search(r"epoch \d+/", line))]


def test_the_demo_in_a_terminal_shows_one_live_bar(tmp_path, tracking_uri):
    code, output = _in_a_terminal([*DEMO, f"tracking.uri={tracking_uri}"], tmp_path)
    assert code == 0, output[-3000:]
    lines = _progress_lines(output)
    assert 1 <= len(lines) <= MOST_LINES, lines
    bar = [line for line in lines if "training" in line]
    assert len(bar) == 1, lines  # one bar for the whole fit, redrawn in place
    final = bar[0].split("\r")[-1]
    assert f"{EPOCHS}/{EPOCHS}" in final and "epoch" in final and "val_loss=" in final, final
    assert not any(re.search(r"epoch \d+/\d+: train_loss", line) for line in lines)  # no log line per epoch
    assert [run.info.status for run in runs_in(tracking_uri)] == ["FINISHED"]


def test_the_demo_in_a_log_writes_a_line_every_few_epochs(tmp_path, tracking_uri):
    done = subprocess.run([sys.executable, *DEMO, f"tracking.uri={tracking_uri}"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    lines = _progress_lines(output)
    assert 2 <= len(lines) <= MOST_LINES, lines
    assert "\r" not in output and "training:" not in output  # no bar in a log
    assert f"epoch {EPOCHS}/{EPOCHS}: train_loss" in lines[-1], lines
    epochs = [int(re.search(r"epoch (\d+)/", line).group(1)) for line in lines]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)


def test_progress_false_logs_every_epoch(tmp_path, tracking_uri):
    """``trainer.progress=false``: no bar, and a line after each epoch (what batch jobs and the tests read)."""
    code, output = _in_a_terminal(["-m", "aeexp", "trainer.epochs=3", "trainer.progress=false", "embed=pca",
                                   "embed.n_samples=200", f"tracking.uri={tracking_uri}"], tmp_path)
    assert code == 0, output[-3000:]
    lines = _progress_lines(output)
    assert [re.search(r"epoch (\d+/\d+)", line).group(1) for line in lines] == ["1/3", "2/3", "3/3"], lines
