"""``.ci/run``, the CI entry point: it sets CI=true itself for the commands it runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _command(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_ci_run_exports_ci_true_to_make(tmp_path):
    """Run the real script with CI unset and stand-ins on PATH for what it calls (make, apt-get, sudo, chromium),
    which record the CI they see instead of installing packages or running the suite."""
    bin_dir, seen = tmp_path / "bin", tmp_path / "seen"
    bin_dir.mkdir()
    _command(bin_dir, "make", f'echo "make $1 CI=${{CI:-unset}}" >> {seen}')
    _command(bin_dir, "apt-get", f'echo "apt-get $1 CI=${{CI:-unset}}" >> {seen}')
    _command(bin_dir, "sudo", '"$@"')
    _command(bin_dir, "chromium", "true")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    made = [line for line in seen.read_text().splitlines() if line.startswith("make")]
    assert made == ["make lint CI=true", "make test CI=true"]


def test_a_hung_test_fails_at_the_configured_per_test_timeout(tmp_path):
    """The suite's per-test limit (pytest-timeout, set in pyproject.toml) is minutes, well inside CI's 90, and a test
    that hangs fails there with a timeout instead of blocking the run: shown with the limit lowered to 2 s."""
    (limit,) = re.findall(r"^timeout = (\d+)$", (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert 5 * 60 <= int(limit) <= 30 * 60
    (tmp_path / "test_hang.py").write_text("import time\n\n\ndef test_hang():\n    time.sleep(120)\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir",
                           str(tmp_path), "-p", "no:cacheprovider", "-o", "timeout=2", str(tmp_path / "test_hang.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "Timeout (>2.0s) from pytest-timeout" in done.stdout and "1 failed" in done.stdout, done.stdout[-2000:]


def test_setup_checks_torchs_version_without_importing_torch(tmp_path):
    """``make setup`` checks the torch it installed before numpy is there; importing torch then warns "Failed to
    initialize NumPy" during every install. The check, as ``make -n`` prints it, passes where importing torch fails."""
    printed = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=True).stdout
    python = f"{tmp_path / 'venv'}/bin/python"
    checks = [line for line in printed.splitlines() if line.startswith(f"{python} -c") and "2.13.0" in line]
    assert checks, printed
    unimportable = tmp_path / "no-torch" / "torch"
    unimportable.mkdir(parents=True)
    (unimportable / "__init__.py").write_text("raise ImportError('the check imported torch')\n")
    for check in checks:
        done = subprocess.run(check.replace(python, sys.executable, 1), shell=True, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(unimportable.parent)})
        assert done.returncode == 0 and not done.stderr, (check, done.stderr)
