"""The sweep report's sections about the sweep as a whole: how stable each setting's codes are across its seeds
(columns of the by-setting table, :mod:`aeexp.evaluation.stability`) and what mattered for the objective
(``importance.csv``, ``importance.png``, ``parallel_coordinates.png``, :mod:`aeexp.importance`)."""

from __future__ import annotations

import csv
import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aeexp import importance, report
from aeexp.evaluation import stability
from aeexp.tracking import RunRecord

log = logging.getLogger(__name__)

IMPORTANCE_CSV, IMPORTANCE_PNG, PARALLEL_PNG = "importance.csv", "importance.png", "parallel_coordinates.png"
OPTUNA_TAG = "optuna.importance."  # the sweep parent's tags of its Optuna study's importances, by parameter
OBJECTIVE = "val_loss"  # a grid sweep's objective: the one aeexp's Optuna sweeper minimises (optuna_search.OBJECTIVE)
FIGURE_DPI = 100


def add_stability(groups: Sequence[report.Setting], rows: Sequence[dict[str, str]],
                  download: report.Download) -> list[str]:
    """Fill in each setting's row (``rows``, in the order of ``groups``) with ``<measure>_mean`` and ``_std`` of
    :data:`~aeexp.evaluation.stability.MEASURES` over the pairs of its finished runs' logged codes; return those
    measures (the columns to show), or none when no setting has two runs with codes. A failure is a warning line:
    the rest of the report is written."""
    try:
        measured = _stability(groups, download)
    except Exception as err:
        log.warning("the report's stability columns were left out (%s)", f"{type(err).__name__}: {err}")
        return []
    if not any(measured):
        return []
    for row, found in zip(rows, measured, strict=True):
        for name in stability.MEASURES:
            mean, std, pairs = found.get(name, (math.nan, math.nan, 0))
            row[f"{name}_mean"] = f"{mean:.4f}" if pairs else ""
            row[f"{name}_std"] = f"{std:.4f}" if pairs > 1 else ""
    return list(stability.MEASURES)


def _stability(groups: Sequence[report.Setting], download: report.Download
               ) -> list[dict[str, tuple[float, float, int]]]:
    """Per setting, :func:`~aeexp.evaluation.stability.across_runs` of its finished runs' logged codes."""
    measured = []
    with tempfile.TemporaryDirectory() as scratch:
        for group in groups:
            codes = []
            for run in group.finished if len(group.finished) > 1 else ():
                path = download(run.run_id, stability.CODES_ARTIFACT, Path(scratch) / run.run_id)
                found = stability.read_codes(path) if path is not None else None
                if found is not None:
                    codes.append(found)
            measured.append(stability.across_runs(codes))
    return measured


def _swept(runs: Sequence[RunRecord]) -> tuple[dict[str, list[str]], list[float]]:
    """The settings that vary among the finished runs with a finite objective (seed and the like left out), each
    run's value of each, and their objective."""
    kept = [run for run in runs if run.status == "FINISHED" and math.isfinite(run.metrics.get(OBJECTIVE, math.nan))]
    values = report.varying(kept)
    keys = list(dict.fromkeys(key for found in values for key in found if report.is_setting_key(key)))
    keys = [key for key in keys if all(key in found for found in values)]
    return {key: [found[key] for found in values] for key in keys}, [run.metrics[OBJECTIVE] for run in kept]


def _optuna_importances(runs: Sequence[RunRecord]) -> dict[str, float] | None:
    """The importances aeexp's Optuna sweeper tagged the runs' sweep parent with (``optuna.importance.<param>``), if
    it did (read as data: finite numbers only)."""
    from aeexp import tracking

    parents = {run.tags.get("mlflow.parentRunId") for run in runs}
    if len(parents) != 1 or None in parents:
        return None
    tags = tracking.get_run(str(parents.pop())).tags
    try:
        found = {key.removeprefix(OPTUNA_TAG): float(value) for key, value in tags.items()
                 if key.startswith(OPTUNA_TAG)}
    except ValueError:
        return None
    return found if found and all(math.isfinite(value) for value in found.values()) else None


def find_importance(runs: Sequence[RunRecord]) -> tuple[importance.Importance | None, dict[str, list[str]],
                                                         list[float]]:
    """The sweep's importances (the Optuna study's, when its sweeper tagged the sweep's parent run with them; else a
    random forest's), its settings and objective; None when the sweep is too small or varies too few settings."""
    settings, objective = _swept(runs)
    if not importance.applies(len(objective), len(settings)):
        return None, settings, objective
    from_optuna = _optuna_importances(runs)
    if from_optuna is not None:
        return importance.Importance(OBJECTIVE, importance.OPTUNA_METHOD, from_optuna), settings, objective
    return (importance.Importance(OBJECTIVE, importance.FOREST_METHOD,
                                  importance.forest_importances(settings, objective)), settings, objective)


def write_importance(runs: Sequence[RunRecord], out_dir: Path) -> tuple[list[Path], str]:
    """For a sweep of 8+ finished runs varying 2+ settings: ``importance.csv``, ``importance.png`` and
    ``parallel_coordinates.png`` in ``out_dir``, and the report's Markdown section; nothing and ``""`` otherwise. A
    failure is a warning line: the rest of the report is written."""
    try:
        return _write_importance(runs, out_dir)
    except Exception as err:
        log.warning("the report's importance section was left out (%s)", f"{type(err).__name__}: {err}")
        return [], ""


def _write_importance(runs: Sequence[RunRecord], out_dir: Path) -> tuple[list[Path], str]:
    found, settings, objective = find_importance(runs)
    if found is None:
        return [], ""
    with (out_dir / IMPORTANCE_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "importance", "objective", "method"])
        writer.writerows([name, f"{value:.4f}", found.objective, found.method] for name, value in found.values.items())
    written = [out_dir / IMPORTANCE_CSV]
    for name, figure in ((IMPORTANCE_PNG, importance.importance_figure(found)),
                         (PARALLEL_PNG, importance.parallel_coordinates(settings, objective, found.objective))):
        figure.savefig(out_dir / name, dpi=FIGURE_DPI)
        importance.plt.close(figure)
        written.append(out_dir / name)
    lines = [f"\n## What mattered: each setting's importance for {found.objective}\n", f"Method: {found.method}; "
             f"{len(objective)} finished runs.\n", "| setting | importance |", "|---|---|",
             *[f"| {name.replace('|', chr(92) + '|')} | {value:.3f} |" for name, value in found.values.items()]]
    return written, "\n".join(lines) + "\n"


def figure_files() -> list[tuple[str, str]]:
    """The report's figures of this module: (heading, file name)."""
    return [("What mattered: each setting's importance for the objective", IMPORTANCE_PNG),
            ("Each run's settings against the objective", PARALLEL_PNG)]


def optuna_importance_tags(study: Any) -> dict[str, str]:
    """The study's own importances as the sweep parent's tags ``optuna.importance.<param>`` (read by the report),
    for a study of 8+ complete trials over 2+ parameters; none otherwise or when Optuna cannot compute them (said in a
    line)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not importance.applies(len(complete), len({key for trial in complete for key in trial.params})):
        return {}
    try:
        found = importance.optuna_importances(study)
    except Exception as err:  # Optuna refuses e.g. a parameter with a single value
        log.warning("the Optuna study's importances could not be computed (%s)", f"{type(err).__name__}: {err}")
        return {}
    return {f"{OPTUNA_TAG}{key}": f"{value:.6g}" for key, value in found.items()}
