"""``.ci/run``, the CI entry point: it sets CI=true itself for the commands it runs."""

from __future__ import annotations

import os
import subprocess
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
