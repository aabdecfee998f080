"""The metric and view lists: what a component takes is read from its parameter names (a metric that takes labels
is left out on unlabelled images by that declaration), each one guarded so that what cannot be computed is skipped
with its reason, and a stored config builds none of its own (a resume refuses a planted ``_target_`` in one line)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST
from mlflow_store import runs_in
from omegaconf import OmegaConf

from aeexp.errors import ConfigError
from aeexp.evaluation import guard, lists, pipeline
from aeexp.training import checkpoint

RNG = np.random.default_rng(0)
CODES = RNG.normal(size=(60, 4)).astype(np.float32)
LABELS = np.arange(60) % 3


def _inputs(labels: np.ndarray | None = LABELS, codes: np.ndarray = CODES) -> dict[str, object]:
    return {"train_codes": codes, "test_codes": codes, "train_labels": labels, "test_labels": labels, "seed": 0}


def test_what_a_metric_takes_is_read_from_its_parameters():
    shipped = lists.shipped().metrics
    assert shipped["knn"].needs == ("train_codes", "train_labels", "test_codes", "test_labels")
    assert shipped["kmeans"].needs == ("test_codes", "test_labels", "seed")
    assert all(metric.needs_labels for metric in shipped.values())
    views = lists.shipped().views
    assert views["tsne"].needs == ("codes", "seed") and views["pca"].needs == ("codes",)
    assert [view.title for view in views.values()] == ["t-SNE", "PCA", "UMAP"]


def test_a_metric_that_takes_labels_is_left_out_on_unlabelled_codes_by_its_declaration():
    skips = guard.Skips()
    spread = lists.Component("spread", lambda test_codes: {"spread": float(test_codes.std())}, ("test_codes",))
    metrics = {**lists.shipped().metrics, "spread": spread}
    assert list(guard.measure(metrics, _inputs(None), "test", skips)) == ["test_spread"]
    assert skips.reasons == {}  # not computable is not the same as not applicable: no skip, no tag
    assert len(guard.measure(metrics, _inputs(), "test", skips)) == 7


def test_a_metric_that_fails_or_returns_no_number_is_skipped_with_its_reason(caplog):
    def broken(test_codes):
        raise ValueError("n_samples=2 should be >= n_clusters=3.\nmore text")

    metrics = {
        "broken": lists.Component("broken", broken, ("test_codes",)),
        "nan": lists.Component("nan", lambda test_codes: {"nan": float("nan"), "fine": 0.5}, ("test_codes",)),
        "list": lists.Component("list", lambda test_codes: [1.0], ("test_codes",)),
        "bad name": lists.Component("bad", lambda test_codes: {"a b!": 1.0}, ("test_codes",)),
    }
    skips = guard.Skips()
    assert guard.measure(metrics, _inputs(), "test", skips) == {"test_fine": 0.5}
    assert skips.reasons == {"test_broken": "ValueError: n_samples=2 should be >= n_clusters=3.",
                             "test_nan": "it came out nan", "test_list": "it returned a list, not a {name: value} dict",
                             "test_bad": "it returned a value named 'a b!': a metric's name is letters, digits, _ - . "
                                         "and spaces"}
    assert skips.tags()["skipped.test_broken"] == "ValueError: n_samples=2 should be >= n_clusters=3."
    assert sum("skipped test_broken: ValueError" in r.getMessage() for r in caplog.records) == 1


def test_nan_codes_skip_the_metrics_and_views_that_read_them():
    codes = CODES.copy()
    codes[3, 1] = np.nan
    skips = guard.Skips()
    assert guard.measure(lists.shipped().metrics, _inputs(codes=codes), "test", skips) == {}
    assert set(skips.reasons) == {"test_knn", "test_probe", "test_kmeans"}
    metrics, views = pipeline.embed(codes, LABELS, lists.shipped("pca").views, 3000, 0, skips)
    assert metrics == {} and views.points == {} and skips.reasons["pca"] == "the codes hold NaN or infinite values"


def test_a_collapsed_code_skips_t_sne_and_keeps_the_views_that_can_be_drawn():
    skips = guard.Skips()
    collapsed = np.zeros((60, 4), dtype=np.float32)
    metrics, views = pipeline.embed(collapsed, LABELS, lists.shipped("all").views, 3000, 0, skips)
    assert "tsne" in skips.reasons and "tsne" not in views.points
    assert "pca" in views.points and "embed_pca_trust" in metrics
    assert "embed_knn_acc" not in metrics  # the first view's headline: skipped with it


def test_the_packaged_list_and_a_composed_users_list(tmp_path):
    configs = tmp_path / "configs"
    (configs / "metrics").mkdir(parents=True)
    (configs / "metrics" / "spread.yaml").write_text("spread:\n  _target_: numpy.std\n  _partial_: true\n")
    cfg = lists.compose(["metrics=[default,spread]", "embed=[pca,tsne]"], configs)
    assert list(cfg.metrics) == ["knn", "probe", "kmeans", "spread"] and list(cfg.embed.views) == ["pca", "tsne"]
    with pytest.raises(ConfigError, match="Could not load 'metrics/nope'"):
        lists.compose(["metrics=[default,nope]"], configs)


STORED_TARGETS = [
    ("embed.views", "evil", {"_target_": "shutil.rmtree", "_partial_": True, "path": "{folder}"}),
    ("metrics", "evil", {"_target_": "aeexp.evaluation.pictures.write_bytes", "_partial_": True,
                         "content": "x", "path": "{folder}/written"}),
]


@pytest.mark.parametrize(("key", "name", "entry"), STORED_TARGETS, ids=["rmtree-view", "aeexp-writer-metric"])
def test_a_target_planted_in_a_stored_config_is_refused_on_resume(run_cli, tracking_uri, tmp_path, key, name,
                                                                 entry):
    folder = tmp_path / "precious"
    folder.mkdir()
    done = run_cli(f"tracking.uri={tracking_uri}", *FAST, "embed=pca")
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    local = Path(run.data.tags["aeexp.checkpoint"])
    state = checkpoint.load(local)
    stored = OmegaConf.create(state.config)
    OmegaConf.update(stored, f"{key}.{name}", {k: str(v).format(folder=folder) if isinstance(v, str) else v
                                               for k, v in entry.items()}, force_add=True)
    checkpoint.save(dataclasses.replace(state, config=OmegaConf.to_yaml(stored)), local)

    resumed = run_cli(f"resume={run.info.run_id}", "trainer.epochs=3", f"tracking.uri={tracking_uri}")
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 1 and "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "[ERROR]" in line]
    assert f"checkpoint has {key}.{name}._target_={entry['_target_']}: from a stored config aeexp builds only" in line
    assert folder.is_dir() and not (folder / "written").exists()  # nothing ran


def test_a_run_resumed_measures_with_its_own_views(run_cli, tracking_uri):
    done = run_cli(f"tracking.uri={tracking_uri}", *FAST, "embed=[pca,tsne]", "metrics.knn.ks=[3]")
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    resumed = run_cli(f"resume={run.info.run_id}", "trainer.epochs=3", f"tracking.uri={tracking_uri}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    assert {"embed_pca_trust", "embed_tsne_trust", "test_knn3_acc"} <= set(run.data.metrics)
    assert "test_knn_acc" not in run.data.metrics and run.data.metrics["embed_knn_acc"] == run.data.metrics[
        "embed_pca_knn_acc"]


def test_a_view_of_ones_own_from_a_stored_config_is_built_when_the_command_names_it_again(run_cli, tracking_uri,
                                                                                          tmp_path):
    code, configs = tmp_path / "code", tmp_path / "configs" / "embed"
    code.mkdir()
    configs.mkdir(parents=True)
    (code / "myviews.py").write_text(textwrap.dedent('''
        def first_two(codes):
            return codes[:, :2]
    '''))
    (configs / "first_two.yaml").write_text("views:\n  first_two:\n    _target_: myviews.first_two\n"
                                            "    _partial_: true\n")
    own = ["--config-dir", str(tmp_path / "configs")]
    env = {"PYTHONPATH": str(code)}
    done = run_cli(*own, f"tracking.uri={tracking_uri}", *FAST, "embed=first_two", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    refused = run_cli(f"resume={run.info.run_id}", "trainer.epochs=3", f"tracking.uri={tracking_uri}", env=env)
    assert refused.returncode == 1 and "embed.views.first_two._target_=myviews.first_two:" in refused.stdout
    again = run_cli(*own, f"resume={run.info.run_id}", "trainer.epochs=3", "embed=first_two",
                    f"tracking.uri={tracking_uri}", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    assert run.info.status == "FINISHED" and "embed_first_two_trust" in run.data.metrics
