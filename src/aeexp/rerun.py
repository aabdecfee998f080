"""Run a logged run again from its own logged config, into a new run tagged ``rerun.of``, and say whether it
reproduced: each final metric, the original's value, the new one and their difference against a tolerance, and
whether the data hash and the package versions match.

``aeexp rerun RUN_ID [--tracking-uri URI] [--allow-target DOTTED.PATH]`` (or ``python -m aeexp.rerun``). The config is
read as data (:mod:`aeexp.stored_config`: no interpolation resolved, only aeexp's own targets built).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeexp.errors import AeexpError

log = logging.getLogger(__name__)

RERUN_TAG = "rerun.of"
# Metrics compared within a tolerance rather than exactly (absolute): the t-SNE view's, whose multi-threaded
# neighbour search and gradient (openTSNE) are not promised to give the same bits from one thread count or machine to
# the next; the first view's also as embed_knn_acc and embed_trust.
TOLERANCES = {"embed_tsne_": 0.02}
TIMINGS = ("_time",)  # seconds: never the same, not compared
COMPARED_TAGS = ("data.hash", "git.commit")  # besides versions.*


@dataclass
class Row:
    """One final metric of the original and of the re-run."""

    metric: str
    original: float
    new: float
    tolerance: float

    @property
    def difference(self) -> float:
        return self.new - self.original

    @property
    def within(self) -> bool:
        same = self.original == self.new or (math.isnan(self.original) and math.isnan(self.new))
        return same or abs(self.difference) <= self.tolerance


def tolerance(metric: str, first_view: str = "") -> float:
    """The largest difference accepted for ``metric`` (0: it must be reproduced exactly); ``embed_knn_acc`` and
    ``embed_trust`` are the ``first_view``'s."""
    if metric in ("embed_knn_acc", "embed_trust") and first_view:
        metric = metric.replace("embed_", f"embed_{first_view}_", 1)
    return next((value for prefix, value in TOLERANCES.items() if metric.startswith(prefix)), 0.0)


def compare_metrics(original: Mapping[str, float], new: Mapping[str, float], first_view: str = "") -> list[Row]:
    """A row per metric both runs have (their last values), timings left out, in name order."""
    return [Row(key, original[key], new[key], tolerance(key, first_view)) for key in sorted(set(original) & set(new))
            if not key.endswith(TIMINGS)]


def compare_tags(original: Mapping[str, str], new: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(tag, original, new)`` of the data hash, the git commit and each ``versions.*`` tag that differ."""
    keys = sorted({k for k in (*original, *new) if k.startswith("versions.")} | set(COMPARED_TAGS))
    return [(key, original.get(key, "-"), new.get(key, "-")) for key in keys if original.get(key) != new.get(key)]


def table(rows: Sequence[Row]) -> str:
    """The metrics table as text: metric, original, re-run, difference, and a flag on those outside tolerance."""
    width = max([len("metric"), *(len(row.metric) for row in rows)])
    lines = [f"{'metric':<{width}}  {'original':>12}  {'rerun':>12}  {'difference':>11}"]
    for row in rows:
        flag = "" if row.within else (f"  outside tolerance ({row.tolerance:g})" if row.tolerance else
                                      "  not reproduced (exact expected)")
        lines.append(f"{row.metric:<{width}}  {row.original:>12.6g}  {row.new:>12.6g}  {row.difference:>+11.3g}{flag}")
    return "\n".join(lines)


def stored_run_config(run_id: str, allowed: Sequence[str]) -> Any:
    """Run ``run_id``'s logged ``config.yaml``, read as data and merged into aeexp's schema."""
    from aeexp import stored_config, tracking

    where = f"run {run_id}'s config.yaml"
    with tempfile.TemporaryDirectory(prefix="aeexp-rerun-") as scratch:
        path = tracking.download_artifact(run_id, "config.yaml", Path(scratch))
        if path is None:
            raise AeexpError(f"run {run_id} has no config.yaml artifact: it cannot be re-run")
        text = path.read_text(encoding="utf-8")
    return stored_config.with_schema(stored_config.read(text, where, allowed=allowed), where)


def _original(run_id: str) -> tuple[Any, str]:
    from aeexp import tracking

    record, experiment = tracking.find_run(run_id)
    if "sweep.name" in record.tags:
        raise AeexpError(f"run {run_id} ({record.name}) is a sweep's parent run; re-run one of its jobs by its id")
    if record.status != "FINISHED":
        raise AeexpError(f"run {run_id} ({record.name}) is {record.status}: only a finished run can be re-run")
    return record, experiment


def rerun(run_id: str, tracking_uri: str, allowed: Sequence[str] = ()) -> tuple[Any, Any, str]:
    """Train run ``run_id`` again from its logged config into a new run of its experiment tagged ``rerun.of``; the
    original's and the new run's records, and the name of its first 2-D view."""
    import torch
    from omegaconf import open_dict

    from aeexp import experiment, tracking

    record, experiment_name = _original(run_id)
    cfg = stored_run_config(run_id, allowed)
    with open_dict(cfg):
        cfg.resume = None
        cfg.tracking.uri, cfg.tracking.experiment = tracking_uri, experiment_name
        cfg.tracking.run_name = f"{record.name} rerun"
        cfg.tags = {**cfg.tags, RERUN_TAG: run_id}
    if record.tags.get("sweep.threads", "").isdigit():  # a sweep's job ran with its share of the cores
        torch.set_num_threads(int(record.tags["sweep.threads"]))
    with tempfile.TemporaryDirectory(prefix="aeexp-rerun-") as output:
        result = experiment.run(cfg, Path(output))
    return record, tracking.get_run(result.run_id), next(iter(cfg.embed.views or {}), "")


def report(original: Any, new: Any, first_view: str = "") -> tuple[str, bool]:
    """What the re-run says, and whether it reproduced the original (every metric within tolerance, the same
    data); ``first_view``: the view whose metrics are also ``embed_knn_acc`` and ``embed_trust``."""
    rows = compare_metrics(original.metrics, new.metrics, first_view)
    differing = compare_tags(original.tags, new.tags)
    outside = [row.metric for row in rows if not row.within]
    lines = [f"re-ran {original.run_id} ({original.name}) as {new.run_id}", table(rows), ""]
    data = next((d for d in differing if d[0] == "data.hash" and d[1] != "-"), None)
    lines.append(f"data hash: differs ({data[1]} then, {data[2]} now): the data changed" if data else
                 f"data hash: the same ({new.tags.get('data.hash', '-')})" if "data.hash" in original.tags else
                 "data hash: the original logged none (an aeexp older than data.hash), so whether the data changed is "
                 "not known")
    versions = [f"{key} {old} -> {now}" for key, old, now in differing if key != "data.hash"]
    lines.append("package versions and git commit: " + ("; ".join(versions) if versions else "the same"))
    reproduced = not outside and data is None
    lines.append("reproduced: every final metric within its tolerance" if reproduced else
                 f"NOT reproduced: {len(outside)} of {len(rows)} metrics outside tolerance"
                 + (f" ({', '.join(outside)})" if outside else "") + ("; the data changed" if data else ""))
    return "\n".join(lines), reproduced


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: 0 when the re-run reproduced the original, 1 when it did not or could not run."""
    parser = argparse.ArgumentParser(prog="aeexp rerun", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", metavar="RUN_ID", help="a finished run")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's default, "
                                                             "MLFLOW_TRACKING_URI or sqlite:///mlflow.db here)")
    parser.add_argument("--allow-target", action="append", default=[], metavar="DOTTED.PATH",
                        help="a class of your own the stored config may build (your model: mymodels.SparseAE); "
                             "its module must be importable (PYTHONPATH)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from aeexp import tracking
    from aeexp.training import interrupt

    interrupt.install()
    try:
        uri = tracking.use_existing_store(args.tracking_uri, f"run {args.run_id}")
        original, new, first_view = rerun(args.run_id, uri, args.allow_target)
    except AeexpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # (a run's says where it stopped; the new run is marked KILLED)
        print(f"error: {err or 'interrupted'}", file=sys.stderr)
        return 130
    said, reproduced = report(original, new, first_view)
    print(said)
    return 0 if reproduced else 1


if __name__ == "__main__":
    from aeexp.shutdown import run_and_exit

    run_and_exit(main)
