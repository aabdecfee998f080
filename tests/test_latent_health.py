"""Latent health (:mod:`aeexp.evaluation.health`): its thresholds on codes built to be healthy and collapsed, the
models' own hooks (a VAE's KL per dimension, a VQ-VAE's codebook use) on real models, and whole CLI runs on digits:
a VQ-VAE whose codebook is forced to collapse finishes with its health logged each epoch and the alarm, a VAE with a
large beta collapses and says so, a healthy ae32 raises no alarm. Each figure is opened and found non-blank. A health
component of one's own (``--config-dir``): measured, built from a stored config on resume only when named again, never
by ``aeexp evaluate``; a run logged before the health list resumes with the command's."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST
from mlflow.tracking import MlflowClient
from mlflow_store import metric_history, runs_in
from PIL import Image

from aeexp.evaluation import health
from aeexp.models import VQVAE, DenseAutoencoder, VariationalAutoencoder

IMAGES = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_active_units_on_codes_built_healthy_half_dead_and_alike() -> None:
    rng = np.random.default_rng(0)
    healthy = rng.normal(size=(500, 8))
    assert health.active_units(healthy) == {"latent_active_units": 8.0, "latent_dead_units": 0.0}
    half = healthy.copy()
    half[:, 4:] = 0.5 + 0.05 * rng.normal(size=(500, 4))  # variance 0.0025, below the threshold 0.01
    assert health.active_units(half) == {"latent_active_units": 4.0, "latent_dead_units": 4.0}
    alike = np.ones((500, 8))
    assert health.active_units(alike) == {"latent_active_units": 0.0, "latent_dead_units": 8.0}
    # the threshold is a setting: 0.001 counts the small-variance dimensions as active
    assert health.active_units(half, threshold=0.001)["latent_active_units"] == 8.0


def test_the_alarm_says_why_and_is_silent_for_a_healthy_code() -> None:
    assert health.alarm({"test_latent_active_units": 8.0, "test_latent_dead_units": 0.0,
                         "test_latent_collapsed_dims": 0.0}) is None
    assert health.alarm({"test_latent_active_units": 6.0, "test_latent_dead_units": 2.0}) == (
        "2 of 8 code dimensions dead (variance <= 0.01)")
    collapsed = health.alarm({"test_latent_active_units": 1.0, "test_latent_dead_units": 3.0,
                              "test_latent_collapsed_dims": 3.0})
    assert collapsed and "3 code dimensions collapsed to the prior (KL < 0.01 nats)" in collapsed
    alike = health.alarm({"test_latent_active_units": 0.0, "test_latent_dead_units": 4.0})
    assert alike and alike.startswith("all codes alike")
    assert health.alarm({"test_latent_active_units": 4.0, "test_latent_dead_units": 0.0, "test_codebook_used": 20.0,
                         "test_codebook_used_fraction": 20 / 256}) == (
        "the codebook uses 20 of its entries (7.8% < 10%)")
    assert health.alarm({"test_codebook_used": 40.0, "test_codebook_used_fraction": 40 / 256}) is None


def test_a_vae_with_half_its_dimensions_collapsed_is_counted_by_its_kl_hook() -> None:
    torch.manual_seed(0)
    model = VariationalAutoencoder((1, 8, 8), widths=[16], bottleneck=4)
    last = model.encoder[-1] if isinstance(model.encoder, torch.nn.Sequential) else None
    assert isinstance(last, torch.nn.Linear), model.encoder
    with torch.no_grad():
        last.weight[2:4].zero_()  # the means of dimensions 2 and 3: 0, whatever the image
        last.bias[2:4].zero_()
        last.weight[6:8].zero_()  # their log-variances: 0, the prior's
        last.bias[6:8].zero_()
        last.weight[0:2] *= 20  # dimensions 0 and 1 carry the image
    kl = health.kl_per_dimension(model, IMAGES)
    assert kl is not None and kl.shape == (4,)
    assert kl[2] == kl[3] == 0.0 and (kl[:2] > 0.1).all()
    assert health.collapsed_dimensions(model, IMAGES)["latent_collapsed_dims"] == 2.0
    codes = model.encode(IMAGES.float() / 255).detach().numpy()
    assert health.active_units(codes) == {"latent_active_units": 2.0, "latent_dead_units": 2.0}


def test_a_vqvae_codebook_forced_to_collapse_uses_one_entry() -> None:
    torch.manual_seed(0)
    model = VQVAE((1, 8, 8), widths=[16], bottleneck=4, codebook_size=16, vector_size=1)
    features = model.encoder(IMAGES.float() / 255).detach().flatten()
    with torch.no_grad():
        model.codebook.copy_(torch.quantile(features, torch.linspace(0.02, 0.98, 16))[:, None])  # spread: healthy
    spread = health.codebook(model, IMAGES)
    assert spread["codebook_used"] >= 12 and spread["codebook_perplexity"] > 6
    assert spread["codebook_used_fraction"] == spread["codebook_used"] / 16
    with torch.no_grad():
        model.codebook.fill_(features.max().item() + 100.0)  # every entry alike and far away ...
        model.codebook[5] = features.mean()  # ... but one
    collapsed = health.codebook(model, IMAGES)
    assert collapsed == {"codebook_used": 1.0, "codebook_used_fraction": 1 / 16, "codebook_perplexity": 1.0}
    counts = health.codebook_usage(model, IMAGES)
    assert counts is not None and counts[5] == 300 * 4 and counts.sum() == 300 * 4


def test_a_model_without_the_hooks_gets_only_the_active_units() -> None:
    model = DenseAutoencoder((1, 8, 8), widths=[16], bottleneck=4)
    assert health.collapsed_dimensions(model, IMAGES) == {} and health.codebook(model, IMAGES) == {}
    assert health.kl_per_dimension(model, IMAGES) is None and health.codebook_usage(model, IMAGES) is None


COLLAPSING = '''
    import torch

    from aeexp.models import VQVAE


    class CollapsingVQVAE(VQVAE):
        """A VQ-VAE whose encoder says nothing: every vector is 0, so one codebook entry is ever chosen."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.encoder = torch.nn.Sequential(self.encoder, Silence())


    class Silence(torch.nn.Module):
        def forward(self, x):
            return x * 0.0
'''


def _png_is_drawn(path: Path) -> None:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5, f"{path.name} is blank"


def _artifacts(tracking_uri: str, run_id: str) -> Path:
    return Path(MlflowClient(tracking_uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))


def _run(run_cli, tracking_uri: str, *overrides: str, options: tuple[str, ...] = (), env: dict[str, str] | None = None):
    done = run_cli(*options, f"tracking.uri={tracking_uri}", *FAST, *overrides, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    (run,) = runs_in(tracking_uri, "digits")
    assert run.info.status == "FINISHED"
    return run, output


def test_a_vqvae_whose_codebook_collapses_finishes_with_its_health_and_the_alarm(run_cli, tracking_uri, tmp_path):
    code, configs = tmp_path / "code", tmp_path / "configs"
    (configs / "model").mkdir(parents=True)
    code.mkdir()
    (code / "collapsing.py").write_text(textwrap.dedent(COLLAPSING))
    (configs / "model" / "collapsing.yaml").write_text("_target_: collapsing.CollapsingVQVAE\nname: collapsing\n"
                                                       "widths: [32]\nbottleneck: 4\nvector_size: 1\n")
    run, output = _run(run_cli, tracking_uri, "model=collapsing", options=("--config-dir", str(configs)),
                       env={"PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])})

    run_id, metrics = run.info.run_id, run.data.metrics  # (the default view, t-SNE, of codes all alike)
    for name in ("codebook_perplexity", "codebook_used", "latent_active_units", "latent_dead_units"):
        assert [step for step, _ in metric_history(tracking_uri, run_id, name)] == [1, 2], name
    assert metrics["codebook_used"] == 1.0 and metrics["codebook_perplexity"] == 1.0
    assert metrics["test_codebook_used"] == 1.0 and metrics["test_latent_active_units"] == 0.0
    alarm = run.data.tags[health.ALARM_TAG]
    assert alarm.startswith("all codes alike") and "the codebook uses 1 of its entries (0.4% < 10%)" in alarm
    assert output.count(f"latent alarm: {alarm}") == 1
    assert "skipped.tsne" in run.data.tags  # a view that cannot be computed is skipped, the run logged
    folder = _artifacts(tracking_uri, run_id)
    for name in ("codebook_usage.png", "traversals.png"):
        _png_is_drawn(folder / name)
    assert "kl_per_dimension.png" not in {p.name for p in folder.iterdir()}  # a VQ-VAE has no KL hook


def test_a_vae_with_a_large_beta_collapses_and_a_healthy_ae_raises_no_alarm(run_cli, tracking_uri, new_sqlite_store,
                                                                           tmp_path):
    run, output = _run(run_cli, tracking_uri, "model=vae", "model.beta=50", "trainer.epochs=4", "embed=pca")
    metrics = run.data.metrics
    assert metrics["test_latent_collapsed_dims"] > 4 / 2 and metrics["latent_collapsed_dims"] > 4 / 2
    assert [step for step, _ in metric_history(tracking_uri, run.info.run_id, "latent_collapsed_dims")] == [1, 2, 3, 4]
    assert "collapsed to the prior" in run.data.tags[health.ALARM_TAG]
    assert output.count("latent alarm: ") == 1
    folder = _artifacts(tracking_uri, run.info.run_id)
    for name in ("kl_per_dimension.png", "traversals.png"):
        _png_is_drawn(folder / name)
    page = (folder / "explorer.html").read_text(encoding="utf-8")
    assert "<summary" in page and "latent traversals" in page  # the explorer shows the traversals

    healthy_uri = new_sqlite_store(tmp_path / "healthy")
    healthy, output = _run(run_cli, healthy_uri, "model=ae32", "trainer.epochs=4", "embed=pca")
    assert health.ALARM_TAG not in healthy.data.tags and "latent alarm" not in output
    assert healthy.data.metrics["test_latent_active_units"] == 4.0
    assert [value for _, value in metric_history(healthy_uri, healthy.info.run_id, "latent_dead_units")] == [0.0] * 4
    assert "latent_collapsed_dims" not in healthy.data.metrics and "codebook_used" not in healthy.data.metrics
    _png_is_drawn(_artifacts(healthy_uri, healthy.info.run_id) / "traversals.png")


@pytest.mark.parametrize("entry", ["health.active_units.threshold=0", "health.posterior.threshold=-1"])
def test_a_threshold_that_is_not_positive_is_refused_in_one_line(run_cli, tracking_uri, entry):
    done = run_cli(entry, f"tracking.uri={tracking_uri}", *FAST)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{entry} is invalid: it must be above 0." in done.stdout + done.stderr


class _BrokenCodebook(VQVAE):
    """A VQ-VAE whose codebook hook fails: the health list goes on without it."""

    def codebook_usage(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no codebook today")


def test_a_health_component_that_fails_is_skipped_once_for_the_rest_of_the_run(caplog) -> None:
    from omegaconf import OmegaConf

    from aeexp.evaluation import lists

    components = lists.build_health(OmegaConf.load(Path(health.__file__).parents[2].parent / "conf" / "health"
                                                   / "default.yaml"))
    assert list(components) == ["active_units", "posterior", "codebook"]
    model = _BrokenCodebook((1, 8, 8), widths=[16], bottleneck=4, vector_size=1)
    each_epoch = health.EpochHealth(components, IMAGES)
    with caplog.at_level("WARNING"):
        first, second = each_epoch(model), each_epoch(model)
    assert set(first) == set(second) == {"latent_active_units", "latent_dead_units"}
    assert each_epoch.skips.reasons == {"codebook": "RuntimeError: no codebook today"}
    assert [r.getMessage() for r in caplog.records] == ["skipped codebook: RuntimeError: no codebook today"]
    assert each_epoch.skips.tags() == {"skipped.codebook": "RuntimeError: no codebook today"}


SPREAD = '''
def spread(codes):
    return {"latent_spread": float(codes.std())}
'''


def test_a_health_component_of_ones_own_is_measured_kept_on_resume_and_never_built_by_evaluate(run_cli, tracking_uri,
                                                                                                 tmp_path):
    """The README's *Latent health*: one's own component from --config-dir is measured each epoch and at the end; a
    resume builds it from the stored config only when the command names it again, and then keeps measuring it;
    ``aeexp evaluate`` measures with the list composed now, never building the run's stored one."""
    code, configs = tmp_path / "code", tmp_path / "configs"
    (configs / "health").mkdir(parents=True)
    code.mkdir()
    (code / "myhealth.py").write_text(SPREAD)
    (configs / "health" / "mine.yaml").write_text("spread:\n  _target_: myhealth.spread\n  _partial_: true\n")
    own = ("--config-dir", str(configs))
    env = {"PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    run, _ = _run(run_cli, tracking_uri, "health=[default,mine]", "embed=pca", options=own, env=env)
    run_id = run.info.run_id
    assert [step for step, _ in metric_history(tracking_uri, run_id, "latent_spread")] == [1, 2]
    assert run.data.metrics["test_latent_spread"] > 0 and "test_latent_active_units" in run.data.metrics

    refused = run_cli(f"resume={run_id}", "trainer.epochs=3", f"tracking.uri={tracking_uri}", env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stdout + refused.stderr
    assert "health.spread._target_=myhealth.spread:" in refused.stdout + refused.stderr
    run, _ = _run(run_cli, tracking_uri, f"resume={run_id}", "trainer.epochs=3", "health=[default,mine]",
                  "embed=pca", options=own, env=env)
    assert [step for step, _ in metric_history(tracking_uri, run_id, "latent_spread")] == [1, 2, 3]

    evaluated = run_cli("evaluate", run_id, "--tracking-uri", tracking_uri)  # no --config-dir, no PYTHONPATH
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-3000:]
    assert f"run {run_id}" in evaluated.stdout and "skipped" not in evaluated.stdout


def test_a_stored_config_builds_aeexps_own_health_functions_and_an_older_run_gets_the_commands_list() -> None:
    from omegaconf import OmegaConf

    from aeexp import stored_config
    from aeexp.evaluation import lists

    for name in ("active_units", "collapsed_dimensions", "codebook"):
        assert stored_config.shipped(f"aeexp.evaluation.health.{name}"), name
    assert not stored_config.shipped("aeexp.evaluation.health.measure")  # a function, but none of the list's
    cfg = lists.compose(["health.active_units.threshold=0.5"])
    older = OmegaConf.to_container(cfg, resolve=True)
    del older["health"]  # a run logged before the health list
    stored = stored_config.with_schema(stored_config.read(OmegaConf.to_yaml(older), "it"), "it")
    assert not stored.health
    lists.for_resumed_run(stored, cfg)
    assert stored.health.active_units.threshold == 0.5 and list(stored.health) == list(cfg.health)
