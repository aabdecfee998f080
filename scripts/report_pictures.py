"""docs/report.png and docs/metrics_vs_bottleneck.png: a sweep's comparison report made from aeexp's defaults, so
that the README's pictures can be made again whenever aeexp changes.

    python scripts/report_pictures.py                          # the README's pictures (a few minutes on 2 cores)
    python scripts/report_pictures.py --set trainer.epochs=20 --out-dir /tmp/pictures     # a quicker look

It runs ``python -m aeexp -m seed=0,1,2 model.bottleneck=2,4,8 embed=pca`` on the digits (the defaults otherwise:
AdamW, early stopping, at most 300 epochs: where the autoencoder beats PCA of the same size, as BENCHMARKS.md
shows) into a temporary sqlite store, copies the sweep's metrics_vs_bottleneck.png and screenshots the top of its
report.html (the verdict, the tables, the plot) in a fresh headless Chromium (Debian's ``chromium``, through the test
suite's ``tests/browser.py``). It prints the report's verdict and how long it took.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["-m", "seed=0,1,2", "model.bottleneck=2,4,8", "embed=pca", "trainer.progress=false"]
SIZE = (1400, 1250)  # the screenshot's width and height, px


def _sweep(folder: Path, extra: list[str]) -> Path:
    """Run the sweep in ``folder``; its report's folder."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "aeexp", *SWEEP, *extra, f"tracking.uri={uri}"], cwd=folder,
                          capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"the sweep failed:\n{output[-3000:]}")
    reports = sorted(folder.glob("multirun/*/*/comparison/report.html"))
    if not reports:
        sys.exit(f"the sweep wrote no report:\n{output[-3000:]}")
    return reports[-1].parent


def _screenshot(page_file: Path, picture: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": SIZE[0], "height": SIZE[1]})
            page.goto(page_file.as_uri())
            page.screenshot(path=str(picture))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="where the two pictures go (docs/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides of the sweep")
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aeexp-report-") as scratch:
        report = _sweep(Path(scratch), args.set)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report / "metrics_vs_bottleneck.png", args.out_dir / "metrics_vs_bottleneck.png")
        _screenshot(report / "report.html", args.out_dir / "report.png")
        verdict = (report / "comparison.md").read_text(encoding="utf-8").split("\n\n")[1].replace("\\", "")
    print(f"verdict: {verdict}")
    print(f"wrote {args.out_dir / 'report.png'} and {args.out_dir / 'metrics_vs_bottleneck.png'} "
          f"in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
