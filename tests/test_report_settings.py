"""How the comparison report groups runs into settings and labels them, and each setting's mean ± standard
deviation, on run records made here (no store: the CLI-level tests in test_report.py and test_compare_experiment.py
hold the same on real sweeps; these are what mutation testing of the report can see)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aeexp import report
from aeexp.tracking import RunRecord

PARENT = {"mlflow.parentRunId": "p"}


def _job(i: int, overrides: str, metrics: dict[str, float], status: str = "FINISHED",
         params: dict[str, str] | None = None) -> RunRecord:
    """A sweep's job: its overrides in the tag the sweep writes, its params as logged."""
    given = dict(o.split("=", 1) for o in overrides.split())
    logged = {"dataset.name": "digits", "model.name": "ae32", **{k.lstrip("+"): v for k, v in given.items()},
              **(params or {})}
    return RunRecord(f"r{i}", f"run {i}", status, logged, metrics, {**PARENT, "sweep.job_overrides": overrides})


def _run(i: int, params: dict[str, str], tags: dict[str, str] | None = None) -> RunRecord:
    """A run of its own (no sweep): told apart by its params."""
    return RunRecord(f"r{i}", f"run {i}", "FINISHED", params, {"test_mse": 0.1 * i}, tags or {})


SWEEP = [
    _job(0, "model.bottleneck=2 seed=0", {"test_mse": 0.30, "test_knn_acc": 0.5}),
    _job(1, "model.bottleneck=2 seed=1", {"test_mse": 0.20, "test_knn_acc": 0.7}),
    _job(2, "model.bottleneck=2 seed=2", {"test_mse": 0.40, "test_knn_acc": math.nan}),
    _job(3, "model.bottleneck=8 seed=0", {"test_mse": 0.10, "test_knn_acc": 0.9}),
    _job(4, "model.bottleneck=8 seed=1", {"test_mse": 9.99, "test_knn_acc": 0.1}, status="FAILED"),
    _job(5, "model.bottleneck=16 seed=0 sweep.name=x", {}),
]


def test_a_sweeps_jobs_are_told_apart_by_their_overrides():
    assert report.one_sweep(SWEEP)
    assert report.varying(SWEEP)[:2] == [{"model.bottleneck": "2", "seed": "0"}, {"model.bottleneck": "2", "seed": "1"}]
    assert report.varying(SWEEP)[5] == {"model.bottleneck": "16", "seed": "0"}  # sweep.* is how it ran, not what
    other_parent = [*SWEEP[:2], RunRecord("x", "x", "FINISHED", {}, {}, {"mlflow.parentRunId": "q",
                                                                          "sweep.job_overrides": "seed=5"})]
    assert not report.one_sweep(other_parent)
    assert not report.one_sweep([*SWEEP[:2], _run(9, {})])


def test_settings_group_the_seeds_of_a_setting_in_order_of_first_appearance():
    groups = report.settings(SWEEP)
    assert [(g.label, [r.run_id for r in g.runs]) for g in groups] == [
        ("bottleneck=2", ["r0", "r1", "r2"]), ("bottleneck=8", ["r3", "r4"]), ("bottleneck=16", ["r5"])]
    assert groups[1].values == {"model.bottleneck": "8"} and [r.run_id for r in groups[1].finished] == ["r3"]
    assert report.settings(SWEEP[:1])[0].label == "all runs"  # nothing differs


def test_each_setting_has_the_mean_and_n_minus_1_standard_deviation_of_its_finished_runs():
    two, eight, sixteen = report.settings(SWEEP)
    assert two.summary("test_mse") == pytest.approx((0.3, np.std([0.3, 0.2, 0.4], ddof=1), 3))
    assert two.summary("test_knn_acc") == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1), 2))  # NaN left out
    assert eight.summary("test_mse") == (0.1, 0.0, 1)  # the failed run left out: one run, no spread
    assert sixteen.summary("test_mse") is None

    rows = report.aggregated_rows(report.settings(SWEEP), ["test_mse", "test_knn_acc"])
    assert report.aggregated_columns(["test_mse"]) == ["setting", "n", "seeds", "dataset", "model", "bottleneck",
                                                       "test_mse_mean", "test_mse_std"]
    assert rows[0] == {"setting": "bottleneck=2", "n": "3", "seeds": "0 1 2", "dataset": "digits", "model": "ae32",
                       "bottleneck": "2", "test_mse_mean": "0.3000", "test_mse_std": "0.1000",
                       "test_knn_acc_mean": "0.6000", "test_knn_acc_std": "0.1414"}
    assert rows[1] == {"setting": "bottleneck=8", "n": "1", "seeds": "0", "dataset": "digits", "model": "ae32",
                       "bottleneck": "8", "test_mse_mean": "0.1000", "test_mse_std": "",
                       "test_knn_acc_mean": "0.9000", "test_knn_acc_std": ""}
    assert rows[2]["n"] == "1" and rows[2]["seeds"] == "0"  # finished, but without the metric
    assert rows[2]["test_mse_mean"] == rows[2]["test_mse_std"] == ""


def test_a_run_without_a_seed_param_shows_a_question_mark():
    runs = [_job(0, "model.bottleneck=2", {"test_mse": 0.1}), _job(1, "model.bottleneck=4", {"test_mse": 0.2})]
    assert [row["seeds"] for row in report.aggregated_rows(report.settings(runs), ["test_mse"])] == ["?", "?"]


OPTIMIZERS = [
    _run(0, {"optimizer._target_": "torch.optim.SGD", "optimizer.lr": "0.1", "optimizer.momentum": "0.9",
             "seed": "0"}),
    _run(1, {"optimizer._target_": "torch.optim.AdamW", "optimizer.lr": "0.001", "optimizer.betas": "[0.9, 0.999]",
             "seed": "0"}),
    _run(2, {"optimizer._target_": "torch.optim.AdamW", "optimizer.lr": "0.001", "optimizer.betas": "[0.9, 0.999]",
             "seed": "1"}),
]


def test_a_component_of_another_kind_is_told_by_its_kind_not_its_own_arguments():
    """SGD beside AdamW: the optimizer's class tells them apart; its lr differs too, but only with the class (one lr
    per class), and momentum and betas are arguments only one kind has."""
    assert report.varying(OPTIMIZERS) == [{"optimizer._target_": "torch.optim.SGD", "seed": "0"},
                                          {"optimizer._target_": "torch.optim.AdamW", "seed": "0"},
                                          {"optimizer._target_": "torch.optim.AdamW", "seed": "1"}]
    assert [g.label for g in report.settings(OPTIMIZERS)] == ["optimizer=SGD", "optimizer=AdamW"]


def test_an_argument_that_differs_within_one_kind_is_kept():
    runs = [*OPTIMIZERS[:2], _run(2, {**OPTIMIZERS[2].params, "optimizer.lr": "0.01"})]
    assert [g.label for g in report.settings(runs)] == ["optimizer=SGD lr=0.1", "optimizer=AdamW lr=0.001",
                                                        "optimizer=AdamW lr=0.01"]


def test_a_component_named_by_its_name_is_not_also_told_by_its_class():
    runs = [_run(0, {"model.name": "ae32", "model._target_": "aeexp.models.DenseAutoencoder", "model.widths": "[64]"}),
            _run(1, {"model.name": "conv", "model._target_": "aeexp.models.ConvAutoencoder", "model.widths": "[32]"})]
    assert report.varying(runs) == [{"model.name": "ae32"}, {"model.name": "conv"}]
    assert [g.label for g in report.settings(runs)] == ["model=ae32", "model=conv"]


def test_a_nested_key_belongs_to_the_innermost_component_whose_kind_differs():
    runs = [_run(0, {"a.b._target_": "x.One", "a.b.c.d": "1", "a._target_": "y.Same"}),
            _run(1, {"a.b._target_": "x.Two", "a.b.c.d": "2", "a._target_": "y.Same"}),
            _run(2, {"a.b._target_": "x.Two", "a.b.c.d": "2", "a._target_": "y.Same"})]
    assert report.varying(runs) == [{"a.b._target_": "x.One"}, {"a.b._target_": "x.Two"}, {"a.b._target_": "x.Two"}]


def test_a_key_that_differs_outside_any_component_kind_is_kept_and_one_some_runs_lack_is_not():
    runs = [_run(0, {"trainer.epochs": "2", "only.here": "1"}), _run(1, {"trainer.epochs": "3"})]
    assert report.varying(runs) == [{"trainer.epochs": "2"}, {"trainer.epochs": "3"}]


def test_labels_shorten_keys_and_values_unless_two_would_read_the_same():
    assert report.label({"model.bottleneck": "8", "optimizer._target_": "torch.optim.SGD", "seed": "1"}) == (
        "bottleneck=8 optimizer=SGD seed=1")
    assert report.label({"model.bottleneck": "8", "other.bottleneck": "2", "dataset.name": "mnist"}) == (
        "model.bottleneck=8 other.bottleneck=2 dataset=mnist")
    for nothing in ("None", "null", ""):
        assert report.label({"scheduler._target_": nothing}) == "scheduler=none"
    assert report.label({"x": "a" * 32}) == "x=" + "a" * 32
    assert report.label({"x": "a" * 33}) == "x=" + "a" * 31 + "…"
    assert report.label({"model._target_": "a" * 40}) == "model=" + "a" * 31 + "…"  # (a class path of one part)
    assert report.label({"name": "x", "model.name.extra": "y"}) == "name=x extra=y"
    assert report.label({}) == ""


def test_a_resumed_run_counts_with_the_settings_it_was_resumed_with():
    resumed = _run(1, {"trainer.epochs": "2", "seed": "0"}, tags={"resumed.trainer.epochs": "4", "other": "x"})
    assert report.effective_params(resumed) == {"trainer.epochs": "4", "seed": "0"}
    runs = [_run(0, {"trainer.epochs": "4", "seed": "1"}), resumed]
    assert [g.label for g in report.settings(runs)] == ["all runs"]  # both trained 4 epochs


def test_what_is_not_a_setting():
    for key in ("seed", "resume", "sweep.name", "tracking.uri", "tags.x", "trainer.progress", "hydra.job"):
        assert not report.is_setting_key(key), key
    for key in ("seeds", "resumed", "sweep", "trainer.progress_bar", "model.seed", "hydra"):
        assert report.is_setting_key(key), key


# ------------------------------------------------------------------------------------ report.html and Markdown

MARKUP = "<script>alert('x')</script> & \"quoted\""
SAFE = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;"  # html.escape's, quotes too


def _page(tmp_path, figures=()) -> str:
    page = report.Page(
        title=f"sweep {MARKUP}", run_columns=["run", "status", "test_mse"],
        run_rows=[{"run": MARKUP, "status": "FINISHED", "test_mse": "0.5 ± 0.1"},
                  {"run": "plain", "status": 'FAILED"><b', "test_mse": MARKUP}],
        run_links=['http://ui/#/runs/1?a="x"&b=<y>'], setting_columns=["setting", "n"],
        setting_rows=[{"setting": MARKUP}], figures=figures, verdict=f"Best: {MARKUP}")
    return report.page_html(page)


def test_report_html_shows_every_text_escaped_and_holds_only_its_own_elements(tmp_path):
    text = _page(tmp_path)
    assert text.startswith('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
                           f"<title>sweep {SAFE}</title><style>{report.STYLE}</style></head><body>\n")
    assert text.endswith("\n</body></html>\n")
    assert f"<h1>sweep {SAFE}</h1>" in text and f'<p class="verdict">Best: {SAFE}</p>' in text
    assert '<p class="note">2 runs; a run\'s name opens it in the MLflow UI.</p>' in text
    settings_table = ("<h2>By setting: mean ± standard deviation over seeds</h2>\n<table><thead><tr><th>setting</th>"
                      f'<th>n</th></tr></thead><tbody><tr class=""><td>{SAFE}</td><td></td></tr></tbody></table>')
    assert settings_table in text
    runs_table = ("<h2>Runs</h2>\n<table><thead><tr><th>run</th><th>status</th><th>test_<wbr>mse</th></tr></thead>"
                  '<tbody><tr class="FINISHED"><td><a href="http://ui/#/runs/1?a=&quot;x&quot;&amp;b=&lt;y&gt;" '
                  f'target="_blank" rel="noopener">{SAFE}</a></td><td>FINISHED</td><td>0.5 ±&nbsp;0.1</td></tr>'
                  '<tr class="FAILED&quot;&gt;&lt;b"><td>plain</td><td>FAILED&quot;&gt;&lt;b</td>'
                  f"<td>{SAFE}</td></tr></tbody></table>")
    assert runs_table in text
    assert "<script" not in text and "<b" not in text.replace("<body", "")
    assert "\n<h2>" not in text.split(runs_table)[1]  # no figure given: no heading for one


def test_report_html_inlines_each_figure_that_exists_under_its_escaped_heading(tmp_path):
    png = tmp_path / "a&b.png"
    png.write_bytes(b"\x89PNG\r\n")
    text = _page(tmp_path, figures=[(f"plot {MARKUP}", png), ("missing", tmp_path / "missing.png")])
    assert text.endswith(f'\n<h2>plot {SAFE}</h2>\n<img src="data:image/png;base64,iVBORw0K" alt="a&amp;b.png">'
                         "\n</body></html>\n")
    assert "missing" not in text


def test_an_empty_verdict_leaves_no_paragraph(tmp_path):
    page = report.Page("t", ["run"], [], [], ["setting"], [], [])
    text = report.page_html(page)
    assert 'class="verdict"' not in text and "<h1>t</h1>\n<p class=\"note\">0 runs;" in text


def test_markdown_shows_markup_and_its_own_punctuation_as_text_on_one_line():
    assert report.markdown_text("a <b> & c\nd  e") == "a &lt;b&gt; &amp; c d e"
    assert report.markdown_text(r"\`*_[]#|~" + " 'q' \"q\"") == r"\\\`\*\_\[\]\#\|\~" + " 'q' \"q\""
    assert report.markdown_text(3) == "3"
    table = report.markdown_table(["run", "x_y"], [{"run": "a|b <i>"}, {"run": "*c*", "x_y": "1"}])
    assert table == ("| run | x_y |\n|---|---|\n| a\\|b &lt;i&gt; |  |\n| \\*c\\* | 1 |\n")


def test_the_aggregated_markdown_joins_mean_and_spread():
    rows = [{"setting": "s_1", "n": "2", "seeds": "0 1", "dataset": "d", "model": "m", "bottleneck": "2",
             "test_mse_mean": "0.3000", "test_mse_std": "0.1000"},
            {"setting": "s2", "n": "1", "seeds": "0", "dataset": "d", "model": "m", "bottleneck": "8",
             "test_mse_mean": "0.1000", "test_mse_std": ""}]
    assert report.shown_rows(rows, ["test_mse"]) == (
        ["setting", "n", "seeds", "dataset", "model", "bottleneck", "test_mse"],
        [{"setting": "s_1", "n": "2", "seeds": "0 1", "dataset": "d", "model": "m", "bottleneck": "2",
          "test_mse": "0.3000 ± 0.1000"},
         {"setting": "s2", "n": "1", "seeds": "0", "dataset": "d", "model": "m", "bottleneck": "8",
          "test_mse": "0.1000"}])
    assert report.aggregated_markdown(rows, ["test_mse"]).splitlines()[2:] == [
        "| s\\_1 | 2 | 0 1 | d | m | 2 | 0.3000 ± 0.1000 |", "| s2 | 1 | 0 | d | m | 8 | 0.1000 |"]


# ------------------------------------------------------------------------ the verdict, the columns, the curves


def test_the_verdict_names_the_best_setting_its_spread_and_its_margins():
    runs = [_job(0, "model.bottleneck=2 seed=0", {"test_mse": 0.30, "test_loss": 0.01, "pca_test_mse": 0.50}),
            _job(1, "model.bottleneck=2 seed=1", {"test_mse": 0.20, "test_loss": 0.01, "pca_test_mse": 0.50}),
            _job(2, "model.bottleneck=2 seed=2", {"test_mse": 0.40, "test_loss": 0.01, "pca_test_mse": 0.50}),
            _job(3, "model.bottleneck=8 seed=0", {"test_mse": 0.10, "pca_test_mse": 0.15})]
    groups = report.settings(runs)
    assert report.verdict(groups, {"test_mse": "pca_test_mse"}) == (
        "Best on test_mse (lower is better): bottleneck=8, 0.1000, one run; 0.2000 (67%) below the next "
        "(bottleneck=2: 0.3000 ± 0.1000 over 3 seeds); 0.0500 (33%) below PCA of the same size (0.1500).")
    assert report.verdict(groups, {}) == ("Best on test_mse (lower is better): bottleneck=8, 0.1000, one run; "
                                          "0.2000 (67%) below the next (bottleneck=2: 0.3000 ± 0.1000 over 3 seeds).")
    assert report.verdict(groups[:1], {"test_mse": "pca_test_mse"}) == (
        "test_mse: 0.3000 ± 0.1000 over 3 seeds; 0.2000 (40%) below PCA of the same size (0.5000).")
    assert report.verdict(groups[:1], {"test_mse": "pca_missing"}) == "test_mse: 0.3000 ± 0.1000 over 3 seeds."
    only_loss = report.settings([_job(0, "model.bottleneck=2", {"test_loss": 0.2, "val_loss": 0.1}),
                                 _job(1, "model.bottleneck=4", {"test_loss": 0.3})])
    assert report.verdict(only_loss, {}).startswith("Best on test_loss (lower is better): bottleneck=2, 0.2000, ")
    assert report.verdict(report.settings([_job(0, "seed=0", {"val_loss": 0.1})]), {}) == "val_loss: 0.1000, one run."
    assert report.verdict(report.settings([_job(0, "seed=0", {"test_knn_acc": 0.5})]), {}) == ""
    assert report.verdict(report.settings([_job(0, "seed=0", {}, status="FAILED")]), {}) == ""
    assert report.verdict([], {}) == ""


def test_a_difference_says_above_below_or_equal():
    assert report._difference(0.1, 0.3) == "0.2000 (67%) below"
    assert report._difference(0.3, 0.1) == "0.2000 (200%) above"
    assert report._difference(0.2, 0.2) == "equal to"
    assert report._difference(0.2, 0.0) == "0.2000 above"  # no share of nothing
    assert report._difference(-0.1, -0.2) == "0.1000 (50%) above"


LOGGED = {"val_loss": 1, "test_loss": 1, "test_mse": 1, "pca_test_mse": 1, "test_knn_acc": 1, "pca_knn_acc": 1,
          "test_custom": 1, "test_foo": 1, "foo": 1, "test_latent_active": 1, "latent_active": 1,
          "test_codebook_use": 1, "embed_knn_acc": 1, "embed_trust": 1, "embed_time": 1, "embed_tsne_time": 1,
          "embed_pca_time": 1, "embed_tsne_knn_acc": 1, "pca_loss_other": 1}


def test_the_report_shows_the_losses_then_each_metric_with_its_pca_twin_then_the_views_then_the_health():
    shown = report.shown([RunRecord("a", "a", "FINISHED", {}, dict.fromkeys(LOGGED, 0.5), {}),
                          RunRecord("b", "b", "FAILED", {}, {}, {})])
    assert shown.columns == ["val_loss", "test_loss", "test_mse", "pca_test_mse", "test_custom", "test_knn_acc",
                             "pca_knn_acc", "embed_knn_acc", "embed_trust", "test_codebook_use", "test_foo",
                             "test_latent_active"]
    assert shown.plotted == ["test_loss", "test_mse", "test_custom", "test_knn_acc", "embed_knn_acc"]
    assert shown.baselines == {"test_mse": "pca_test_mse", "test_knn_acc": "pca_knn_acc"}
    assert shown.views == ["pca", "tsne"]
    assert report._baseline("test_mse", {"pca_mse", "pca_test_mse"}) == "pca_mse"
    assert report._baseline("test_mse", set()) is None
    empty = report.shown([])
    assert (empty.columns, empty.plotted, empty.baselines, empty.views) == ([], [], {}, [])


def test_the_curves_are_a_line_per_setting_but_its_size_and_a_dashed_one_per_dataset_for_pca():
    runs = [_job(0, "model.bottleneck=2 seed=0", {"test_mse": 0.3, "pca_test_mse": 0.5}),
            _job(1, "model.bottleneck=2 seed=1", {"test_mse": 0.2, "pca_test_mse": 0.5}),
            _job(2, "model.bottleneck=8 seed=0", {"test_mse": 0.1, "pca_test_mse": 0.4}),
            _job(3, "model.bottleneck=8 +optimizer.name=sgd seed=0", {"test_mse": 0.6}),
            _job(4, "model.bottleneck=x seed=0", {"test_mse": 0.9}),
            _job(5, "model.bottleneck=16 seed=0", {})]
    curves = report.curves(report.settings(runs), ["test_mse"], {"test_mse": "pca_test_mse"})
    assert [(c.metric, c.label, c.dataset, c.baseline) for c in curves] == [
        ("test_mse", "ae32 on digits", "digits", False), ("test_mse", "PCA on digits", "digits", True),
        ("test_mse", "ae32 on digits optimizer=sgd", "digits", False)]
    (two, eight), (pca_two, pca_eight) = curves[0].points, curves[1].points
    assert two == pytest.approx((2, 0.25, np.std([0.3, 0.2], ddof=1))) and eight == pytest.approx((8, 0.1, 0.0))
    assert pca_two == pytest.approx((2, 0.5, 0.0)) and pca_eight == pytest.approx((8, 0.4, 0.0))
    assert curves[2].points == [(8, 0.6, 0.0)]
    assert report.curves(report.settings(runs), ["test_mse"], {}) == curves[:1] + curves[2:]
    unnamed = [_job(0, "model.bottleneck=2 seed=0", {"test_mse": 0.3}, params={"model.name": ""})]
    assert [c.label for c in report.curves(report.settings(unnamed), ["test_mse"], {})] == ["? on digits"]


# ----------------------------------------------------------------------------------------- edges of the rules


def test_an_override_whose_value_holds_an_equals_sign_or_whose_key_is_appended_or_removed():
    runs = [_job(0, "model.bottleneck=2 +model.note=a=b ~Xtra.k=1 seed=0", {}),
            _job(1, "model.bottleneck=4 +model.note=c ~Xtra.k=2 seed=0", {})]
    assert report.varying(runs) == [{"model.bottleneck": "2", "model.note": "a=b", "Xtra.k": "1"},
                                    {"model.bottleneck": "4", "model.note": "c", "Xtra.k": "2"}]


def test_a_key_and_its_own_name_key_are_both_kept():
    """``opt`` and ``opt.name`` differ: ``opt`` is no part of a component whose kind differs (it is the component's
    own key, not one under it), so it stays beside the name."""
    runs = [_run(0, {"opt": "a", "opt.name": "A"}), _run(1, {"opt": "b", "opt.name": "B"})]
    assert report.varying(runs) == [{"opt": "a", "opt.name": "A"}, {"opt": "b", "opt.name": "B"}]


def test_a_kind_some_runs_lack_still_tells_them_apart():
    """A run without a schedule has no ``scheduler._target_`` param: the kind tells it apart all the same (a key
    that names a kind, at any depth, or a top-level ``name``); any other key only some runs have does not."""
    runs = [_run(0, {"scheduler._target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "a.b._target_": "x.Y",
                     "name": "n", "note": "only here", "a.b.c": "1"}),
            _run(1, {})]
    assert report.varying(runs) == [{"scheduler._target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                     "a.b._target_": "x.Y", "name": "n"}, {}]
    assert report.label(report.varying(runs)[0]) == "scheduler=CosineAnnealingLR a.b=Y name=n"


def test_a_deep_component_is_labelled_by_its_whole_path():
    assert report.label({"a.b.name": "x", "c.d._target_": "p.q.R"}) == "a.b=x c.d=R"


def test_two_runs_make_a_spread():
    assert report._spread((0.3, 0.1, 2)) == "0.3000 ± 0.1000 over 2 seeds"
    assert report._spread((0.3, 0.0, 1)) == "0.3000, one run"


def test_the_verdict_ranks_by_the_mean_not_the_spread():
    runs = [_job(0, "model.bottleneck=2 seed=0", {"test_mse": 0.1}), _job(1, "model.bottleneck=2 seed=1",
                                                                          {"test_mse": 0.3}),
            _job(2, "model.bottleneck=8 seed=0", {"test_mse": 0.25}), _job(3, "model.bottleneck=8 seed=1",
                                                                           {"test_mse": 0.25})]
    assert report.verdict(report.settings(runs), {}).startswith("Best on test_mse (lower is better): bottleneck=2, "
                                                                "0.2000 ± 0.1414 over 2 seeds; 0.0500 (20%) below")
    tied = [_job(0, "model.bottleneck=2", {"test_mse": 0.2}), _job(1, "model.bottleneck=8", {"test_mse": 0.2})]
    assert report.verdict(report.settings(tied), {}).startswith("Best on test_mse (lower is better): bottleneck=2, ")


def test_no_verdict_where_the_headline_metric_is_nan_in_every_run():
    runs = [_job(0, "model.bottleneck=2", {"test_mse": math.nan}),
            _job(1, "model.bottleneck=8", {"test_mse": math.nan})]
    assert report.verdict(report.settings(runs), {}) == ""


def test_a_setting_without_its_metric_still_draws_its_pca_point_and_one_point_per_size_is_kept():
    runs = [_job(0, "model.bottleneck=x seed=0", {"test_mse": 0.9}),
            _job(1, "model.bottleneck=2 seed=0", {"pca_test_mse": 0.5}),
            _job(2, "model.bottleneck=8 seed=0", {"test_mse": 0.1, "pca_test_mse": 0.4}),
            _job(3, "model.bottleneck=8 +optimizer.name=sgd seed=0", {"test_mse": 0.6, "pca_test_mse": 0.7})]
    curves = report.curves(report.settings(runs), ["test_mse"], {"test_mse": "pca_test_mse"})
    assert [(c.label, c.points) for c in curves] == [
        ("PCA on digits", [(2, 0.5, 0.0), (8, 0.4, 0.0)]), ("ae32 on digits", [(8, 0.1, 0.0)]),
        ("ae32 on digits optimizer=sgd", [(8, 0.6, 0.0)])]


def test_a_curve_is_labelled_by_the_model_and_dataset_names_and_what_else_differs():
    runs = [_job(0, "model=conv model.name=c model._target_=a.B dataset=mnist dataset.name=m model.bottleneck=2 "
                    "trainer.epochs=3", {"test_mse": 0.1}),
            _job(1, "model=ae32 model.name=d model._target_=a.C dataset=fmnist dataset.name=f model.bottleneck=4 "
                    "trainer.epochs=5", {"test_mse": 0.2})]
    assert [c.label for c in report.curves(report.settings(runs), ["test_mse"], {})] == [
        "c on m epochs=3", "d on f epochs=5"]
    bare = RunRecord("r", "r", "FINISHED", {"model.bottleneck": "2"}, {"test_mse": 0.1}, {})
    (group,) = report.settings([bare])
    assert group.param("model.name") == "" and group.param("dataset.name") == ""
    assert [c.label for c in report.curves([group], ["test_mse"], {})] == ["? on "]
    (row,) = report.aggregated_rows([group], [])
    assert (row["dataset"], row["model"], row["bottleneck"]) == ("", "", "2")


def test_report_html_keeps_its_tables_before_the_figures(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG")
    text = _page(tmp_path, figures=[("one", png), ("two", png)])
    assert text.index("<h2>Runs</h2>") < text.index("<h2>one</h2>") < text.index("<h2>two</h2>")
    assert text.count("<table>") == 2 and text.count("<img ") == 2
