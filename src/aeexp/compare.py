"""Sweep comparison report: a table of every child's overrides and final metrics, the same aggregated over seeds,
metric-vs-bottleneck plots, the children's reconstructions and t-SNE figures side by side, and report.html with all
of it; from a parent run or a whole experiment.

``python -m aeexp.compare --experiment fashion_mnist`` or ``aeexp compare --parent-run <id>``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aeexp import plots, report
from aeexp.errors import AeexpError
from aeexp.tracking import RunRecord

log = logging.getLogger(__name__)

METRICS = ("val_loss", "test_loss", "test_mse", "pca_test_mse", "test_knn_acc", "pca_knn_acc", "embed_knn_acc",
           "embed_trust")
PLOTTED = ("test_loss", "test_mse", "test_knn_acc", "embed_knn_acc")
# A metric's baseline, drawn dashed in the metrics plot: PCA of the same size (aeexp.baseline).
BASELINES = {"test_mse": "pca_test_mse", "test_knn_acc": "pca_knn_acc"}
SETTINGS_CSV = "comparison_by_setting.csv"
# The figures of report.html, in order (optuna_history.png is written by aeexp's Optuna sweeper).
FIGURES = (("Metrics against bottleneck size (dashed: PCA of the same size)", "metrics_vs_bottleneck.png"),
           ("The same test images through each run", "reconstruction_panel.png"),
           ("t-SNE of each run's codes", "tsne_panel.png"), ("Optuna: the objective per trial", "optuna_history.png"))
COLUMNS = ("run", "status", "overrides", "dataset", "model", "bottleneck", *METRICS, "error")
# Of metrics_vs_bottleneck.png, reconstruction_panel.png and tsne_panel.png.
PLOT_DPI, RECONSTRUCTION_DPI, PANEL_DPI = 100, 90, 80


def _varying_overrides(runs: Sequence[RunRecord]) -> list[str]:
    """Each run's job overrides, keeping only those that differ between runs (the sweep's choices)."""
    split = [[o for o in run.tags.get("sweep.job_overrides", "").split() if not o.startswith("sweep.")]
             for run in runs]  # (sweep.resume=: how the sweep ran, not what the job is)
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


def sweep_title(name: str) -> str:
    """The comparison report's title of the sweep named ``name``: ``sweep seed=0,1,2``, ``sweep bottleneck_sweep``."""
    return name if name.startswith("sweep ") else f"sweep {name}"


def to_markdown(rows: Sequence[dict[str, str]], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _write_tables(runs: Sequence[RunRecord], groups: Sequence[report.Setting], out_dir: Path, title: str
                  ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """comparison.csv (a row per run), comparison_by_setting.csv (a row per setting) and comparison.md (both)."""
    rows = table_rows(runs)
    setting_rows = report.aggregated_rows(groups, METRICS)
    for path, columns, content in ((out_dir / "comparison.csv", COLUMNS, rows),
                                   (out_dir / SETTINGS_CSV, report.aggregated_columns(METRICS), setting_rows)):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(content)
    (out_dir / "comparison.md").write_text(
        to_markdown(rows, title) + "\n## By setting: mean ± standard deviation over seeds\n\n"
        + report.aggregated_markdown(setting_rows, METRICS))
    return rows, setting_rows


def _save(figure: plots.Figure | None, path: Path, dpi: int) -> list[Path]:
    if figure is None:
        return []
    figure.savefig(path, dpi=dpi)
    plots.plt.close(figure)
    return [path]


def bottleneck_figure(runs: Sequence[RunRecord]) -> plots.Figure:
    """``PLOTTED`` metrics against the bottleneck: a line per setting but its bottleneck (mean and spread over seeds,
    from the finished runs), PCA's dashed."""
    return plots.metrics_vs_bottleneck(report.curves(report.settings(runs), PLOTTED, BASELINES), PLOTTED)


def tsne_panel(runs: Sequence[RunRecord], scratch: Path) -> plots.Figure | None:
    """The runs' ``tsne.png`` side by side, titled with the run names (downloaded to ``scratch``); None if no run
    has one."""
    import matplotlib.image

    from aeexp import tracking

    images, titles = [], []
    for run in runs:
        path = tracking.download_artifact(run.run_id, "tsne.png", scratch / run.run_id)
        if path is not None:
            images.append(matplotlib.image.imread(path))
            titles.append(run.name)
    return plots.image_panel(images, titles) if images else None


def write_report(runs: Sequence[RunRecord], out_dir: Path, title: str, ui: str | None = None) -> list[Path]:
    """Write the comparison tables, metrics_vs_bottleneck.png, reconstruction_panel.png, tsne_panel.png and
    report.html (runs linked to the MLflow UI at ``ui``, default: that of the tracking store) to ``out_dir``."""
    from aeexp import tracking

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = report.settings(runs)
    rows, setting_rows = _write_tables(runs, groups, out_dir, title)
    written = [out_dir / "comparison.csv", out_dir / SETTINGS_CSV, out_dir / "comparison.md"]
    written += _save(bottleneck_figure(runs), out_dir / "metrics_vs_bottleneck.png", PLOT_DPI)
    written += _save(report.reconstruction_panel(runs, tracking.download_artifact),
                     out_dir / "reconstruction_panel.png", RECONSTRUCTION_DPI)
    with tempfile.TemporaryDirectory() as scratch:
        written += _save(tsne_panel(runs, Path(scratch)), out_dir / "tsne_panel.png", PANEL_DPI)
    ui = ui or report.ui_base(tracking.current_uri())
    page = report.Page(title, COLUMNS, rows, [report.run_url(ui, run) for run in runs],
                       *report.shown_rows(setting_rows, METRICS),
                       [(heading, out_dir / name) for heading, name in FIGURES])
    written.append(out_dir / "report.html")
    written[-1].write_text(report.page_html(page), encoding="utf-8")
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
    parser.add_argument("--ui-url", default=None, help="the MLflow UI that report.html links runs to (default: the "
                                                       f"tracking server, or {report.DEFAULT_UI} for a local store)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from aeexp import tracking

    try:
        tracking.configure_uri(args.tracking_uri)
        if args.parent_run:
            parent = tracking.get_run(args.parent_run)
            runs, title = tracking.child_runs(args.parent_run), sweep_title(parent.name)
        else:
            runs = [r for r in tracking.experiment_runs(args.experiment) if "sweep.name" not in r.tags]
            title = f"experiment {args.experiment}"
        if not runs:
            raise AeexpError(f"no runs to compare in {args.parent_run or args.experiment}")
        written = write_report(runs, args.out, title, args.ui_url)
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
