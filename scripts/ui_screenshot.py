"""docs/mlflow-ui.png: the MLflow UI as it opens on aeexp's runs, from a real sweep, so that the README's picture
can be made again whenever aeexp or MLflow changes.

    python scripts/ui_screenshot.py                     # a sweep of the defaults on digits, then the screenshot
    python scripts/ui_screenshot.py --set trainer.epochs=10 --out /tmp/ui.png      # a quicker look

It runs ``python -m aeexp -m model.bottleneck=2,4,8`` (the defaults otherwise: digits, early stopping) into a
temporary sqlite store, serves it with ``mlflow server --app-name aeexp --workers 1`` (what ``mlflow ui --app-name
aeexp`` serves), opens the link the sweep printed in a fresh headless Chromium (Debian's ``chromium``), unfolds the
sweep's parent run and saves the window. It uses the test suite's helpers (``tests/browser.py``,
``tests/mlflow_server.py``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["-m", "model.bottleneck=2,4,8", "embed=pca"]
SIZE = (1500, 620)


def _sweep(folder: Path, extra: list[str]) -> tuple[str, str, list[str]]:
    """Run the sweep into ``folder/server.db``; the link it printed, its parent's and its jobs' run names."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder / 'server.db'}"
    done = subprocess.run([sys.executable, "-m", "aeexp", *SWEEP, *extra, f"tracking.uri={uri}",
                           "trainer.progress=false"], cwd=folder, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"the sweep failed:\n{output[-3000:]}")
    link = re.search(r"the sweep in the MLflow UI: (\S+)", output)
    if link is None:
        sys.exit(f"the sweep printed no link to the MLflow UI:\n{output[-3000:]}")
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(run for run in runs if "sweep.name" in run.data.tags)
    children = sorted(run.info.run_name for run in runs if run is not parent)
    return link.group(1), parent.info.run_name, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-ui.png")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides of the sweep")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import screenshot_sweep
    from mlflow_server import mlflow_server

    from aeexp import mlflow_ui

    with tempfile.TemporaryDirectory(prefix="aeexp-ui-") as scratch:
        folder = Path(scratch)
        link, parent, children = _sweep(folder, args.set)
        with mlflow_server(folder, options=["--app-name", "aeexp"]) as server:
            screenshot_sweep(server, "", parent, children, args.out, link=link.replace(mlflow_ui.DEFAULT_UI, server),
                             size=SIZE)
    print(f"wrote {args.out}: {parent} and its jobs {', '.join(children)}")


if __name__ == "__main__":
    main()
