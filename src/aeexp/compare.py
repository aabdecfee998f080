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
    """One row per run: name, status, overrides (a sweep's jobs': those that vary; other runs': the settings that
    tell them apart, :func:`aeexp.report.varying`), dataset, model, bottleneck, final ``metrics``, error."""
    rows = []
    shown = (_varying_overrides(runs) if report.one_sweep(runs)
             else [report.label(values) for values in report.varying(runs)])
    for run, overrides in zip(runs, shown, strict=True):
        row = {
            "run": run.name,
            "status": run.status,
            "overrides": overrides,
            "dataset": run.params.get("dataset.name", ""),
            "model": run.params.get("model.name", ""),
            "bottleneck": report.effective_params(run).get("model.bottleneck", ""),
            "error": run.tags.get("error", "").splitlines()[0][:200] if run.tags.get("error") else "",
        }
        row.update({m: f"{run.metrics[m]:.4f}" if m in run.metrics else "" for m in metrics})
        rows.append(row)
    return rows


def sweep_title(name: str) -> str:
    """The comparison report's title of the sweep named ``name``: ``sweep seed=0,1,2``, ``sweep bottleneck_sweep``."""
    return name if name.startswith("sweep ") else f"sweep {name}"


def to_markdown(rows: Sequence[dict[str, str]], title: str, metrics: Sequence[str], verdict: str = "") -> str:
    """The table of runs in Markdown under ``title`` (and the ``verdict``), every name and value shown as text."""
    lead = f"# {report.markdown_text(title)}\n\n" + (f"{report.markdown_text(verdict)}\n\n" if verdict else "")
    return lead + report.markdown_table(columns(metrics), rows)


def _write_tables(runs: Sequence[RunRecord], groups: Sequence[report.Setting], metrics: Sequence[str], out_dir: Path,
                  title: str, verdict: str) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    """comparison.csv (a row per run), comparison_by_setting.csv (a row per setting, with the stability of its codes
    across seeds) and comparison.md (the ``verdict``, then both); also return the by-setting table's measures."""
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
        to_markdown(rows, title, metrics, verdict) + "\n## By setting: mean ± standard deviation over seeds\n\n"
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
    shown, groups = report.shown(runs), report.settings(runs)
    verdict = report.verdict(groups, shown.baselines)
    rows, setting_rows, by_setting = _write_tables(runs, groups, shown.columns, out_dir, title, verdict)
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
                        for heading, name in [*figure_files(shown.views), *sweep_insight.figure_files()]], verdict)
    written.append(out_dir / "report.html")
    written[-1].write_text(report.page_html(page), encoding="utf-8")
    return written


HELP = """Writes comparison.csv and comparison_by_setting.csv (a row per run, and per setting: the runs that differ
only in their seed, as mean and standard deviation, with how stable their codes are across the seeds),
comparison.md (both, under a one-line verdict: the best setting on test_mse, and by how much over the next and over
PCA), metrics_vs_bottleneck.png, reconstruction_panel.png, a <view>_panel.png per 2-D view, for a sweep of 8 or more
runs varying 2 or more settings importance.csv, importance.png and parallel_coordinates.png, and report.html with
all of it.

Runs are grouped and labelled by the settings that differ between them (a sweep's jobs by their overrides; other
runs by their params, as a resumed run finished). Where it goes: --out FOLDER; else, with --parent-run, the parent
run's artifacts (under comparison/) only; with --experiment, the experiment's artifact folder (its
comparison/ folder) when that folder is on this machine. The last line says where.

examples:
  aeexp compare --experiment digits
  aeexp compare --experiment mnist --tracking-uri sqlite:///mlflow.db --out report/
  aeexp compare --parent-run 5f1c... --tracking-uri http://127.0.0.1:5000"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aeexp compare", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="A comparison report of a sweep's jobs or of an experiment's runs.",
                                     epilog=HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="every run of this MLflow experiment (sweep parents left out)")
    source.add_argument("--parent-run", help="the jobs (child runs) of this sweep's parent run; the report is "
                                             "logged to the parent run under comparison/")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's default, "
                                                             "sqlite:///mlflow.db in this folder)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the folder to write the report to (default: see below)")
    parser.add_argument("--ui-url", default=None, help="the MLflow UI that report.html links runs to (default: the "
                                                       f"tracking server, or {report.DEFAULT_UI} for a local store)")
    return parser


def _report(args: argparse.Namespace, folder: Path) -> tuple[list[RunRecord], str, list[Path]]:
    """The runs compared, the report's title, the files written to ``folder`` (and logged to a parent run)."""
    from aeexp import tracking

    tracking.configure_uri(args.tracking_uri)
    if args.parent_run:
        parent = tracking.get_run(args.parent_run)
        runs, title = tracking.child_runs(args.parent_run), sweep_title(parent.name)
    else:
        runs = [r for r in tracking.experiment_runs(args.experiment) if "sweep.name" not in r.tags]
        title = f"experiment {args.experiment}"
    if not runs:
        raise AeexpError(f"no runs to compare in {args.parent_run or args.experiment}")
    written = write_report(runs, folder, title, args.ui_url)
    if args.parent_run:
        tracking.log_artifacts_to(args.parent_run, folder, "comparison")
    return runs, title, written


def _experiment_folder(args: argparse.Namespace) -> Path:
    """Where ``--experiment`` writes without ``--out``: ``comparison/`` in the experiment's artifact folder."""
    from aeexp import tracking

    tracking.configure_uri(args.tracking_uri)
    folder = tracking.local_artifact_folder(args.experiment)
    if folder is None:
        raise AeexpError(f"the artifacts of experiment {args.experiment!r} are not in a folder on this machine: "
                         "give --out <folder> for the report")
    return folder / "comparison"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: report on a parent run's children or on an experiment's runs."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with tempfile.TemporaryDirectory(prefix="aeexp-compare-") as scratch:
            folder = args.out or (Path(scratch) if args.parent_run else _experiment_folder(args))
            runs, title, written = _report(args, folder)
    except AeexpError as err:
        log.error("error: %s", err)
        return 1
    shown = report.shown(runs)
    print(to_markdown(table_rows(runs, shown.columns), title, shown.columns,
                      report.verdict(report.settings(runs), shown.baselines)))
    if args.out or not args.parent_run:
        log.info("wrote %d files to %s: open %s", len(written), folder, folder / "report.html")
    if args.parent_run:
        log.info("logged the report to parent run %s under comparison/ (its Artifacts tab in the MLflow UI)",
                 args.parent_run)
    return 0


if __name__ == "__main__":
    from aeexp.shutdown import run_and_exit

    run_and_exit(main)
