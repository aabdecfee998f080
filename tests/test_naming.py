"""Run names: runs that differ in a setting get names that say so, in MLflow's runs table."""

from __future__ import annotations

from conftest import FAST
from mlflow_store import runs_in

from aeexp import experiment, naming

SHORT = 40  # characters: what the runs table's name column shows without cutting


def test_three_runs_that_differ_only_in_optimizer_noise_or_scheduler_get_three_names(make_config, tracking_uri,
                                                                                    tmp_path):
    """Real runs logged to MLflow, each differing from the defaults in one setting, and one with the defaults."""
    settings = {"default": [], "optimizer": ["optimizer._target_=torch.optim.RAdam"],
                "noise": ["model.noise=masking"], "scheduler": ["scheduler=cosine"]}
    for overrides in settings.values():
        cfg = make_config(f"tracking.uri={tracking_uri}", *FAST, "trainer.epochs=1", "embed=pca", *overrides)
        experiment.run(cfg, tmp_path / "out")
    names = [run.info.run_name for run in sorted(runs_in(tracking_uri, "digits"), key=lambda r: r.info.start_time)]
    assert names == ["ae32-b4-digits", "ae32-b4-digits radam", "ae32-b4-digits masking", "ae32-b4-digits cosine"]


def test_each_setting_that_differs_from_the_defaults_adds_a_short_word(make_config):
    cfg = make_config("optimizer=sgd", "optimizer.lr=0.1", "scheduler=onecycle", "scheduler.warmup_epochs=2",
                      "model.noise=gaussian", "model.noise_level=0.2", "seed=3")
    name = naming.run_name(cfg)
    assert name == "ae32-b4-digits sgd lr=0.1 onecycle warmup2 gaussian0.2 seed=3"
    assert naming.run_name(make_config("optimizer=sgd")) == "ae32-b4-digits sgd"  # sgd's own lr is its default
    assert len(naming.run_name(make_config("optimizer=adam", "model.noise=masking", "seed=1"))) <= SHORT
    assert naming.run_name(make_config("model=conv", "dataset=mnist")) == "conv-b32-mnist"


def test_a_sweeps_jobs_add_the_swept_values_their_names_do_not_show(make_config):
    """A swept seed, optimizer or noise at its default shows too (``seed=0``, which a plain run's name leaves out);
    one the name shows already, or a bottleneck, is not said twice."""
    swept = ["seed", "trainer.epochs", "optimizer", "model.noise", "model.bottleneck"]
    assert (naming.run_name(make_config("trainer.epochs=20"), swept)
            == "ae32-b4-digits seed=0 epochs=20 optimizer=adamw noise=none")
    assert (naming.run_name(make_config("seed=2", "optimizer=sgd", "model.noise=masking"), swept)
            == "ae32-b4-digits sgd masking seed=2 epochs=300")


def test_tracking_run_name_replaces_the_default_and_a_sweep_still_adds_its_values(make_config):
    cfg = make_config("tracking.run_name=baseline", "optimizer=sgd", "seed=1")
    assert naming.run_name(cfg) == "baseline"
    assert naming.run_name(cfg, ["seed", "scheduler"]) == "baseline seed=1 scheduler=none"
