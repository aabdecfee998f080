"""What a sweep's runs say together: runs grouped by setting (the same values but ``seed``) with the mean and
standard deviation of each metric, the curves and PCA baselines of the metrics plot, the reconstruction panel, and
``report.html``, one self-contained page of all of it."""

from __future__ import annotations

import base64
import html
import logging
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aeexp import mlflow_ui
from aeexp.evaluation import RECONSTRUCTIONS, figures
from aeexp.tracking import RunRecord

log = logging.getLogger(__name__)

SEED_KEY = "seed"
# Keys that say how or where a run went, not what it is: never part of a setting.
NOT_A_SETTING = ("seed", "resume", "sweep.", "tracking.", "tags.", "trainer.progress", "hydra.")
DEFAULT_UI = mlflow_ui.DEFAULT_UI
MAX_PANEL_ROWS = 48
Download = Callable[[str, str, Path], Path | None]


def is_setting_key(key: str) -> bool:
    """Whether ``key`` says what a run is (a setting), not how or where it went (:data:`NOT_A_SETTING`)."""
    return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_A_SETTING)


RESUMED = "resumed."  # a resumed run's tags resumed.<key>: the settings it was resumed with (see effective_params)
# Of a component (``optimizer``, ``scheduler``, ``model``, ...): the keys that name what it is, in order of preference.
NAMING_KEYS = ("name", "_target_")
MAX_VALUE = 32  # characters of a value shown in a label


def effective_params(run: RunRecord) -> dict[str, str]:
    """A run's params as it finished: MLflow keeps each param as first logged, so a run resumed with other settings
    (``trainer.epochs=8``) says so in its tags ``resumed.<key>``, which take precedence."""
    values = dict(run.params)
    values.update({key.removeprefix(RESUMED): value for key, value in run.tags.items() if key.startswith(RESUMED)})
    return values


def _values(run: RunRecord, from_overrides: bool) -> dict[str, str]:
    """What a run was given: its sweep job's overrides (``key=value``), else its effective params."""
    if not from_overrides:
        return effective_params(run)
    pairs = (o.split("=", 1) for o in run.tags.get("sweep.job_overrides", "").split() if "=" in o)
    return {key.lstrip("+~"): value for key, value in pairs if not key.startswith("sweep.")}


def one_sweep(runs: Sequence[RunRecord]) -> bool:
    """Whether ``runs`` are jobs of one sweep (their overrides then say what differs between them)."""
    return (all("sweep.job_overrides" in run.tags for run in runs)
            and len({run.tags.get("mlflow.parentRunId") for run in runs}) == 1)


def _component(key: str, differing: Sequence[str]) -> tuple[str, str] | None:
    """The component ``key`` belongs to whose kind differs between the runs, and the key naming that kind
    (``optimizer._target_``, ``model.name``); None when none does."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        naming = next((f"{prefix}.{k}" for k in NAMING_KEYS if f"{prefix}.{k}" in differing), None)
        if naming is not None:
            return prefix, naming
    return None


def _telling(values: Sequence[dict[str, str]], differing: Sequence[str]) -> list[str]:
    """Of the ``differing`` keys, those that tell the runs apart: of a component whose kind differs (an SGD run
    beside an AdamW run) its kind alone, not the keys that go with it (its ``lr``, ``betas``, ``fused``, ... or their
    absence), unless one differs between runs of one kind."""
    kept = []
    for key in differing:
        found = _component(key, differing)
        if found is not None and key != found[1]:  # (a kind's class beside its name: the name, first, names it)
            naming = found[1]
            within: dict[str | None, set[str | None]] = {}
            for v in values:
                within.setdefault(v.get(naming), set()).add(v.get(key))
            if all(len(seen) == 1 for seen in within.values()):
                continue
        kept.append(key)
    return kept


def varying(runs: Sequence[RunRecord]) -> list[dict[str, str]]:
    """Per run, the values that tell it apart from the other runs (``seed`` included), in the order given: a
    sweep's jobs by their overrides, other runs by their effective params (:func:`effective_params`; see
    :func:`_telling`; a key only some runs have, such as a failed job's or an optimizer's own argument, only where
    it names a component's kind)."""
    from_overrides = one_sweep(runs)
    values = [_values(run, from_overrides) for run in runs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    differing = [k for k in keys if len({v.get(k) for v in values}) > 1]
    if not from_overrides:  # (a key some runs lack says how aeexp logged them, unless it names a component's kind)
        differing = _telling(values, [k for k in differing if all(k in v for v in values)
                                      or k.rsplit(".", 1)[-1] in NAMING_KEYS])
    return [{k: v[k] for k in differing if k in v} for v in values]


def _short_key(key: str) -> str:
    """``model.bottleneck`` -> ``bottleneck``; ``optimizer._target_`` and ``dataset.name`` -> their component."""
    parts = key.split(".")
    return ".".join(parts[:-1]) if len(parts) > 1 and parts[-1] in NAMING_KEYS else parts[-1]


def _short_value(key: str, value: str) -> str:
    """A class by its name (``torch.optim.SGD`` -> ``SGD``), no class as ``none``, a long value cut short."""
    if key.endswith("._target_"):
        value = "none" if value in ("None", "null", "") else value.rsplit(".", 1)[-1]
    return value if len(value) <= MAX_VALUE else value[:MAX_VALUE - 1] + "…"


def label(values: dict[str, str]) -> str:
    """``bottleneck=8 optimizer=SGD seed=1``: each value by the last part of its key (the whole key where two would
    read the same)."""
    short = [_short_key(key) for key in values]
    names = [s if short.count(s) == 1 else key for s, key in zip(short, values, strict=True)]
    return " ".join(f"{name}={_short_value(key, value)}" for name, (key, value) in zip(names, values.items(),
                                                                                      strict=True))


@dataclass
class Setting:
    """Runs that differ only in their seed: the ``values`` that set them apart from the other settings."""

    label: str
    runs: list[RunRecord]
    values: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> list[RunRecord]:
        return [run for run in self.runs if run.status == "FINISHED"]

    def param(self, key: str) -> str:
        return effective_params(self.runs[0]).get(key, "")

    def summary(self, metric: str) -> tuple[float, float, int] | None:
        """Mean, standard deviation (n - 1 in the denominator; 0 for one run) and n of ``metric`` over the
        finished runs that have it."""
        values = [run.metrics[metric] for run in self.finished if math.isfinite(run.metrics.get(metric, math.nan))]
        if not values:
            return None
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return float(np.mean(values)), std, len(values)


def settings(runs: Sequence[RunRecord]) -> list[Setting]:
    """The runs grouped by setting (the values that differ between them but the seed and how they ran), in order
    of first appearance."""
    groups: dict[str, Setting] = {}
    for run, values in zip(runs, varying(runs), strict=True):
        kept = {k: v for k, v in values.items() if is_setting_key(k)}
        name = label(kept) or "all runs"
        groups.setdefault(name, Setting(name, [], kept)).runs.append(run)
    return list(groups.values())


def aggregated_columns(metrics: Sequence[str]) -> list[str]:
    return ["setting", "n", "seeds", "dataset", "model", "bottleneck",
            *[f"{m}_{part}" for m in metrics for part in ("mean", "std")]]


def aggregated_rows(groups: Sequence[Setting], metrics: Sequence[str]) -> list[dict[str, str]]:
    """One row per setting: n (finished runs), their seeds, and each metric's mean and standard deviation."""
    rows = []
    for group in groups:
        row = {"setting": group.label, "n": str(len(group.finished)),
               "seeds": " ".join(run.params.get(SEED_KEY, "?") for run in group.finished),
               "dataset": group.param("dataset.name"), "model": group.param("model.name"),
               "bottleneck": group.param("model.bottleneck")}
        for metric in metrics:
            found = group.summary(metric)
            row[f"{metric}_mean"] = f"{found[0]:.4f}" if found else ""
            row[f"{metric}_std"] = f"{found[1]:.4f}" if found and found[2] > 1 else ""
        rows.append(row)
    return rows


def shown_rows(rows: Sequence[dict[str, str]], metrics: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The aggregated rows for reading: columns, and each metric as one ``mean ± std`` cell."""
    head = ["setting", "n", "seeds", "dataset", "model", "bottleneck", *metrics]
    return head, [{**{c: row[c] for c in head[:6]}, **{m: _mean_std(row, m) for m in metrics}} for row in rows]


MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")  # what makes markup inside a line: emphasis, code, links


def markdown_text(text: str) -> str:
    """``text`` (a run's name, a tag, an error) as Markdown shows it literally, on one line: HTML as text (``<``,
    ``>`` and ``&`` as entities), Markdown's punctuation escaped, a line break as a space."""
    escaped = html.escape(" ".join(str(text).split()), quote=False)
    return MARKDOWN_SPECIAL.sub(r"\\\1", escaped)


def markdown_table(head: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    """A Markdown table of ``rows`` under the ``head`` columns, each cell as text (:func:`markdown_text`)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(markdown_text(row.get(c, "")) for c in head) + " |")
    return "\n".join(lines) + "\n"


def aggregated_markdown(rows: Sequence[dict[str, str]], metrics: Sequence[str]) -> str:
    """The aggregated table in Markdown, each metric as ``mean ± std``."""
    head, shown = shown_rows(rows, metrics)
    return markdown_table(head, shown)


def _mean_std(row: dict[str, str], metric: str) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return f"{mean} ± {std}" if std else mean


HEADLINE = ("test_mse", "test_loss", "val_loss")  # the verdict's metric: the first the runs logged (lower is better)


def _spread(summary: tuple[float, float, int]) -> str:
    mean, std, n = summary
    return f"{mean:.4f} ± {std:.4f} over {n} seeds" if n > 1 else f"{mean:.4f}, one run"


def _difference(best: float, other: float) -> str:
    """``0.0052 (18%) below`` (or ``above``): how ``best`` stands to ``other``."""
    gap = abs(best - other)
    relative = f" ({gap / abs(other):.0%})" if other else ""
    return f"{gap:.4f}{relative} {'above' if best > other else 'below'}" if gap else "equal to"


def verdict(groups: Sequence[Setting], baselines: dict[str, str]) -> str:
    """One line of what the runs found: the best setting on the headline metric (:data:`HEADLINE`), with the seeds'
    spread, and by how much it beats the next setting and PCA of the same size; empty when no run logged it."""
    logged = {key for group in groups for run in group.finished for key in run.metrics}
    metric = next((m for m in HEADLINE if m in logged), None)
    ranked = sorted(((found, group) for group in groups if metric and (found := group.summary(metric))),
                    key=lambda pair: pair[0][0])
    if metric is None or not ranked:
        return ""
    (best, group), rest = ranked[0], ranked[1:]
    parts = [f"Best on {metric} (lower is better): {group.label}, {_spread(best)}" if len(groups) > 1
             else f"{metric}: {_spread(best)}"]
    if rest:
        second, runner_up = rest[0]
        parts.append(f"{_difference(best[0], second[0])} the next ({runner_up.label}: {_spread(second)})")
    pca = group.summary(baselines[metric]) if metric in baselines else None
    if pca is not None:
        parts.append(f"{_difference(best[0], pca[0])} PCA of the same size ({pca[0]:.4f})")
    return "; ".join(parts) + "."


LOSSES = ("val_loss", "test_loss", "test_mse")  # every run's own, shown first
VIEW_METRICS = ("knn_acc", "trust")  # of each 2-D view, embed_<view>_<key>; the first view's also as embed_<key>
HEALTH_PREFIXES = ("latent_", "codebook_")  # aeexp's own latent health metrics (conf/health), test_<prefix>*


@dataclass
class Shown:
    """What a report shows of its runs' final metrics, found in what they logged: the table's metric ``columns``,
    the metrics ``plotted`` against the bottleneck with their PCA ``baselines``, and the 2-D ``views``."""

    columns: list[str]
    plotted: list[str]
    baselines: dict[str, str]
    views: list[str]


def _baseline(metric: str, logged: set[str]) -> str | None:
    """PCA's twin of ``test_<name>``: ``pca_<name>`` (``pca_test_mse`` for ``test_mse``), if a run logged it."""
    name = metric.removeprefix("test_")
    return next((twin for twin in (f"pca_{name}", f"pca_test_{name}") if twin in logged), None)


def health(metric: str, logged: set[str]) -> bool:
    """Whether ``test_<name>`` is latent health (the health list's): aeexp's own (``test_latent_*``,
    ``test_codebook_*``) or one whose ``<name>`` was also measured each epoch (no metric of the metric list is)."""
    name = metric.removeprefix("test_")
    return name.startswith(HEALTH_PREFIXES) or name in logged


def shown(runs: Sequence[RunRecord]) -> Shown:
    """The metrics of ``runs`` a report shows: ``val_loss``, ``test_loss``, ``test_mse`` and each other ``test_*``
    of the metric list (by name), each followed by its PCA baseline, then the first view's ``embed_knn_acc`` and
    ``embed_trust``, then the latent health (:func:`health`, by name); all but ``val_loss``, the trustworthiness
    and the health plotted. The views are those with an ``embed_<view>_time``."""
    logged = {key for run in runs for key in run.metrics}
    others = sorted(m for m in logged if m.startswith("test_") and m not in LOSSES)
    tests = [m for m in LOSSES[1:] if m in logged] + [m for m in others if not health(m, logged)]
    baselines = {m: twin for m in tests if (twin := _baseline(m, logged)) is not None}
    headline = [f"embed_{key}" for key in VIEW_METRICS if f"embed_{key}" in logged]
    columns = [m for m in LOSSES[:1] if m in logged] + [c for m in tests for c in (m, baselines.get(m)) if c]
    views = sorted(key.removeprefix("embed_").removesuffix("_time") for key in logged
                   if key.startswith("embed_") and key.endswith("_time") and key != "embed_time")
    return Shown(columns + headline + [m for m in others if health(m, logged)],
                 tests + [m for m in headline if m == "embed_knn_acc"], baselines, views)


def curves(groups: Sequence[Setting], metrics: Sequence[str], baselines: dict[str, str]) -> list[figures.Curve]:
    """The lines of the metrics plot: per metric, one per setting but its bottleneck (mean and spread at each
    size), and one dashed line per dataset for a metric's baseline (``baselines[metric]``, e.g. PCA's)."""
    found: dict[tuple[str, str, bool], figures.Curve] = {}
    for group in groups:
        bottleneck = group.param("model.bottleneck")
        if not bottleneck.isdigit():
            continue
        dataset = group.param("dataset.name")
        name = _curve_label(group, dataset)
        for metric in metrics:
            for key, line, baseline in ((metric, name, False), (baselines.get(metric), f"PCA on {dataset}", True)):
                summary = group.summary(key) if key else None
                if summary is None:
                    continue
                curve = found.setdefault((metric, line, baseline), figures.Curve(metric, line, dataset, [], baseline))
                if all(p[0] != int(bottleneck) for p in curve.points):
                    curve.points.append((int(bottleneck), summary[0], summary[1]))
    return list(found.values())


def _curve_label(group: Setting, dataset: str) -> str:
    """``ae32 on digits``, plus the setting's other values (not the bottleneck, model or dataset)."""
    shown = ("model.bottleneck", "model", "model.name", "model._target_", "dataset", "dataset.name")
    extra = label({k: v for k, v in group.values.items() if k not in shown})
    return " ".join([f"{group.param('model.name') or '?'} on {dataset}", *([extra] if extra else [])])


def reconstruction_panel(runs: Sequence[RunRecord], download: Download) -> figures.Figure | None:
    """The same test images through every run, one row per run labelled by its swept values; a block per dataset.
    ``download(run_id, artifact, folder)`` fetches a run's ``reconstructions.npz`` (None when it has none)."""
    blocks: dict[str, tuple[np.ndarray, list[tuple[str, np.ndarray]]]] = {}
    labels = [label(v) or run.name for v, run in zip(varying(runs), runs, strict=True)]
    with tempfile.TemporaryDirectory() as scratch:
        for run, name in zip(runs, labels, strict=True):
            path = download(run.run_id, RECONSTRUCTIONS, Path(scratch) / run.run_id)
            if path is None:
                continue
            with np.load(path) as arrays:
                inputs, outputs = arrays["inputs"].astype(np.float32), arrays["outputs"].astype(np.float32)
            dataset = run.params.get("dataset.name", "?")
            block = blocks.setdefault(f"{dataset} {inputs.shape[1:]}", (inputs, []))
            if block[0].shape == inputs.shape and len(block[1]) < MAX_PANEL_ROWS:
                block[1].append((name, outputs))
    if not blocks:
        return None
    return figures.reconstruction_panel([(f"test images of {title.split(' ', 1)[0]} through each run", inputs, rows)
                                         for title, (inputs, rows) in blocks.items()])


def ui_base(tracking_uri: str) -> str:
    """Where the MLflow UI of ``tracking_uri`` is: the server itself, else what `mlflow ui` serves."""
    return mlflow_ui.ui_address(tracking_uri)


def run_url(ui: str, run: RunRecord) -> str:
    """The run's page in the MLflow UI, in its model-training view."""
    return mlflow_ui.run_link(ui, run.experiment_id, run.run_id)


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}tr.FAILED td,tr.KILLED td{color:#a00}td:first-child{white-space:nowrap}
td:first-child,th:first-child{position:sticky;left:0;background:#fff}th:first-child{background:#f2f2f2}
img{max-width:100%;border:1px solid #eee;margin:.3em 0 1.2em}.note{color:#666;font-size:13px}
.verdict{font-size:16px;max-width:70em}"""


def _table(columns: Sequence[str], rows: Sequence[dict[str, str]], links: Sequence[str] = ()) -> str:
    # (a long metric name may break after its underscores: the table fits a narrower window)
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for column in columns:
            text = html.escape(row.get(column, "")).replace(" ± ", " ±&nbsp;")  # (a narrow cell: ± with the std)
            if column == "run" and i < len(links):
                text = f'<a href="{html.escape(links[i])}" target="_blank" rel="noopener">{text}</a>'
            cells.append(f"<td>{text}</td>")
        body.append(f'<tr class="{html.escape(row.get("status", ""))}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


@dataclass
class Page:
    """What report.html shows."""

    title: str
    run_columns: Sequence[str]
    run_rows: Sequence[dict[str, str]]
    run_links: Sequence[str]
    setting_columns: Sequence[str]
    setting_rows: Sequence[dict[str, str]]
    figures: Sequence[tuple[str, Path]]
    verdict: str = ""


def page_html(page: Page) -> str:
    """``report.html``: the tables and figures in one file (figures inlined as data URIs, no script, nothing
    fetched), so it opens offline and in MLflow's artifact viewer."""
    parts = [f"<h1>{html.escape(page.title)}</h1>",
             *([f'<p class="verdict">{html.escape(page.verdict)}</p>'] if page.verdict else []),
             f'<p class="note">{len(page.run_rows)} runs; a run\'s name opens it in the MLflow UI.</p>',
             "<h2>By setting: mean ± standard deviation over seeds</h2>",
             _table(page.setting_columns, page.setting_rows), "<h2>Runs</h2>",
             _table(page.run_columns, page.run_rows, page.run_links)]
    for heading, path in page.figures:
        if path.is_file():
            parts += [f"<h2>{html.escape(heading)}</h2>", _image(path)]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(page.title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
