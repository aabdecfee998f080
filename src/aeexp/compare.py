"""Sweep comparison report: a table of every child's overrides and final metrics, metric-vs-bottleneck plots
and the children's t-SNE figures side by side; from a parent run or a whole experiment.

``python -m aeexp.compare --experiment fashion_mnist`` or ``aeexp compare --parent-run <id>``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aeexp.errors import AeexpError
from aeexp.tracking import RunRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

METRICS = ("val_loss", "test_loss", "test_mse", "pca_test_mse", "test_knn_acc", "pca_knn_acc", "embed_knn_acc",
           "embed_trust")
PLOTTED = ("test_loss", "test_knn_acc", "embed_knn_acc")
COLUMNS = ("run", "status", "overrides", "dataset", "model", "bottleneck", *METRICS, "error")
PLOT_DPI, PANEL_DPI = 100, 80  # of metrics_vs_bottleneck.png and tsne_panel.png


def _varying_overrides(runs: Sequence[RunRecord]) -> list[str]:
    """Each run's job overrides, keeping only those that differ between runs (the sweep's choices)."""
    split = [run.tags.get("sweep.job_overrides", "").split() for run in runs]
    counts: dict[str, int] = {}
    for overrides in split:
        for override in set(overrides):
            counts[override] = counts.get(override, 0) + 1
    return [" ".join(o for o in overrides if counts[o] < len(runs) or len(runs) == 1) for overrides in split]


def table_rows(runs: Sequence[RunRecord]) -> list[dict[str, str]]:
    """One row per run: name, status, overrides, dataset, model, bottleneck, final metrics, error."""
    rows = []
    for run, overrides in zip(runs, _varying_overrides(runs), strict=True):
        row = {
            "run": run.name,
            "status": run.status,
            "overrides": overrides,
            "dataset": run.params.get("dataset.name", ""),
            "model": run.params.get("model.name", ""),
            "bottleneck": run.params.get("model.bottleneck", ""),
            "error": run.tags.get("error", "").splitlines()[0][:200] if run.tags.get("error") else "",
        }
        row.update({m: f"{run.metrics[m]:.4f}" if m in run.metrics else "" for m in METRICS})
        rows.append(row)
    return rows


def to_markdown(rows: Sequence[dict[str, str]], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _series(runs: Sequence[RunRecord]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in runs:
        if run.status != "FINISHED" or not run.params.get("model.bottleneck", "").isdigit():
            continue
        label = f"{run.params.get('model.name', '?')} on {run.params.get('dataset.name', '?')}"
        for metric in PLOTTED:
            if metric in run.metrics:
                series.setdefault(metric, {}).setdefault(label, []).append(
                    (int(run.params["model.bottleneck"]), run.metrics[metric]))
    return series


def bottleneck_figure(runs: Sequence[RunRecord]) -> Figure:
    """``PLOTTED`` metrics against the bottleneck, one line per model and dataset, from the finished runs."""
    from aeexp import plots

    return plots.metrics_vs_bottleneck(_series(runs), PLOTTED)


def tsne_panel(runs: Sequence[RunRecord], scratch: Path) -> Figure | None:
    """The runs' ``tsne.png`` side by side, titled with the run names (downloaded to ``scratch``); None if no run
    has one."""
    import matplotlib.image

    from aeexp import plots, tracking

    images, titles = [], []
    for run in runs:
        path = tracking.download_artifact(run.run_id, "tsne.png", scratch / run.run_id)
        if path is not None:
            images.append(matplotlib.image.imread(path))
            titles.append(run.name)
    return plots.image_panel(images, titles) if images else None


def write_report(runs: Sequence[RunRecord], out_dir: Path, title: str) -> list[Path]:
    """Write comparison.csv, comparison.md, metrics_vs_bottleneck.png and tsne_panel.png to ``out_dir``."""
    from aeexp import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs)
    written = [out_dir / "comparison.csv", out_dir / "comparison.md"]
    with written[0].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    written[1].write_text(to_markdown(rows, title))
    with tempfile.TemporaryDirectory() as scratch:
        figures = {"metrics_vs_bottleneck.png": (bottleneck_figure(runs), PLOT_DPI),
                   "tsne_panel.png": (tsne_panel(runs, Path(scratch)), PANEL_DPI)}
    for name, (figure, dpi) in figures.items():
        if figure is not None:
            written.append(out_dir / name)
            figure.savefig(written[-1], dpi=dpi)
            plots.plt.close(figure)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: report on a parent run's children or on an experiment's runs."""
    parser = argparse.ArgumentParser(prog="aeexp compare", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="every run of this MLflow experiment (sweep parents left out)")
    source.add_argument("--parent-run", help="the children of this sweep parent run; the report is also "
                                             "logged to it")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's default)")
    parser.add_argument("--out", type=Path, default=Path("comparison"), help="output folder (default ./comparison)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from aeexp import tracking

    try:
        tracking.configure_uri(args.tracking_uri)
        if args.parent_run:
            parent = tracking.get_run(args.parent_run)
            runs, title = tracking.child_runs(args.parent_run), f"sweep {parent.name}"
        else:
            runs = [r for r in tracking.experiment_runs(args.experiment) if "sweep.name" not in r.tags]
            title = f"experiment {args.experiment}"
        if not runs:
            raise AeexpError(f"no runs to compare in {args.parent_run or args.experiment}")
        written = write_report(runs, args.out, title)
        if args.parent_run:
            tracking.log_artifacts_to(args.parent_run, args.out, "comparison")
    except AeexpError as err:
        log.error("error: %s", err)
        return 1
    print(to_markdown(table_rows(runs), title))
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    from aeexp.shutdown import run_and_exit

    run_and_exit(main)
