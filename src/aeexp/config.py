"""The config's schema (dataclasses registered in Hydra's ConfigStore) for what is not built from a ``_target_``
(trainer, embed, tracking, the top level), and the checks of its values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from aeexp.errors import ConfigError
from aeexp.models.common import common_settings


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class EarlyStoppingConfig:
    """Stop when ``val_loss`` has not improved by more than ``min_delta`` for ``patience`` epochs; the best epoch's
    weights are the ones evaluated and logged. ``patience`` null: train all ``trainer.epochs``."""

    patience: int | None = 10
    min_delta: float = 0.0


@dataclass
class TrainerConfig:
    """The optimisation loop (the optimizer and its schedule are the ``optimizer`` and ``scheduler`` groups)."""

    epochs: int = 300  # the cap: early stopping ends training when val_loss stops improving
    batch_size: int = 128
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Clip the gradients' total norm to this before each optimizer step; None: no clipping.
    grad_clip: float | None = None
    device: Device = Device.auto
    # One live bar for the fit in a terminal, a line every ~5% of the epochs in a log; false: a line per epoch.
    progress: bool = True
    # torch.compile the forward/backward: null = auto (on CUDA only: on a 2-core CPU the compiled step was
    # slower than the eager one, after a one-off compile of ~50 s), true or false to force it.
    compile: bool | None = None
    # bf16 matrix products: autocast on CUDA; on a CPU with bf16 dot-product instructions (AVX512-BF16, AMX) the
    # products of the dense AE's large layers (float32 everywhere else); no effect on other CPUs.
    mixed_precision: bool = True
    # Log the checkpoint to MLflow every this many epochs (and when the run ends or stops), so that a run whose
    # machine is lost can go on from MLflow; 0: only when it ends or stops. Cost measured in BENCHMARKS.md.
    checkpoint_every: int = 5
    # Threads of torch, BLAS/OpenMP, openTSNE and scikit-learn for this run; null: the cores this process may use
    # divided by the jobs running at once on this machine (aeexp.threads); the run's tag `threads` says which.
    threads: int | None = None


# trainer.<key> that moved -> the override to give instead (refuse_moved says so; a run stored before keeps them, null).
MOVED = {
    "lr": "optimizer.lr={value}",
    "optimizer": "optimizer={value}",
    "momentum": "optimizer=sgd optimizer.momentum={value}",
    "loss": "model.loss={value}",
}


# The fewest codes embedded: 5 per class of a 10-class dataset, so that each fold of the 5-fold cross-validated
# 5-NN accuracy holds every class, and well above the 2 x 10 + 1 points trustworthiness (k=10) needs.
EMBED_MIN_SAMPLES = 50
SEED_MAX = 2**32 - 1


@dataclass
class EmbedConfig:
    """The 2-D views of a stratified sample of at most ``n_samples`` test-split codes: ``views`` by name, each a
    function and its settings (``conf/embed/*.yaml``, see :mod:`aeexp.evaluation.lists`); the first gives the
    ``embed_*`` metrics and the explorer."""

    views: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 3000


# embed.<key> that moved -> the override to give instead (refuse_moved says so; stored_config.with_schema drops them).
MOVED_EMBED = {
    "methods": "embed={value}",
    "perplexity": "embed.views.tsne.perplexity={value}",
    "early_exaggeration_iter": "embed.views.tsne.early_exaggeration_iter={value}",
    "n_iter": "embed.views.tsne.n_iter={value}",
    "n_neighbors": "embed.views.umap.n_neighbors={value}",
    "min_dist": "embed.views.umap.min_dist={value}",
}


@dataclass
class TrackingConfig:
    """Where MLflow writes: ``uri`` null means MLflow's default (``sqlite:///mlflow.db`` in the cwd)."""

    uri: str | None = None
    experiment: str = "${dataset.name}"
    run_name: str | None = None


@dataclass
class SweepConfig:
    """Settings of a sweep as a whole (``-m``)."""

    # Finish a sweep that died: the id of its parent run, or ``last`` (the latest sweep parent in the store).
    resume: str | None = None


@dataclass
class Config:
    """The whole experiment."""

    # Built from their _target_ (aeexp.components): each class's parameters are its keys. A model's config starts
    # from the settings every model takes (loss, noise, noise_level, at their defaults): its YAML need not list them.
    dataset: Any = MISSING
    model: Any = field(default_factory=common_settings)
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    # The metrics of the codes by name, each a function and its settings (conf/metrics/*.yaml).
    metrics: dict[str, Any] = field(default_factory=dict)
    # Latent health, each epoch and at the end, by name (conf/health/*.yaml; aeexp.evaluation.health).
    health: dict[str, Any] = field(default_factory=dict)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    # Continue a run from its checkpoint: an MLflow run id, or ``last`` (the latest run with a checkpoint).
    resume: str | None = None
    # Classes of your own that a stored config (a checkpoint's, on resume) may build besides aeexp's (see
    # aeexp.stored_config), as dotted paths: [mymodels.SparseAE].
    allow_targets: list[str] = field(default_factory=list)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def register_configs() -> None:
    """Register the schema so that every YAML in conf/ is validated against it at compose time."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="embed", name="embed_schema", node=EmbedConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    from aeexp import plugins

    plugins.register()  # aeexp's Optuna sweeper and Ray launcher


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {expected}.")


def refuse_moved(overrides: Sequence[str]) -> None:
    """Refuse a command-line override of a key that moved out of ``trainer`` (``trainer.lr=0.01``) or ``embed``
    (``embed.methods=[tsne,pca]``), with the one line that names the new key; the schema no longer has them, so Hydra
    would say only that they are unknown."""
    for override in overrides:
        key, equals, value = override.lstrip("+~").partition("=")
        group, _, moved = key.partition(".")
        instead = {"trainer": MOVED, "embed": MOVED_EMBED}.get(group, {}).get(moved)
        if instead and equals:
            raise ConfigError(f"{key} is no longer a setting: give {instead.format(value=value)} instead.")


def validate(cfg: DictConfig) -> None:
    """Check the values of the schema's groups that a type cannot express; raise ConfigError naming the first
    offending key. (Models, datasets, optimizers and schedulers check their own parameters when built.)"""
    for group in ("dataset", "model", "optimizer"):
        _require(OmegaConf.is_dict(cfg.get(group)) and bool(cfg[group].get("_target_")), f"{group}._target_",
                 OmegaConf.select(cfg, f"{group}._target_", default=None),
                 f"choose a preset ({group}=<name>) or name a class with {group}._target_")
    _require(cfg.trainer.epochs > 0, "trainer.epochs", cfg.trainer.epochs, "it must be positive")
    _require(cfg.trainer.batch_size > 0, "trainer.batch_size", cfg.trainer.batch_size, "it must be positive")
    patience = cfg.trainer.early_stopping.patience
    _require(patience is None or patience > 0, "trainer.early_stopping.patience", patience,
             "it must be positive (or null: no early stopping)")
    _require(cfg.trainer.early_stopping.min_delta >= 0, "trainer.early_stopping.min_delta",
             cfg.trainer.early_stopping.min_delta, "it must be >= 0")
    _require(cfg.trainer.threads is None or cfg.trainer.threads > 0, "trainer.threads", cfg.trainer.threads,
             "it must be positive (or null: this machine's cores shared among the jobs running at once)")
    _require(cfg.trainer.grad_clip is None or cfg.trainer.grad_clip > 0, "trainer.grad_clip", cfg.trainer.grad_clip,
             "it must be positive (or null: no clipping)")
    _require(cfg.trainer.checkpoint_every >= 0, "trainer.checkpoint_every", cfg.trainer.checkpoint_every,
             "it must be >= 0 (0: log the checkpoint to MLflow only when the run ends or stops)")
    _require(cfg.embed.n_samples >= EMBED_MIN_SAMPLES, "embed.n_samples", cfg.embed.n_samples,
             f"it must be at least {EMBED_MIN_SAMPLES} (the 5-fold 5-NN accuracy and the trustworthiness of the "
             "embedding need that many points)")
    _require(0 <= cfg.seed <= SEED_MAX, "seed", cfg.seed, f"it must be an integer from 0 to {SEED_MAX} (the "
             "seeds numpy and scikit-learn take)")
    _require(cfg.tracking.experiment != "", "tracking.experiment", cfg.tracking.experiment,
             "give a non-empty experiment name")
    _require(cfg.get("resume") is None or str(cfg.resume).strip() != "", "resume", cfg.get("resume"),
             "give a run id or resume=last")
    sweep_resume = OmegaConf.select(cfg, "sweep.resume", default=None)
    _require(sweep_resume is None or str(sweep_resume).strip() != "", "sweep.resume", sweep_resume,
             "give the id of a sweep's parent run or sweep.resume=last")


def plain(value: Any) -> Any:
    """A config value as plain Python (lists, dicts, enum values): for messages and comparisons."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, Enum):
        return value.value
    return value


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as ``{"model.bottleneck": "32", ...}`` for MLflow params."""
    from aeexp.components import as_params

    return as_params("", OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
