"""scripts/bench.py measures what its labels say: each row's network composed with its dataset and checked before
timing, the record's selection of parts, and the process helpers its whole-run, sweep and load parts use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402  (scripts/, beside the tests)
import bench_process  # noqa: E402
import bench_runs  # noqa: E402

from aeexp import models  # noqa: E402


def _model(cfg):
    return models.build(cfg.model, (1, 28, 28) if cfg.dataset.name != "digits" else (1, 8, 8))


def test_the_dense_row_is_the_32_value_network_its_label_names_on_fashion_mnist():
    cfg = bench.dense_config("fashion_mnist")
    assert (cfg.dataset.name, list(cfg.model.widths), cfg.model.bottleneck) == ("fashion_mnist", [128, 64], 32)
    bench.check_sizes(_model(cfg), cfg, bench.DENSE_WIDTHS)  # passes: the sizes the label names


def test_a_dataset_whose_preset_changes_the_code_is_refused_before_timing():
    cfg = bench.dense_config("digits")  # conf/dataset_model/digits.yaml: a 4-d code for every model
    assert cfg.model.bottleneck == 4
    with pytest.raises(SystemExit, match="4-value code"):
        bench.check_sizes(_model(cfg), cfg, bench.DENSE_WIDTHS)


def test_the_conv_row_is_composed_with_its_dataset():
    cfg = bench.compose("fashion_mnist", "model=conv", "optimizer=adam", "scheduler=none")
    bench.check_sizes(_model(cfg), cfg, None)
    assert bench.compose("digits", "model=conv").model.bottleneck == 4


def test_record_selects_every_part_but_the_folder_and_later_options_win():
    args = bench.parse_args(["--record", "--repeats", "1", "--no-write"])
    assert (args.repeats, args.epochs, args.embed_n, args.skip) == (1, 6, [10_000], ["folder"])
    assert bench.parse_args(["--only", "sweep", "load"]).skip == [
        "training", "adamw", "conv", "embedding", "health", "run", "folder", "digits-run"]
    assert bench.parse_args(["--only", "training"]).skip == ["embedding", "health", "run", "folder", "digits-run",
                                                             "sweep", "load"]
    assert "load" in bench.parse_args(["--load", "0"]).skip


def test_the_one_job_sweep_has_one_bottleneck():
    one = bench_runs.sweep_overrides("one")
    assert [o for o in one if o.startswith("model.bottleneck")] == ["model.bottleneck=2"]
    assert "hydra.launcher.n_jobs=2" in bench_runs.sweep_overrides("joblib")
    assert bench_runs.sweep_overrides("sequential") == bench_runs.SWEEP


def test_import_report_read_by_package():
    report = subprocess.run([sys.executable, "-X", "importtime", "-c", "import json, email.message"],
                            capture_output=True, text=True, check=True).stderr
    top = bench_process.top_level_imports(report)
    assert "json" in top and "email.message" in top and "json.decoder" not in top  # nested ones come with theirs
    packages = {name: (modules, seconds) for name, modules, seconds in bench_process.imports_by_package(report)}
    assert packages["json"][0] >= 3 and packages["email"][0] >= 2 and packages["json"][1] > 0


def test_competing_load_runs_its_processes_for_the_block_only():
    with bench_process.competing_load(2) as pids:
        assert len(pids) == 2
        time.sleep(0.2)
        for pid in pids:
            os.kill(pid, 0)  # running
            assert Path(f"/proc/{pid}/stat").read_text().split()[2] in "RS"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
