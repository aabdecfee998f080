"""A sweep as a whole: how stable each setting's codes are across seeds (linear CKA, 10-NN overlap) and what mattered
for the objective (importances, parallel coordinates), from the measures' numbers up to real sweeps' reports."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pytest
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import runs_in

from aeexp import compare, importance, sweep_insight
from aeexp.evaluation import stability
from aeexp.evaluation.figures import plt

QUICK = [*FAST[1:], "trainer.epochs=1", "embed=pca"]


def _codes(n: int = 300, dim: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim))


def test_cka_is_one_for_the_same_code_rotated_and_scaled_and_low_for_unrelated_codes():
    x = _codes()
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
    assert stability.linear_cka(x, x) == pytest.approx(1.0)
    assert stability.linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    unrelated = stability.linear_cka(x, _codes(seed=2))
    assert 0.0 <= unrelated < 0.2
    assert np.isnan(stability.linear_cka(x, np.ones_like(x)))  # a collapsed code: no value, not a false 0 or 1


def test_neighbourhood_overlap_is_one_for_the_same_neighbours_and_near_chance_for_unrelated_codes():
    x = _codes()
    assert stability.knn_overlap(x, x) == 1.0
    assert stability.knn_overlap(x, 2.0 * x) == 1.0  # distances scaled: the same neighbours
    unrelated = stability.knn_overlap(x, _codes(seed=3))
    assert 0.0 <= unrelated < 0.15  # chance is 10 / 299


def test_across_runs_takes_every_pair_with_the_same_rows():
    rows = np.arange(300)
    x = _codes()
    same = stability.across_runs([(x, rows), (x.copy(), rows), (x.copy(), rows)])
    assert same == {"code_cka": (pytest.approx(1.0), pytest.approx(0.0), 3), "code_knn10_overlap": (1.0, 0.0, 3)}
    mixed = stability.across_runs([(x, rows), (_codes(seed=4), rows), (x, rows + 1)])  # the last: other images
    assert {name: found[2] for name, found in mixed.items()} == {"code_cka": 1, "code_knn10_overlap": 1}
    assert stability.across_runs([(x, rows)]) == {}


def test_the_codes_file_is_small_the_same_rows_for_every_seed_and_read_as_data(tmp_path):
    labels = np.repeat(np.arange(10), 80)
    codes = _codes(800, 8).astype(np.float32)
    path = stability.write_codes(codes, labels, tmp_path)
    read, rows = stability.read_codes(path)
    assert len(rows) == stability.N_IMAGES and np.array_equal(rows, stability.fixed_rows(800, labels))
    assert np.allclose(read, codes[rows], atol=1e-2) and path.stat().st_size < 20_000
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "objects.npz", codes=np.array([object()]), rows=np.arange(1))
    assert stability.read_codes(tmp_path / "bad.npz") is None
    assert stability.read_codes(tmp_path / "objects.npz") is None


def test_the_forest_finds_the_setting_the_objective_depends_on():
    lr = ["0.001", "0.01", "0.1", "0.3"] * 4
    model = ["ae32", "ae25"] * 8
    objective = [float(np.log10(float(v))) for v in lr]  # only lr matters
    found = importance.forest_importances({"model": model, "optimizer.lr": lr}, objective)
    assert list(found) == ["optimizer.lr", "model"] and found["optimizer.lr"] > 0.9
    assert sum(found.values()) == pytest.approx(1.0)
    assert list(importance.numeric(["b", "a", "b"])) == [1.0, 0.0, 1.0]


def _assert_not_blank(path: Path) -> None:
    pixels = matplotlib.image.imread(path)[..., :3]
    drawn = (pixels < 0.9).any(axis=-1).mean()  # share of pixels that are not (nearly) white
    assert drawn > 0.01 and pixels.std() > 0.05, (path, drawn)


def test_the_optuna_study_gives_its_own_importances():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True) * 100 + t.suggest_int("bottleneck", 2, 8)
                   * 0.001, n_trials=10)
    tags = sweep_insight.optuna_importance_tags(study)
    assert set(tags) == {"optuna.importance.lr", "optuna.importance.bottleneck"}
    assert float(tags["optuna.importance.lr"]) > float(tags["optuna.importance.bottleneck"])
    small = optuna.create_study()
    small.optimize(lambda t: t.suggest_float("lr", 0, 1) + t.suggest_float("b", 0, 1), n_trials=7)
    assert sweep_insight.optuna_importance_tags(small) == {}  # under 8 trials


def test_figures_are_drawn(tmp_path):
    settings = {"model.bottleneck": ["2", "4"] * 4, "model": ["ae32"] * 4 + ["ae25"] * 4}
    objective = [0.4, 0.35, 0.41, 0.33, 0.45, 0.39, 0.44, 0.37]
    found = importance.Importance("val_loss", importance.FOREST_METHOD,
                                  importance.forest_importances(settings, objective))
    for name, figure in (("bars.png", importance.importance_figure(found)),
                         ("lines.png", importance.parallel_coordinates(settings, objective, "val_loss"))):
        figure.savefig(tmp_path / name, dpi=80)
        plt.close(figure)
        _assert_not_blank(tmp_path / name)


def _report(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "multirun").glob("*/*/comparison")
    return folder


def test_a_setting_whose_seeds_give_identical_codes_is_fully_stable(run_cli, tracking_uri, tmp_path):
    """Three runs of one setting with the same seed (tags.copy is not a setting) train the same codes on a CPU."""
    done = run_cli("-m", "+tags.copy=a,b,c", "model.bottleneck=3", f"tracking.uri={tracking_uri}", *QUICK)
    assert done.returncode == 0, done.stderr[-3000:]
    with (_report(tmp_path) / compare.SETTINGS_CSV).open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["n"] == "3"
    assert (row["code_cka_mean"], row["code_cka_std"]) == ("1.0000", "0.0000")
    assert (row["code_knn10_overlap_mean"], row["code_knn10_overlap_std"]) == ("1.0000", "0.0000")
    children = [r for r in runs_in(tracking_uri, "digits") if "sweep.name" not in r.data.tags]
    logged = {a.path for a in MlflowClient(tracking_uri).list_artifacts(children[0].info.run_id)}
    assert stability.CODES_ARTIFACT in logged
    tags = [child.data.tags for child in children]  # what a rerun compares
    assert len({t["data.hash"] for t in tags}) == 1 and tags[0]["data.hash"].startswith("sha256:")
    assert all(tags[0][f"versions.{p}"] not in ("", "none") for p in ("numpy", "scikit-learn", "openTSNE", "torch"))
    assert "git.commit" in tags[0]
    assert not (_report(tmp_path) / sweep_insight.IMPORTANCE_CSV).exists()  # 3 runs, no setting varied


def test_an_eight_run_two_setting_sweep_says_what_mattered(run_cli, tracking_uri, tmp_path):
    done = run_cli("-m", "model.bottleneck=2,4", "optimizer.lr=0.001,0.003,0.01,0.03", f"tracking.uri={tracking_uri}",
                   *QUICK, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = _report(tmp_path)
    with (folder / sweep_insight.IMPORTANCE_CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["setting"] for row in rows} == {"model.bottleneck", "optimizer.lr"}
    assert sum(float(row["importance"]) for row in rows) == pytest.approx(1.0, abs=1e-3)
    assert all(row["method"] == importance.FOREST_METHOD and row["objective"] == "val_loss" for row in rows)
    for name in (sweep_insight.IMPORTANCE_PNG, sweep_insight.PARALLEL_PNG):
        _assert_not_blank(folder / name)
    assert "## What mattered: each setting's importance for val_loss" in (folder / "comparison.md").read_text()
    page = (folder / "report.html").read_text()
    assert 'alt="importance.png"' in page and 'alt="parallel_coordinates.png"' in page
    with (folder / compare.SETTINGS_CSV).open() as handle:
        assert "code_cka_mean" not in next(csv.DictReader(handle))  # one seed per setting: no pairs, no column


def _npz(path: Path, compressed: bool, labels_dtype: str = "int64", bump: bool = False) -> Path:
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), rng.integers(0, 256, (12, 8, 8), dtype=np.uint8)
    if bump:
        x_test[3, 2, 2] ^= 1
    arrays = {"x_train": x_train, "x_test": x_test, "y_train": (np.arange(40) % 4).astype(labels_dtype),
              "y_test": (np.arange(12) % 4).astype(labels_dtype)}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def test_the_data_hash_is_of_the_decoded_arrays(tmp_path):
    from aeexp import data

    def digest(path: Path) -> str:
        return data.load(data.ArraysDataset(str(path)), seed=0).digest

    first = digest(_npz(tmp_path / "a.npz", compressed=False))
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert digest(_npz(tmp_path / "b.npz", compressed=True, labels_dtype="uint8")) == first  # same content
    assert data.load(data.ArraysDataset(str(tmp_path / "a.npz")), seed=5).digest == first  # not the seed's split
    assert digest(_npz(tmp_path / "c.npz", compressed=False, bump=True)) != first  # one pixel changed


def test_a_report_section_that_fails_is_a_warning_and_the_rest_is_written(caplog):
    from aeexp import report
    from aeexp.tracking import RunRecord

    runs = [RunRecord(f"r{i}", f"run {i}", "FINISHED", {"seed": str(i)}, {"val_loss": 0.1}, {}, "0") for i in range(2)]
    rows = [{"setting": "all runs"}]

    def unreachable(run_id: str, path: str, folder: Path) -> Path | None:
        raise OSError("the artifact store went away")

    assert sweep_insight.add_stability(report.settings(runs), rows, unreachable) == []
    assert rows == [{"setting": "all runs"}] and "stability columns were left out (OSError" in caplog.text
