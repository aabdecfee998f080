"""The config: composition from the packaged YAML, type checks at compose time (trainer, embed, tracking), value
checks in ``config.validate``, and the checks of what is built from a ``_target_`` (dataset, model, optimizer, the
metric and view lists)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from aeexp import data, models, stored_config
from aeexp.config import MOVED, MOVED_EMBED, TrackingConfig, TrainerConfig, flatten, refuse_moved, validate
from aeexp.errors import ConfigError
from aeexp.evaluation import lists
from aeexp.models.common import common_settings
from aeexp.training import optim


def _build(cfg):
    """What a run builds before reading any data: the dataset source, the model for its images, the optimizer."""
    source = data.build(cfg.dataset)
    model = models.build(cfg.model, source.image_shape)
    return source, model, optim.build_optimizer(cfg.optimizer, model)


def test_defaults_run_offline_on_digits(make_config):
    cfg = make_config()
    assert cfg.dataset.name == "digits" and cfg.dataset._target_ == "aeexp.data.Digits"
    assert cfg.model.name == "ae32" and list(cfg.model.widths) == [128, 64]
    assert cfg.model.bottleneck == 4, "dataset_model/digits.yaml: a 4-d code on the 8x8 digits (PCA of 32 is lossless)"
    assert cfg.trainer.epochs == 300 and cfg.trainer.early_stopping.patience == 10
    assert cfg.model._target_ == "aeexp.models.DenseAutoencoder"
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == pytest.approx(1e-3)
    assert cfg.scheduler._target_ is None
    assert cfg.tracking.uri is None
    assert cfg.tracking.experiment == "digits"
    validate(cfg)
    source, model, optimizer = _build(cfg)
    assert isinstance(source, data.Digits) and source.image_shape == (1, 8, 8)
    assert type(model) is models.DenseAutoencoder and model.widths == [128, 64] and model.bottleneck == 4
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_seed_models_and_overrides(make_config):
    cfg = make_config("dataset=mnist", "model=ae25")
    assert list(cfg.model.widths) == [400, 200, 100, 50] and cfg.model.bottleneck == 25
    assert cfg.tracking.experiment == "mnist"
    cfg = make_config("model=ae32", "model.bottleneck=8", "model.widths=[256,64]", "optimizer.lr=3e-3", "seed=1")
    assert list(cfg.model.widths) == [256, 64] and cfg.model.bottleneck == 8
    assert cfg.optimizer.lr == pytest.approx(3e-3) and cfg.seed == 1
    validate(cfg)
    _, model, optimizer = _build(cfg)
    assert model.widths == [256, 64] and model.bottleneck == 8
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-3)
    cfg = make_config("optimizer=sgd", "optimizer.momentum=0.9", "model.loss=mse")
    validate(cfg)
    _, model, optimizer = _build(cfg)
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["momentum"] == 0.9
    assert model.loss == "mse"


@pytest.mark.parametrize("override", ["trainer.epochs=ten", "trainer.device=tpu", "trainer.grad_clip=big",
                                      "trainer.progress=maybe", "embed.n_samples=many", "embed.views=many",
                                      "tracking.uri=[1,2]", "seed=first"])
def test_wrong_types_of_the_schema_fail_at_compose_naming_the_key(make_config, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException) as info:
        make_config(override)
    cause = info.value.__cause__
    assert isinstance(cause, ValidationError | ConfigKeyError)
    assert key in str(info.value) + str(cause)


@pytest.mark.parametrize(("override", "message"), [
    ("model.bottleneck=1.5", "model.bottleneck=1.5 is invalid: expected an integer."),
    ("model.widths=[a,b]", "model.widths=['a', 'b'] is invalid: expected a list, each item an integer."),
    ("model.loss=l1", "model.loss='l1' is invalid: choose one of bce, mse."),
    ("model.noise_level=high", "model.noise_level='high' is invalid: expected a number or null."),
    ("+model.foo=3", "model.foo is not a parameter of aeexp.models.dense.DenseAutoencoder (its parameters: widths, "
                     "bottleneck, code_norm, loss, noise, noise_level); remove it or fix its name"),
    ("dataset.val_fraction=half", "dataset.val_fraction='half' is invalid: expected a number."),
])
def test_wrong_types_of_built_components_compose_and_fail_at_build(make_config, override, message):
    cfg = make_config(override)  # no schema for what a _target_ names: its class checks its parameters
    validate(cfg)
    with pytest.raises(ConfigError) as info:
        _build(cfg)
    assert str(info.value) == message


def test_unknown_key_fails_at_compose(make_config):
    with pytest.raises(ConfigCompositionException, match=r"trainer\.epoch"):
        make_config("trainer.epoch=3")
    with pytest.raises(ConfigCompositionException, match=r"model\.foo"):  # a new key of a model needs the +
        make_config("model.foo=3")


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.lr=0.01", "trainer.lr is no longer a setting: give optimizer.lr=0.01 instead."),
    ("trainer.optimizer=adamw", "trainer.optimizer is no longer a setting: give optimizer=adamw instead."),
    ("trainer.momentum=0.9", "trainer.momentum is no longer a setting: give optimizer=sgd optimizer.momentum=0.9 "
                             "instead."),
    ("trainer.loss=mse", "trainer.loss is no longer a setting: give model.loss=mse instead."),
])
def test_moved_trainer_keys_are_refused_naming_the_new_key(make_config, override, message):
    for spelling in (override, f"+{override}", f"++{override}"):
        with pytest.raises(ConfigError) as info:
            refuse_moved(["-m", "dataset=mnist", spelling])
        assert str(info.value) == message
    assert set(MOVED) == {"lr", "optimizer", "momentum", "loss"}
    refuse_moved(["trainer.epochs=3", "optimizer.lr=0.01", "model.loss=mse", "--cfg", "job"])  # no moved key
    shown = make_config().trainer  # nor are they settings: `--cfg job` does not show them
    assert not set(MOVED) & set(shown) and "epochs" in shown


def test_a_config_stored_before_the_keys_moved_still_reads():
    """Runs made while the schema kept the moved keys (as null) stored them in their config.yaml: resume and evaluate
    read those configs on today's schema."""
    stored = ("model: {_target_: aeexp.models.DenseAutoencoder, name: ae32, bottleneck: 4}\n"
              "trainer: {epochs: 7, batch_size: 64, lr: null, optimizer: null, momentum: null, loss: null}\n")
    cfg = stored_config.with_schema(stored_config.read(stored, "run r's config"), "run r's config")
    assert cfg.trainer.epochs == 7 and cfg.trainer.batch_size == 64 and cfg.trainer.early_stopping.patience == 10
    assert not set(MOVED) & set(cfg.trainer) and cfg.model.bottleneck == 4
    with pytest.raises(stored_config.StoredConfigError, match=r"run r's config does not fit .*epoch"):
        stored_config.with_schema(stored_config.read("trainer: {epoch: 7}\n", "run r's config"), "run r's config")


@pytest.mark.parametrize(("override", "message"), [
    ("embed.methods=[tsne,pca]", "embed.methods is no longer a setting: give embed=[tsne,pca] instead."),
    ("embed.perplexity=50", "embed.perplexity is no longer a setting: give embed.views.tsne.perplexity=50 instead."),
    ("embed.n_iter=100", "embed.n_iter is no longer a setting: give embed.views.tsne.n_iter=100 instead."),
    ("embed.early_exaggeration_iter=50", "embed.early_exaggeration_iter is no longer a setting: give "
                                         "embed.views.tsne.early_exaggeration_iter=50 instead."),
    ("embed.n_neighbors=5", "embed.n_neighbors is no longer a setting: give embed.views.umap.n_neighbors=5 instead."),
    ("embed.min_dist=0.5", "embed.min_dist is no longer a setting: give embed.views.umap.min_dist=0.5 instead."),
])
def test_moved_embed_keys_are_refused_naming_the_new_key(make_config, override, message):
    for spelling in (override, f"+{override}"):
        with pytest.raises(ConfigError) as info:
            refuse_moved(["dataset=mnist", spelling])
        assert str(info.value) == message
    assert len(MOVED_EMBED) == 6
    refuse_moved(["embed=[tsne,pca]", "embed.views.tsne.perplexity=50", "embed.n_samples=100"])  # no moved key
    shown = make_config().embed  # nor are they settings: `--cfg job` does not show them
    assert not set(MOVED_EMBED) & set(shown) and "views" in shown


def test_a_config_stored_before_the_view_lists_still_reads():
    """Runs made before embed.views stored embed.methods and the views' settings as embed keys: read on today's
    schema, their views are named entries (no _target_: a stored config builds nothing), their settings dropped."""
    def from_stored(text: str):
        return stored_config.with_schema(stored_config.read(text, "run r's config"), "run r's config")

    stored = "embed: {methods: [pca, umap], n_samples: 200, perplexity: 30.0, n_neighbors: 15, min_dist: 0.1}\n"
    cfg = from_stored(stored)
    assert list(cfg.embed.views) == ["pca", "umap"] and all(not entry for entry in cfg.embed.views.values())
    assert cfg.embed.n_samples == 200 and not set(MOVED_EMBED) & set(cfg.embed)
    kept = from_stored("embed: {views: {pca: {_target_: aeexp.evaluation.views.pca}}, methods: null}\n")
    assert list(kept.embed.views) == ["pca"] and kept.embed.views.pca._target_ == "aeexp.evaluation.views.pca"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=0", "trainer.epochs=0 is invalid"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.grad_clip=0", "trainer.grad_clip=0.0 is invalid: it must be positive (or null: no clipping)."),
        ("embed.n_samples=-5", "embed.n_samples=-5"),
        ("seed=-1", "seed=-1 is invalid: it must be an integer from 0 to 4294967295"),
        ("seed=100000000000000000000", "seed=100000000000000000000 is invalid: it must be an integer from 0 to "
                                       "4294967295 (the seeds numpy and scikit-learn take)."),
        ("tracking.experiment=''", "tracking.experiment='' is invalid"),
        ("model._target_=null", "model._target_=None is invalid: choose a preset"),
        ("optimizer._target_=null", "optimizer._target_=None is invalid: choose a preset"),
    ],
)
def test_invalid_values_name_the_key(make_config, override, message):
    with pytest.raises(ConfigError) as info:
        validate(make_config(override))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.bottleneck=0", "model.bottleneck=0 is invalid: it must be positive."),
        ("model.bottleneck=64", "model.bottleneck=64 is invalid: it must be smaller than the input size 64 of the "
                                "dataset's 1x8x8 images."),
        ("model.widths=[]", "model.widths=[] is invalid"),
        ("model.widths=[8,-2]", "model.widths[1]=-2 is invalid"),
        ("model.noise=masking model.noise_level=1.5", "model.noise_level=1.5 is invalid: with model.noise=masking "
                                                      "it is a probability: it must lie in [0, 1]."),
        ("model.noise=gaussian model.noise_level=-0.1", "model.noise_level=-0.1 is invalid: it must be >= 0."),
        ("dataset.val_fraction=0", "dataset.val_fraction=0 is invalid: it must lie strictly between 0 and 1."),
        ("dataset.val_fraction=1", "dataset.val_fraction=1 is invalid: it must lie strictly between 0 and 1."),
        ("dataset.val_fraction=1.5", "dataset.val_fraction=1.5 is invalid: it must lie strictly between 0 and 1."),
        ("dataset._target_=aeexp.data.Cifar", "dataset._target_='aeexp.data.Cifar' is invalid: aeexp.data has no "
                                              "class or function Cifar"),
        ("optimizer.lr=-1", "optimizer: torch.optim.AdamW refused its settings (Invalid learning rate: -1)"),
    ],
)
def test_invalid_values_of_built_components_name_the_key(make_config, override, message):
    cfg = make_config(*override.split())
    validate(cfg)  # these are the classes' to judge
    with pytest.raises(ConfigError) as info:
        _build(cfg)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(("overrides", "message"), [
    ("embed.views.tsne.perplexity=0", "embed.views.tsne.perplexity=0 is invalid: it must be above 0."),
    ("embed.views.tsne.n_iter=0", "embed.views.tsne.n_iter=0 is invalid: it must be at least 1."),
    ("embed.views.tsne.early_exaggeration_iter=-1", "embed.views.tsne.early_exaggeration_iter=-1 is invalid: it must "
                                                    "be at least 0."),
    ("embed.views.tsne.n_iter=1.5", "embed.views.tsne.n_iter=1.5 is invalid: expected an integer."),
    ("embed=umap embed.views.umap.n_neighbors=1", "embed.views.umap.n_neighbors=1 is invalid: it must be at least 2."),
    ("embed=umap embed.views.umap.min_dist=-0.1", "embed.views.umap.min_dist=-0.1 is invalid: it must be at least 0."),
    ("embed=umap embed.views.umap.n_epochs=0", "embed.views.umap.n_epochs=0 is invalid: it must be at least 1."),
    ("metrics.knn.ks=[1,0]", "metrics.knn.ks[1]=0 is invalid: it must be at least 1."),
    ("metrics.probe.c=0", "metrics.probe.c=0 is invalid: it must be above 0."),
    ("+metrics.kmeans.seed=3", "metrics.kmeans.seed is not a setting: aeexp passes it"),
    ("~metrics.probe.c", "metrics.probe.c is missing: aeexp.evaluation.metrics.linear_probe needs it"),
    ("~metrics.knn._partial_", "metrics.knn._partial_ is missing: aeexp.evaluation.metrics.knn is a function"),
    ("metrics.kmeans._target_=aeexp.evaluation.metrics.nope", "metrics.kmeans._target_='aeexp.evaluation.metrics.nope' "
                                                              "is invalid: aeexp.evaluation.metrics has no class"),
    ("embed=[pca,umap] +embed.views.tsne=null", None),  # an entry set to null is left out
    ("+embed.views.loss_curves._target_=aeexp.evaluation.views.pca", "embed.views.loss_curves: a view cannot be named "
                                                                     "loss_curves"),
])
def test_invalid_metric_and_view_entries_name_the_key(make_config, overrides, message):
    cfg = make_config(*overrides.split())
    validate(cfg)  # the lists' entries are theirs to judge, when built (before any data is read)
    if message is None:
        assert list(lists.build(cfg).views) == ["pca", "umap"]
        return
    with pytest.raises(ConfigError) as info:
        lists.build(cfg)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_invalid_sgd_momentum_is_refused_when_the_optimizer_is_built(make_config):
    cfg = make_config("optimizer=sgd", "optimizer.momentum=-1")
    validate(cfg)
    with pytest.raises(ConfigError, match=r"^optimizer: torch\.optim\.SGD refused its settings \(Invalid momentum "
                                          r"value: -1"):
        _build(cfg)


def test_bottleneck_bound_uses_the_dataset_input_size(make_config):
    _, model, _ = _build(make_config("dataset=mnist", "model.bottleneck=64"))  # 64 < 784
    assert model.image_shape == (1, 28, 28) and model.bottleneck == 64
    with pytest.raises(ConfigError, match="smaller than the input size 784 of the dataset's 1x28x28 images"):
        _build(make_config("dataset=mnist", "model.bottleneck=784"))


def test_flatten_gives_dotted_resolved_keys(make_config):
    flat = flatten(make_config("dataset=fashion_mnist", "optimizer=adamw", "scheduler=onecycle", "+tags.owner=me"))
    assert flat["model.bottleneck"] == "32"
    assert flat["model.widths"] == "[128, 64]"
    assert flat["model._target_"] == "aeexp.models.DenseAutoencoder"
    assert flat["model.loss"] == "bce"
    assert flat["optimizer._target_"] == "torch.optim.AdamW"
    assert flat["optimizer.lr"] == "0.001"
    assert flat["scheduler._target_"] == "torch.optim.lr_scheduler.OneCycleLR"
    assert flat["scheduler.max_lr"] == "0.001"  # interpolation of optimizer.lr resolved
    assert flat["dataset._target_"] == "aeexp.data.IdxDataset"
    assert flat["trainer.device"] == "auto"  # enum as its value
    assert flat["tracking.experiment"] == "fashion_mnist"  # interpolation resolved
    assert flat["tracking.uri"] == "None"
    assert flat["tags.owner"] == "me"
    for key in MOVED:  # the moved keys are no settings: not logged as params
        assert f"trainer.{key}" not in flat
    for key in MOVED_EMBED:
        assert f"embed.{key}" not in flat
    assert flat["embed.views.tsne._target_"] == "aeexp.evaluation.views.tsne" and flat["metrics.knn.ks"] == "[1, 5, 20]"
    assert "trainer.epochs" in flat and "trainer.grad_clip" in flat
    assert all("." in key or key in ("seed", "resume", "allow_targets") for key in flat)
    assert flat["resume"] == "None"


# --- one source of truth per default -----------------------------------------------------------------------------

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(("group", "schema"), [("trainer", TrainerConfig), ("tracking", TrackingConfig)])
def test_the_schema_s_defaults_are_not_repeated_in_its_groups_yaml(group, schema):
    """A default of a schema-backed group lives in the schema only: no preset of the group sets a key to it (a
    value there would be a second source, free to disagree with the schema that a user's own preset gets)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)

    def repeats(node, schema_node, prefix):
        for key, value in (node or {}).items():
            if isinstance(value, dict):
                yield from repeats(value, schema_node.get(key, {}), f"{prefix}{key}.")
            elif key in schema_node and schema_node[key] == value:
                yield f"{prefix}{key}={value!r}"

    presets = sorted((CONF / group).glob("*.yaml"))
    assert presets
    for preset in presets:
        assert list(repeats(OmegaConf.to_container(OmegaConf.load(preset)), defaults, f"{group}.")) == [], preset.name


def test_a_trainer_yaml_of_ones_own_gets_the_documented_defaults(run_cli, tmp_path):
    """``--config-dir`` with a ``trainer/*.yaml`` that leaves ``epochs`` and the early stopping out: they are the
    README's defaults (300, patience 10), not another value."""
    (tmp_path / "mine" / "trainer").mkdir(parents=True)
    (tmp_path / "mine" / "trainer" / "quick.yaml").write_text("batch_size: 32\ngrad_clip: 1.0\n")
    done = run_cli("--config-dir", str(tmp_path / "mine"), "trainer=quick", "--cfg", "job", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    trainer = OmegaConf.create(done.stdout).trainer
    assert trainer.batch_size == 32 and trainer.grad_clip == 1.0
    assert trainer.epochs == 300 and trainer.early_stopping.patience == 10 and trainer.checkpoint_every == 5


def test_model_yamls_leave_every_model_s_settings_to_the_class(make_config):
    """``loss``, ``noise`` and ``noise_level`` are every model's (Autoencoder's) with one set of defaults, which its
    signature uses: no model YAML repeats them, yet every composed model config shows them (``--cfg job``) and takes
    an override of them without ``+``."""
    common = common_settings()
    assert set(common) == {"loss", "noise", "noise_level"}
    signature = inspect.signature(models.Autoencoder.__init__).parameters
    assert {key: signature[key].default for key in common} == common
    presets = sorted((CONF / "model").glob("*.yaml"))
    assert len(presets) == 6
    for preset in presets:
        assert not set(common) & set(OmegaConf.load(preset)), preset.name
        cfg = make_config(f"model={preset.stem}", "model.noise=masking", "model.noise_level=0.3")
        assert (cfg.model.loss, cfg.model.noise, cfg.model.noise_level) == ("bce", "masking", 0.3)
        model = models.build(cfg.model, (1, 8, 8))
        assert (model.loss, model.noise, model.noise_level) == ("bce", "masking", 0.3)
    assert make_config("experiment=seed_mnist_ae25").model.loss == "bce"  # a preset may still set them


def test_a_model_that_takes_no_common_settings_still_builds(make_config):
    """A model of one's own whose ``__init__`` passes nothing on to Autoencoder's keeps working: the common settings
    at their defaults are left out for it; one that is set is refused, naming the key."""
    cfg = make_config("model._target_=test_config.FixedLossAE", "~model.widths", "~model.code_norm")
    model = models.build(cfg.model, (1, 8, 8))
    assert type(model) is FixedLossAE and model.loss == "bce" and model.bottleneck == 4
    noisy = make_config("model._target_=test_config.FixedLossAE", "~model.widths", "~model.code_norm",
                        "model.noise=masking")
    with pytest.raises(ConfigError, match=r"^model\.noise is not a parameter of test_config\.FixedLossAE"):
        models.build(noisy.model, (1, 8, 8))


class FixedLossAE(models.Autoencoder):
    """An autoencoder with a fixed loss and no noise: its ``__init__`` takes no ``**kwargs``."""

    def __init__(self, image_shape, bottleneck: int = 2) -> None:
        super().__init__(image_shape, bottleneck)
        self.encoder = torch.nn.Linear(self.pixels, self.bottleneck)
        self.decoder = torch.nn.Linear(self.bottleneck, self.pixels)

    def encode(self, x):
        return self.encoder(x.flatten(1))

    def decode_logits(self, z):
        return self.decoder(z).view(-1, *self.image_shape)
