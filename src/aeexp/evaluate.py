"""Re-evaluate finished runs from their logged model and data, writing what they lack back into the same MLflow runs.

``python -m aeexp.evaluate RUN_ID | --parent-run ID | --experiment NAME [--embed tsne,pca,umap] [--metrics NAMES]
[--config-dir DIR]`` (or ``aeexp evaluate ...``). Each finished run's model is made from its config and weights
(nothing unpickled unless ``--trust-pickle``), its dataset is read again from its config with its seed (the same
splits), and the final metrics are measured again: ``test_*``, the PCA baseline ``pca_*`` and, with ``--embed``, the
2-D views (``embed_<view>_*``, ``<view>.png``, and ``explorer.html`` of the first where the run has none). The
metrics and views are aeexp's and the user's configs as composed now (``--config-dir``), never those a run stored.
They are logged at the run's final step (the epochs it trained) where that metric has no value at that step yet;
what the run already has is kept as it was. A sweep's comparison report is written anew and logged to its parent run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aeexp.errors import AeexpError, TrackingError

log = logging.getLogger(__name__)

EVALUATED_TAG = "aeexp.evaluated"
SWEEP_TAG = "sweep.name"  # a sweep's parent run has it (aeexp.sweep)
# The metrics whose last step is the epochs a run trained, in the order they are looked for.
STEP_METRICS = ("stopped_epoch", "test_loss", "train_loss")


class Unavailable(AeexpError):
    """A run cannot be evaluated: its model, config or data cannot be found or loaded."""


@dataclass
class Evaluated:
    """One run evaluated: what was measured, what was logged (missing before) and what was already there."""

    run_id: str
    name: str
    step: int
    measured: dict[str, float]
    added: dict[str, float]
    figures: list[str] = field(default_factory=list)
    skipped_views: list[str] = field(default_factory=list)
    not_computed: dict[str, str] = field(default_factory=dict)  # what could not be computed on its data, and why

    def kept(self, logged: dict[str, float]) -> dict[str, float]:
        """The measured metrics the run already had, each with its difference (logged - measured)."""
        return {key: logged[key] - value for key, value in self.measured.items()
                if key not in self.added and key in logged and not key.startswith("embed_")}

    def line(self, logged: dict[str, float]) -> str:
        """What was done, in one line."""
        added = f"added {len(self.added)} metrics ({', '.join(sorted(self.added))})" if self.added else \
            "added no metrics"
        if self.figures:
            added += f" and {', '.join(self.figures)}"
        kept = self.kept(logged)
        said = f"run {self.run_id} ({self.name}) at step {self.step}: {added}"
        if kept:
            key = max(kept, key=lambda k: abs(kept[k]))
            said += (f"; {len(kept)} already logged, kept as they were (largest difference from the value measured "
                     f"now: {key} {kept[key]:+.2g})")
        if self.skipped_views:
            said += f"; views already there: {', '.join(self.skipped_views)}"
        if self.not_computed:
            said += f"; could not compute (tagged skipped.*): {', '.join(self.not_computed)}"
        return said


# --- one run ------------------------------------------------------------------------------------------------------


def stored_config(run_id: str, scratch: Path) -> Any:
    """The resolved config run ``run_id`` logged (its ``config.yaml`` artifact), read as data (no interpolation
    resolved, no target built but aeexp's own or an allowed one: :mod:`aeexp.stored_config`), checked against aeexp's
    schema; without its metric, view and health lists (evaluate measures with its own, :func:`evaluation_lists`)."""
    from omegaconf import OmegaConf

    from aeexp import stored_config, tracking

    path = tracking.download_artifact(run_id, "config.yaml", scratch)
    if path is None:
        raise Unavailable("its config.yaml artifact is missing, so its data cannot be read again")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise Unavailable(f"its config.yaml is unreadable ({type(err).__name__}: {err})".splitlines()[0]) from None
    try:
        config = stored_config.parse(text, "its config.yaml")
        for key in ("metrics", "health"):  # measured with this command's lists, never built from the stored ones
            config.pop(key, None)
        if OmegaConf.is_dict(config.get("embed")):
            config.embed.pop("views", None)
        stored_config.check_targets(config, "its config.yaml")
        return stored_config.with_schema(config, "its config.yaml")
    except stored_config.StoredConfigError as err:
        raise Unavailable(str(err)) from None


def final_step(steps: dict[str, set[int]]) -> int:
    """The step of a run's final metrics: the epochs it trained (the last step of ``stopped_epoch``, else of
    ``test_loss``, else of ``train_loss``)."""
    for key in STEP_METRICS:
        if steps.get(key):
            return max(steps[key])
    raise Unavailable("it has no training history (no train_loss), so it is not a trained aeexp run")


def _model(run_id: str, tracking_uri: str | None, trust_pickle: bool) -> Any:
    from aeexp import encode

    try:
        return encode.load_model(f"runs:/{run_id}/model", tracking_uri, trust_pickle).module
    except AeexpError as err:
        raise Unavailable(f"its model cannot be loaded: {err}") from None


def _dataset(cfg: Any, device: Any) -> Any:
    from aeexp import data

    try:
        return data.load(data.build(cfg.dataset), cfg.seed).to(device)
    except AeexpError as err:
        raise Unavailable(f"its data cannot be read again: {err}") from None


def _view_files(subject: Any, codes: Any, views: dict[str, Any], n_samples: int, skips: Any, explorer: bool
                ) -> tuple[dict[str, float], dict[str, Any]]:
    """The 2-D ``views`` of the test codes, on the run's own sample: their metrics, and what makes their figures
    (and with ``explorer`` the explorer page of the first)."""
    from aeexp.evaluation import pictures, pipeline

    results, shown = pipeline.embed(codes, pipeline.labels_of(subject.dataset.test), views, n_samples, subject.seed,
                                    skips)
    return results, pictures.view_contents(subject, shown, results, explorer)


def _missing_views(run_id: str, names: Sequence[str], steps: dict[str, set[int]], step: int) -> list[str]:
    """Those of views ``names`` whose metrics at ``step`` or figure the run lacks."""
    from aeexp import tracking

    return [name for name in names
            if not all(step in steps.get(f"embed_{name}_{key}", set()) for key in ("trust", "time"))
            or not tracking.has_artifact(run_id, f"{name}.png")]


def evaluation_lists(views: Sequence[str] = (), metrics: Sequence[str] = (), config_dir: Path | None = None) -> Any:
    """The metrics (the config's, or the ``metrics`` group's options ``metrics``) and the 2-D views (the ``embed``
    group's options ``views``: none when empty) that aeexp's packaged configs and a user's ``config_dir`` define
    now, built (:class:`aeexp.evaluation.lists.Lists`); ConfigError (one line) for an unknown name."""
    from aeexp.evaluation import lists

    overrides = []
    if views:
        overrides.append(f"embed=[{','.join(views)}]")
    if metrics:
        overrides.append(f"metrics=[{','.join(metrics)}]")
    built = lists.build(lists.compose(overrides, config_dir))
    return built if views else lists.Lists(built.metrics, {}, built.health)


def _same_data(record: Any, digest: str) -> dict[str, str]:
    """Refuse (Unavailable) to evaluate a run on data whose hash differs from the one it logged (``data.hash``): its
    splits would be other images. The tags to add: a run logged before the hash gets the hash of the data it was
    evaluated on, ``aeexp.evaluated.data.hash``."""
    from aeexp.run_record import DATA_HASH_TAG

    logged = record.tags.get(DATA_HASH_TAG)
    if logged is None:
        return {f"{EVALUATED_TAG}.{DATA_HASH_TAG}": digest}
    if logged != digest:
        raise Unavailable(f"its data changed since it ran ({DATA_HASH_TAG} {logged[:15]}... then, {digest[:15]}... "
                          "now: images added, removed or changed), so its splits would be other images; nothing was "
                          "measured or logged: evaluate it on the data it ran on")
    return {}


def evaluate_run(run_id: str, tracking_uri: str | None = None, evaluation: Any = None,
                 trust_pickle: bool = False) -> Evaluated:
    """Measure run ``run_id``'s final metrics again (and the views of ``evaluation``, a
    :class:`~aeexp.evaluation.lists.Lists`; default: the packaged metrics, no views) from its logged model and data,
    and log those it lacks at its final step, the figures it lacks, the tag ``aeexp.evaluated`` and a tag
    ``skipped.<name>`` for what could not be computed. Unavailable (one line) when its model, config or data cannot
    be found, or its data changed since it ran; the run's status is left as it is. Another ``evaluate`` of the same
    run in this machine is waited for (:mod:`aeexp.run_lock`): each metric gets one value at the step."""
    from aeexp import run_lock, tracking

    def say_wait() -> None:
        print(f"run {run_id}: another aeexp evaluate of it is under way; waiting for it to finish", file=sys.stderr)

    with run_lock.holding(tracking.current_uri(), run_id, say_wait):
        return _evaluate_held(run_id, tracking_uri, evaluation or evaluation_lists(), trust_pickle)


def _evaluate_held(run_id: str, tracking_uri: str | None, evaluation: Any, trust_pickle: bool) -> Evaluated:
    """:func:`evaluate_run`, its run's lock held."""
    import torch

    from aeexp import run_record, tracking
    from aeexp.evaluation import EXPLORER, guard, pictures, pipeline, stability
    from aeexp.models.inference import resolve_device
    from aeexp.naming import model_label

    record = tracking.get_run(run_id)
    steps = tracking.metric_steps(run_id, record.metrics)
    step = final_step(steps)
    with tempfile.TemporaryDirectory(prefix="aeexp-evaluate-") as scratch:
        folder = Path(scratch)
        cfg = stored_config(run_id, folder)
        model = _model(run_id, tracking_uri, trust_pickle).to(resolve_device("auto"))
        subject = pictures.Subject(model, _dataset(cfg, resolve_device("auto")), model_label(cfg), cfg.seed)
        data_tags = _same_data(record, subject.dataset.digest)
        torch.manual_seed(cfg.seed)  # what draws from the global RNG draws the same on every evaluation
        skips = guard.Skips()
        measured, codes = pipeline.measure(model, subject.dataset, evaluation.metrics, cfg.seed, skips,
                                           health=evaluation.health)
        wanted = _missing_views(run_id, list(evaluation.views), steps, step)
        contents: dict[str, Any] = {}
        if wanted:
            embedded, contents = _view_files(subject, codes, {name: evaluation.views[name] for name in wanted},
                                             cfg.embed.n_samples, skips,
                                             explorer=not tracking.has_artifact(run_id, EXPLORER))
            measured.update(embedded)
        added = run_record.MetricLog(steps, run_id).log(measured, step)
        contents.update(pictures.reconstruction_contents(subject))  # the sweep report's panel needs it
        new_files = pictures.write({name: make for name, make in contents.items()
                                    if not tracking.has_artifact(run_id, name)}, folder, skips, lambda: None)
        if not tracking.has_artifact(run_id, stability.CODES_ARTIFACT):  # the sweep report's stability columns
            new_files.append(stability.write_codes(codes, pipeline.labels_of(subject.dataset.test), folder))
        for path in new_files:
            tracking.log_artifact_to(run_id, path)
    for key, value in {**skips.tags(), **data_tags,
                       EVALUATED_TAG: datetime.now(timezone.utc).isoformat(timespec="seconds")}.items():
        tracking.set_run_tag(run_id, key, value)
    return Evaluated(run_id, record.name, step, measured, added, [path.name for path in new_files],
                     [name for name in evaluation.views if name not in wanted], skips.reasons)


# --- which runs ---------------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """The runs to evaluate, the sweep parents whose reports to write anew, and the runs left out (not finished)."""

    runs: list[Any]
    parents: list[Any]
    unfinished: list[Any]


def _is_parent(run: Any) -> bool:
    return SWEEP_TAG in run.tags


def _named_run(run_id: str) -> Any:
    from aeexp import tracking

    try:
        return tracking.get_run(run_id)
    except TrackingError:
        raise TrackingError(f"no run {run_id!r} at {tracking.redact(tracking.current_uri())}; check the id (the "
                            "MLflow UI shows it) and --tracking-uri") from None


def select(run_id: str | None = None, parent_run: str | None = None, experiment: str | None = None) -> Selection:
    """The runs one of ``run_id``, ``parent_run`` (its jobs) or ``experiment`` (every run, sweep parents' jobs
    included) names; TrackingError (one line) for an unknown one."""
    from aeexp import sweep_resume, tracking

    if run_id is not None:
        run = _named_run(run_id)
        if _is_parent(run):
            raise TrackingError(f"run {run_id} ({run.name}) is a sweep's parent run; give --parent-run {run_id} to "
                                "evaluate its jobs and write its report anew")
        if run.status != "FINISHED":
            raise TrackingError(f"run {run_id} ({run.name}) is {run.status}: only finished runs are evaluated")
        return Selection([run], [], [])
    if parent_run is not None:
        parent = _named_run(parent_run)
        if not _is_parent(parent):
            raise TrackingError(f"run {parent_run} ({parent.name}) is not a sweep's parent run; give its id as "
                                "RUN_ID, or the id of a sweep's parent run")
        candidates, parents = sweep_resume.counted(tracking.child_runs(parent_run)), [parent]
    else:
        every = tracking.experiment_runs(str(experiment))
        parents = [run for run in every if _is_parent(run)]
        candidates = sweep_resume.counted([run for run in every if not _is_parent(run)])
    return Selection([run for run in candidates if run.status == "FINISHED"], parents,
                     [run for run in candidates if run.status != "FINISHED"])


def write_sweep_report(parent: Any, folder: Path) -> list[Path]:
    """The comparison report of sweep ``parent`` over its jobs as they now are, written to ``folder`` and logged to
    the parent under ``comparison/`` (replacing the files of the same names)."""
    from aeexp import compare, sweep_resume, tracking
    from aeexp.sweep import REPORT_DIR

    children = sweep_resume.counted(tracking.child_runs(parent.run_id))
    written = compare.write_report(children, folder, title=compare.sweep_title(parent.tags.get(SWEEP_TAG, parent.name)))
    tracking.log_artifacts_to(parent.run_id, folder, REPORT_DIR)
    return written


# --- the command --------------------------------------------------------------------------------------------------


def _names(values: Sequence[str]) -> list[str]:
    """Option values (``tsne,pca``, or the option given again) as names, in order, each once."""
    return list(dict.fromkeys(name for value in values for name in (part.strip() for part in value.split(","))
                              if name))


def _options(group: str, config_dir: Path | None) -> str:
    """The configs of a group that aeexp ships and ``config_dir`` adds: ``all, pca, tsne, umap``."""
    from importlib.resources import files

    folders = [files("aeexp.conf").joinpath(group), *([Path(config_dir).expanduser() / group] if config_dir else [])]
    return ", ".join(sorted({entry.name.removesuffix(".yaml") for folder in folders if folder.is_dir()
                             for entry in folder.iterdir() if entry.name.endswith(".yaml")}))


def _lists(args: argparse.Namespace) -> Any:
    """The metrics and views the options ask for; ConfigError (one line, naming what there is) otherwise."""
    views, metrics = _names(args.embed), _names(args.metrics)
    try:
        return evaluation_lists(views, metrics, args.config_dir)
    except AeexpError as err:
        raise AeexpError(f"{err} (embed: {_options('embed', args.config_dir)}; metrics: "
                         f"{_options('metrics', args.config_dir)}; your own from --config-dir)") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aeexp evaluate", description=__doc__.splitlines()[0],
        epilog="Metrics a run already has at its final step are kept as they were; only missing ones are added. "
               "Exit code 1 if any run could not be evaluated (each named in one line), else 0.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("run_id", metavar="RUN_ID", nargs="?", default=None, help="one finished run")
    source.add_argument("--parent-run", help="every finished job of this sweep parent run; its comparison report "
                                             "is written anew")
    source.add_argument("--experiment", help="every finished run of this MLflow experiment (sweeps' jobs included, "
                                             "their reports written anew)")
    parser.add_argument("--embed", action="append", default=[], metavar="VIEWS",
                        help="add these 2-D views where a run lacks them: configs of the embed group (tsne, pca, "
                             "umap, all, or yours in --config-dir), several as tsne,pca or the option again")
    parser.add_argument("--metrics", action="append", default=[], metavar="METRICS",
                        help="measure these configs of the metrics group (default: default; yours in --config-dir), "
                             "several as default,mine")
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="a folder of your own configs (embed/, metrics/) as `python -m aeexp --config-dir` "
                             "takes; their functions' modules must be importable (PYTHONPATH)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLflow's default, MLFLOW_TRACKING_URI or "
                             "sqlite:///mlflow.db in the current folder)")
    parser.add_argument("--allow-target", action="append", default=[], metavar="CLASS",
                        help="a class of your own (dotted path, e.g. mymodels.SparseAE) that a run's stored "
                             "config may build besides aeexp's models and datasets; repeat it for several")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load the models' pickled form (mlflow.pytorch.load_model), which runs any code the "
                             "file holds, instead of making them from their config and weights: only for models "
                             "from a source you trust, or logged by an aeexp older than their weights files")
    return parser


def _evaluate_each(runs: Sequence[Any], args: argparse.Namespace, evaluation: Any) -> list[Any]:
    """Evaluate each run, printing a line for each (errors to stderr); return those evaluated."""
    done = []
    for run in runs:
        try:
            evaluated = evaluate_run(run.run_id, args.tracking_uri, evaluation, args.trust_pickle)
        except AeexpError as err:
            print(f"error: run {run.run_id} ({run.name}): {err}", file=sys.stderr)
            continue
        except Exception as err:  # anything else: named in one line, and the other runs go on
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            print(f"error: run {run.run_id} ({run.name}) could not be evaluated ({reason})", file=sys.stderr)
            continue
        print(evaluated.line(run.metrics))
        done.append(run)
    return done


def _write_reports(parents: Sequence[Any]) -> int:
    """Write each sweep's report anew, printing a line for each (errors to stderr); return how many failed."""
    from aeexp.compare import sweep_title

    failed = 0
    for parent in parents:
        with tempfile.TemporaryDirectory(prefix="aeexp-report-") as folder:
            try:
                write_sweep_report(parent, Path(folder))
            except Exception as err:
                reason = f"{type(err).__name__}: {err}".splitlines()[0]
                print(f"error: the comparison report of {sweep_title(parent.name)} ({parent.run_id}) failed "
                      f"({reason})", file=sys.stderr)
                failed += 1
                continue
        print(f"wrote the comparison report of {sweep_title(parent.name)} anew to its parent run {parent.run_id} "
              "(comparison/)")
    return failed


def _run(selection: Selection, args: argparse.Namespace, evaluation: Any) -> int:
    """Evaluate the selection, then write the reports of the sweeps it touched; the exit code."""
    done = _evaluate_each(selection.runs, args, evaluation)
    if selection.unfinished:
        print(f"left out {len(selection.unfinished)} runs that did not finish: "
              + ", ".join(f"{run.name} ({run.status})" for run in selection.unfinished))
    touched = {run.tags.get("mlflow.parentRunId") for run in done}
    failed_reports = _write_reports([parent for parent in selection.parents
                                     if args.parent_run is not None or parent.run_id in touched])
    failed = len(selection.runs) - len(done)
    if len(selection.runs) > 1:
        print(f"evaluated {len(done)} of {len(selection.runs)} finished runs"
              + (f"; {failed} could not be, each named in a line of its own" if failed else ""))
    return 1 if failed or failed_reports else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: evaluate runs; 0 when every run was evaluated, 1 with a line for each that was not."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from aeexp import stored_config, tracking

    try:
        evaluation = _lists(args)
        tracking.use_existing_store(args.tracking_uri, "runs to evaluate")
        selection = select(args.run_id, args.parent_run, args.experiment)
    except AeexpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not selection.runs and not selection.unfinished:
        print(f"error: no runs to evaluate in {args.parent_run or args.experiment}", file=sys.stderr)
        return 1
    try:
        with stored_config.allowing(args.allow_target):
            return _run(selection, args, evaluation)
    except KeyboardInterrupt:
        print("error: interrupted; the runs evaluated so far keep what was logged to them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from aeexp.shutdown import run_and_exit

    run_and_exit(main)
