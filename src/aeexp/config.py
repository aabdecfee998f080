"""Structured-config schema (dataclasses registered in Hydra's ConfigStore) and value checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from aeexp.errors import ConfigError


class Optimizer(str, Enum):
    adam = "adam"
    sgd = "sgd"


class Loss(str, Enum):
    bce = "bce"
    mse = "mse"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ModelKind(str, Enum):
    dense = "dense"
    conv = "conv"


class Noise(str, Enum):
    none = "none"
    gaussian = "gaussian"
    masking = "masking"
    salt_pepper = "salt_pepper"


class EmbedMethod(str, Enum):
    tsne = "tsne"
    pca = "pca"
    umap = "umap"


# The datasets aeexp knows and their image shapes (C, H, W): known without reading any file, so that a
# config can be checked (bottleneck < input size) before data is loaded.
DATASET_IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "kmnist": (1, 28, 28),
}


def input_size(dataset: str) -> int:
    """Pixels per image of a dataset (the autoencoder's input size)."""
    channels, height, width = DATASET_IMAGE_SHAPES[dataset]
    return channels * height * width


@dataclass
class DatasetConfig:
    """Which images to load, from where, and how much of the training split to hold out."""

    name: str = MISSING
    root: str = "./data"
    download: bool = True
    val_fraction: float = 0.1


@dataclass
class ModelConfig:
    """An autoencoder: encoder widths (decoder mirrored), code size, kind, VAE and denoising settings.

    ``kind``: ``dense`` (``widths`` = hidden layer sizes) or ``conv`` (``widths`` = channels of the stride-2
    3x3 convolutions). ``variational``: a VAE whose loss adds ``beta`` times the KL term. ``noise``: corrupt
    the training inputs (``gaussian``: std ``noise_level``; ``masking``/``salt_pepper``: probability
    ``noise_level`` per pixel); the loss compares with the clean images.
    """

    name: str = MISSING
    widths: list[int] = field(default_factory=lambda: [128, 64])
    bottleneck: int = 32
    kind: ModelKind = ModelKind.dense
    variational: bool = False
    beta: float = 1.0
    noise: Noise = Noise.none
    noise_level: float = 0.0


@dataclass
class TrainerConfig:
    """The optimisation loop."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Optimizer = Optimizer.adam
    momentum: float = 0.0
    loss: Loss = Loss.bce
    device: Device = Device.auto
    progress: bool = True
    # torch.compile the forward/backward: null = auto (on CUDA only: on a 2-core CPU the compiled step was
    # slower than the eager one, after a one-off compile of ~50 s), true or false to force it.
    compile: bool | None = None
    # bf16 matrix products: autocast on CUDA; on a CPU with bf16 dot-product instructions (AVX512-BF16, AMX) the
    # products of the dense AE's large layers (float32 everywhere else); no effect on other CPUs.
    mixed_precision: bool = True


@dataclass
class EmbedConfig:
    """The 2-D views of the test-split codes: the first of ``methods`` gives ``embed_*`` metrics and the explorer."""

    methods: list[EmbedMethod] = field(default_factory=lambda: [EmbedMethod.tsne])
    n_samples: int = 3000
    perplexity: float = 30.0
    # openTSNE iterations: early exaggeration (12x), then the rest; 125 + 250 match scikit-learn's 1,000 in
    # trustworthiness and 5-NN accuracy on the benchmark (scripts/bench.py).
    early_exaggeration_iter: int = 125
    n_iter: int = 250
    # UMAP: neighbours of the graph and the minimum distance of the layout (umap-learn's defaults)
    n_neighbors: int = 15
    min_dist: float = 0.1


@dataclass
class TrackingConfig:
    """Where MLflow writes: ``uri`` null means MLflow's default (``sqlite:///mlflow.db`` in the cwd)."""

    uri: str | None = None
    experiment: str = "${dataset.name}"
    run_name: str | None = None


@dataclass
class Config:
    """The whole experiment."""

    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    # Continue a run from its checkpoint: an MLflow run id, or ``last`` (the latest run with a checkpoint).
    resume: str | None = None


def register_configs() -> None:
    """Register the schema so that every YAML in conf/ is validated against it at compose time."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="embed", name="embed_schema", node=EmbedConfig)
    cs.store(group="tracking", name="tracking_schema", node=TrackingConfig)


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {expected}.")


def validate(cfg: DictConfig) -> None:
    """Check values a type cannot express; raise ConfigError naming the first offending key."""
    _require(cfg.dataset.name in DATASET_IMAGE_SHAPES, "dataset.name", cfg.dataset.name,
             f"choose one of {', '.join(DATASET_IMAGE_SHAPES)} (e.g. dataset=mnist)")
    input_dim = input_size(cfg.dataset.name)
    _require(0.0 < cfg.dataset.val_fraction < 1.0, "dataset.val_fraction", cfg.dataset.val_fraction,
             "it must lie strictly between 0 and 1")
    widths = list(cfg.model.widths)
    _require(len(widths) > 0, "model.widths", widths, "give at least one hidden width, e.g. [128,64]")
    for i, width in enumerate(widths):
        _require(width > 0, f"model.widths[{i}]", width, "widths must be positive integers")
    _require(cfg.model.bottleneck > 0, "model.bottleneck", cfg.model.bottleneck, "it must be positive")
    _require(cfg.model.bottleneck < input_dim, "model.bottleneck", cfg.model.bottleneck,
             f"it must be smaller than the input size {input_dim} of dataset {cfg.dataset.name}")
    kind = str(getattr(cfg.model.get("kind", "dense"), "value", cfg.model.get("kind", "dense")))
    if kind == "conv":  # each stride-2 layer halves the image (rounding up) and needs a side of 2 or more
        _, height, width = DATASET_IMAGE_SHAPES[cfg.dataset.name]
        most = (min(height, width) - 1).bit_length()
        _require(len(widths) <= most, "model.widths", widths,
                 f"a conv model has one stride-2 layer per width and {height}x{width} images of dataset "
                 f"{cfg.dataset.name} allow at most {most}")
    beta = cfg.model.get("beta", 1.0)
    _require(beta >= 0, "model.beta", beta, "it must be >= 0")
    noise = str(getattr(cfg.model.get("noise", "none"), "value", cfg.model.get("noise", "none")))
    level = cfg.model.get("noise_level", 0.0)
    _require(level >= 0, "model.noise_level", level, "it must be >= 0")
    _require(noise == "none" or level > 0, "model.noise_level", level,
             f"model.noise={noise} needs a noise level > 0 (e.g. model.noise_level=0.2)")
    _require(noise not in ("masking", "salt_pepper") or level <= 1, "model.noise_level", level,
             f"with model.noise={noise} it is a probability: it must lie in [0, 1]")
    _require(cfg.trainer.epochs > 0, "trainer.epochs", cfg.trainer.epochs, "it must be positive")
    _require(cfg.trainer.batch_size > 0, "trainer.batch_size", cfg.trainer.batch_size, "it must be positive")
    _require(cfg.trainer.lr > 0, "trainer.lr", cfg.trainer.lr, "it must be positive")
    _require(cfg.trainer.momentum >= 0, "trainer.momentum", cfg.trainer.momentum, "it must be >= 0")
    methods = [m.value if isinstance(m, Enum) else str(m) for m in cfg.embed.methods]
    _require(len(methods) > 0 and len(set(methods)) == len(methods), "embed.methods", methods,
             "give one or more different methods, e.g. [tsne,pca,umap]")
    _require(cfg.embed.n_neighbors >= 2, "embed.n_neighbors", cfg.embed.n_neighbors, "it must be at least 2")
    _require(cfg.embed.min_dist >= 0, "embed.min_dist", cfg.embed.min_dist, "it must be >= 0")
    _require(cfg.embed.n_samples > 0, "embed.n_samples", cfg.embed.n_samples, "it must be positive")
    _require(cfg.embed.perplexity > 0, "embed.perplexity", cfg.embed.perplexity, "it must be positive")
    _require(cfg.embed.n_iter > 0, "embed.n_iter", cfg.embed.n_iter, "it must be positive")
    _require(cfg.embed.early_exaggeration_iter >= 0, "embed.early_exaggeration_iter",
             cfg.embed.early_exaggeration_iter, "it must be >= 0")
    _require(cfg.tracking.experiment != "", "tracking.experiment", cfg.tracking.experiment,
             "give a non-empty experiment name")
    _require(cfg.get("resume") is None or str(cfg.resume).strip() != "", "resume", cfg.get("resume"),
             "give a run id or resume=last")


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as ``{"model.bottleneck": "32", ...}`` for MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = str(node)

    walk("", container)
    return flat
