"""The config schema: composition from the packaged YAML, type checks at compose time, value checks."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from aeexp.config import flatten, validate
from aeexp.errors import ConfigError


def test_defaults_run_offline_on_digits(make_config):
    cfg = make_config()
    assert cfg.dataset.name == "digits"
    assert cfg.model.name == "ae32" and list(cfg.model.widths) == [128, 64] and cfg.model.bottleneck == 32
    assert cfg.tracking.uri is None
    assert cfg.tracking.experiment == "digits"
    validate(cfg)


def test_seed_models_and_overrides(make_config):
    cfg = make_config("dataset=mnist", "model=ae25")
    assert list(cfg.model.widths) == [400, 200, 100, 50] and cfg.model.bottleneck == 25
    assert cfg.tracking.experiment == "mnist"
    cfg = make_config("model=ae32", "model.bottleneck=8", "model.widths=[256,64]", "trainer.lr=3e-3", "seed=1")
    assert list(cfg.model.widths) == [256, 64] and cfg.model.bottleneck == 8
    assert cfg.trainer.lr == pytest.approx(3e-3) and cfg.seed == 1


@pytest.mark.parametrize("override", ["trainer.epochs=ten", "model.bottleneck=1.5", "trainer.device=tpu",
                                      "trainer.optimizer=adamw", "model.widths=[a,b]"])
def test_wrong_types_fail_at_compose_naming_the_key(make_config, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException) as info:
        make_config(override)
    cause = info.value.__cause__
    assert isinstance(cause, ValidationError | ConfigKeyError)
    assert key in str(info.value) + str(cause)


def test_unknown_key_fails_at_compose(make_config):
    with pytest.raises(ConfigCompositionException, match=r"trainer\.epoch"):
        make_config("trainer.epoch=3")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=0", "trainer.epochs=0 is invalid"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.lr=0", "trainer.lr=0"),
        ("trainer.momentum=-1", "trainer.momentum=-1"),
        ("model.bottleneck=0", "model.bottleneck=0"),
        ("model.bottleneck=64", "smaller than the input size 64 of dataset digits"),
        ("model.widths=[]", "model.widths=[]"),
        ("model.widths=[8,-2]", "model.widths[1]=-2"),
        ("dataset.val_fraction=0", "dataset.val_fraction=0"),
        ("dataset.val_fraction=1", "dataset.val_fraction=1"),
        ("embed.n_samples=-5", "embed.n_samples=-5"),
        ("embed.perplexity=0", "embed.perplexity=0"),
        ("embed.n_iter=0", "embed.n_iter=0"),
        ("embed.early_exaggeration_iter=-1", "embed.early_exaggeration_iter=-1"),
        ("dataset.name=cifar", "dataset.name='cifar' is invalid: choose one of digits, mnist"),
    ],
)
def test_invalid_values_name_the_key(make_config, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(make_config(override))


def test_bottleneck_bound_uses_the_dataset_input_size(make_config):
    validate(make_config("dataset=mnist", "model.bottleneck=64"))  # 64 < 784
    with pytest.raises(ConfigError, match="784"):
        validate(make_config("dataset=mnist", "model.bottleneck=784"))


def test_flatten_gives_dotted_resolved_keys(make_config):
    flat = flatten(make_config("dataset=fashion_mnist", "+tags.owner=me"))
    assert flat["model.bottleneck"] == "32"
    assert flat["model.widths"] == "[128, 64]"
    assert flat["trainer.optimizer"] == "adam"  # enum as its value
    assert flat["tracking.experiment"] == "fashion_mnist"  # interpolation resolved
    assert flat["tracking.uri"] == "None"
    assert flat["tags.owner"] == "me"
    assert all("." in key or key in ("seed", "resume") for key in flat)
    assert flat["resume"] == "None"
