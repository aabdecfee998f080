"""Sweep comparison report: a table of every child's overrides and final metrics, the same aggregated over seeds,
metric-vs-bottleneck plots, the children's reconstructions and each 2-D view's figures side by side, and report.html
with all of it; from a parent run or a whole experiment. The metrics and views shown are those the runs logged
(:func:`aeexp.report.shown`): a metric or view of one's own gets its columns, plot and panel.

``python -m aeexp.compare --experiment fashion_mnist`` or ``aeexp compare --parent-run <id>``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aeexp import report
from aeexp.errors import AeexpError
from aeexp.evaluation import figures
from aeexp.tracking import RunRecord

log = logging.getLogger(__name__)

SETTINGS_CSV = "comparison_by_setting.csv"
OPTUNA_HISTORY = "optuna_history.png"  # written by aeexp's Optuna sweeper
RUN_COLUMNS, LAST_COLUMN = ("run", "status", "overrides", "dataset", "model", "bottleneck"), "error"
# Of metrics_vs_bottleneck.png, reconstruction_panel.png and <view>_panel.png.
PLOT_DPI, RECONSTRUCTION_DPI, PANEL_DPI = 100, 90, 80


def columns(metrics: Sequence[str]) -> list[str]:
    """The columns of the table of runs: who the run is, its ``metrics``, its error."""
    return [*RUN_COLUMNS, *metrics, LAST_COLUMN]


def figure_files(views: Sequence[str]) -> list[tuple[str, str]]:
    """The figures of report.html, in order: (heading, file name)."""
    return [("Metrics against bottleneck size (dashed: PCA of the same size)", "metrics_vs_bottleneck.png"),
            ("The same test images through each run", "reconstruction_panel.png"),
            *[(f"2-D view {view} of each run's codes", f"{view}_panel.png") for view in views],
            ("Optuna: the objective per trial", OPTUNA_HISTORY)]


def _varying_overrides(runs: Sequence[RunRecord]) -> list[str]:
    """Each run's job overrides, keeping only those that differ between runs (the sweep's choices)."""
    split = [[o for o in run.tags.get("sweep.job_overrides", "").split() if not o.startswith("sweep.")]
             for run in runs]  # (sweep.resume=: how the sweep ran, not what the job is)
    counts: dict[str, int] = {}
    for overrides in split:
        for override in set(overrides):
            counts[override] = counts.get(override, 0) + 1
    return [" ".join(o for o in overrides if counts[o] < len(runs) or len(runs) == 1) for overrides in split]


def table_rows(runs: Sequence[RunRecord], metrics: Sequence[str]) -> list[dict[str, str]]:
    """One row per run: name, status, overrides, dataset, model, bottleneck, final ``metrics``, error."""
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
        row.update({m: f"{run.metrics[m]:.4f}" if m in run.metrics else "" for m in metrics})
        rows.append(row)
    return rows


def sweep_title(name: str) -> str:
    """The comparison report's title of the sweep named ``name``: ``sweep seed=0,1,2``, ``sweep bottleneck_sweep``."""
    return name if name.startswith("sweep ") else f"sweep {name}"


def to_markdown(rows: Sequence[dict[str, str]], title: str, metrics: Sequence[str]) -> str:
    head = columns(metrics)
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in head) + " |")
    return "\n".join(lines) + "\n"


def _write_tables(runs: Sequence[RunRecord], groups: Sequence[report.Setting], metrics: Sequence[str], out_dir: Path,
                  title: str) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    """comparison.csv (a row per run), comparison_by_setting.csv (a row per setting, with the stability of its codes
    across seeds) and comparison.md (both); also return the by-setting table's measures."""
    from aeexp import sweep_insight, tracking

    rows = table_rows(runs, metrics)
    setting_rows = report.aggregated_rows(groups, metrics)
    by_setting = [*metrics, *sweep_insight.add_stability(groups, setting_rows, tracking.download_artifact)]
    for path, fields, content in ((out_dir / "comparison.csv", columns(metrics), rows),
                                  (out_dir / SETTINGS_CSV, report.aggregated_columns(by_setting), setting_rows)):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(content)
    (out_dir / "comparison.md").write_text(
        to_markdown(rows, title, metrics) + "\n## By setting: mean ± standard deviation over seeds\n\n"
        + report.aggregated_markdown(setting_rows, by_setting))
    return rows, setting_rows, by_setting


def _save(figure: figures.Figure | None, path: Path, dpi: int) -> list[Path]:
    if figure is None:
        return []
    figure.savefig(path, dpi=dpi)
    figures.plt.close(figure)
    return [path]


def bottleneck_figure(runs: Sequence[RunRecord]) -> figures.Figure | None:
    """The plotted metrics (:func:`aeexp.report.shown`) against the bottleneck: a line per setting but its bottleneck
    (mean and spread over seeds, from the finished runs), PCA's dashed; None when the runs logged none of them."""
    shown = report.shown(runs)
    if not shown.plotted:
        return None
    return figures.metrics_vs_bottleneck(report.curves(report.settings(runs), shown.plotted, shown.baselines),
                                         shown.plotted)


def view_panel(runs: Sequence[RunRecord], view: str, scratch: Path) -> figures.Figure | None:
    """The runs' ``<view>.png`` side by side, titled with the run names (downloaded to ``scratch``); None if no run
    has one."""
    import matplotlib.image

    from aeexp import tracking

    images, titles = [], []
    for run in runs:
        path = tracking.download_artifact(run.run_id, f"{view}.png", scratch / run.run_id)
        if path is not None:
            images.append(matplotlib.image.imread(path))
            titles.append(run.name)
    return figures.image_panel(images, titles) if images else None


def write_report(runs: Sequence[RunRecord], out_dir: Path, title: str, ui: str | None = None) -> list[Path]:
    """Write the comparison tables, metrics_vs_bottleneck.png, reconstruction_panel.png, a ``<view>_panel.png`` per
    2-D view and report.html (runs linked to the MLflow UI at ``ui``, default: that of the tracking store) to
    ``out_dir``."""
    from aeexp import sweep_insight, tracking

    out_dir.mkdir(parents=True, exist_ok=True)
    shown = report.shown(runs)
    rows, setting_rows, by_setting = _write_tables(runs, report.settings(runs), shown.columns, out_dir, title)
    written = [out_dir / "comparison.csv", out_dir / SETTINGS_CSV, out_dir / "comparison.md"]
    insight_files, insight_markdown = sweep_insight.write_importance(runs, out_dir)
    if insight_markdown:
        with (out_dir / "comparison.md").open("a", encoding="utf-8") as handle:
            handle.write(insight_markdown)
    written += insight_files
    written += _save(bottleneck_figure(runs), out_dir / "metrics_vs_bottleneck.png", PLOT_DPI)
    written += _save(report.reconstruction_panel(runs, tracking.download_artifact),
                     out_dir / "reconstruction_panel.png", RECONSTRUCTION_DPI)
    with tempfile.TemporaryDirectory() as scratch:
        for view in shown.views:
            written += _save(view_panel(runs, view, Path(scratch)), out_dir / f"{view}_panel.png", PANEL_DPI)
    ui = ui or report.ui_base(tracking.current_uri())
    page = report.Page(title, columns(shown.columns), rows, [report.run_url(ui, run) for run in runs],
                       *report.shown_rows(setting_rows, by_setting),
                       [(heading, out_dir / name)
                        for heading, name in [*figure_files(shown.views), *sweep_insight.figure_files()]])
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
    metrics = report.shown(runs).columns
    print(to_markdown(table_rows(runs, metrics), title, metrics))
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    from aeexp.shutdown import run_and_exit

    run_and_exit(main)
