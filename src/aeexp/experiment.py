"""One experiment from a composed config: validate, load data, train, measure, embed, log to MLflow."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from aeexp import config as config_schema
from aeexp import data, embed, metrics, models, plots, tracking, train
from aeexp.errors import ConfigError
from aeexp.sweep import Sweep, job_run_name, job_tags

log = logging.getLogger(__name__)

RECONSTRUCTION_EXAMPLES = 12
FIGURES = ("reconstructions.png", "loss_curves.png", "tsne.png")


@dataclass
class RunResult:
    """Where a run went and what it measured."""

    run_id: str
    experiment: str
    tracking_uri: str
    metrics: dict[str, float]
    val_loss: float


def _device(cfg: DictConfig) -> torch.device:
    wanted = cfg.trainer.device.value
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu")
    return train.resolve_device(wanted)


def run_name(cfg: DictConfig) -> str:
    """The run's name in MLflow, e.g. ``ae25-b8-mnist``."""
    return cfg.tracking.run_name or f"{cfg.model.name}-b{cfg.model.bottleneck}-{cfg.dataset.name}"


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _final_metrics(model: models.DenseAutoencoder, dataset: data.Dataset, loss: str
                   ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Test-split losses and kNN accuracy of the codes; also return the test codes and labels."""
    test_images = dataset.test.images
    train_codes = train.encode_all(model, dataset.train.images).numpy()
    test_codes = train.encode_all(model, test_images).numpy()
    train_labels = dataset.train.labels.cpu().numpy()
    test_labels = dataset.test.labels.cpu().numpy()
    results = {
        "test_loss": train.evaluate_loss(model, test_images, loss),
        "test_mse": train.evaluate_loss(model, test_images, "mse"),
        "test_knn_acc": metrics.knn_accuracy(train_codes, train_labels, test_codes, test_labels),
    }
    return results, test_codes, test_labels


def _embedding_metrics(cfg: DictConfig, codes: np.ndarray, labels: np.ndarray, seed: int
                       ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    n_samples = cfg.embed.n_samples
    if n_samples > len(labels):
        log.info("embed.n_samples=%d is more than the %d test images: embedding all of them",
                 n_samples, len(labels))
    chosen = metrics.stratified_sample(labels, n_samples, seed)
    codes, labels = codes[chosen], labels[chosen]
    started = time.perf_counter()
    points = embed.embed_2d(codes, cfg.embed.method.value, cfg.embed.perplexity, seed, n_iter=cfg.embed.n_iter,
                            early_exaggeration_iter=cfg.embed.early_exaggeration_iter)
    embed_time = time.perf_counter() - started
    results = {
        "embed_time": embed_time,
        "embed_knn_acc": metrics.cv_knn_accuracy(points, labels, seed=seed),
        "embed_trust": metrics.trustworthiness(codes, points),
    }
    return results, points, labels


def _run_tags(cfg: DictConfig, device: torch.device) -> dict[str, str]:
    import hydra
    import mlflow

    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "device": str(device),
        "versions.torch": torch.__version__,
        "versions.mlflow": mlflow.__version__,
        "versions.hydra": hydra.__version__,
        "host.python": platform.python_version(),
        **{str(k): str(v) for k, v in cfg.tags.items()},
    }


def run(cfg: DictConfig, output_dir: Path | None = None, sweep: Sweep | None = None) -> RunResult:
    """Run the experiment ``cfg`` describes; figures also go to ``output_dir`` when given.

    In a ``sweep`` the run is a child of the sweep's parent run, in the sweep's experiment.
    """
    dataset_name = cfg.dataset.name
    config_schema.validate(cfg)
    device = _device(cfg)
    experiment_name = sweep.experiment if sweep else cfg.tracking.experiment
    tracking_uri = tracking.configure(sweep.tracking_uri if sweep else cfg.tracking.uri, experiment_name)
    _seed_everything(cfg.seed)
    dataset = data.load(dataset_name, cfg.dataset.root, cfg.dataset.download, cfg.dataset.val_fraction,
                        cfg.seed).to(device)
    log.info("%s: %d train, %d val, %d test images of shape %s on %s", dataset_name, len(dataset.train),
             len(dataset.val), len(dataset.test), dataset.image_shape, device)
    model = models.build(dataset.image_shape, cfg.model.widths, cfg.model.bottleneck).to(device)
    loss = cfg.trainer.loss.value

    tags = _run_tags(cfg, device) | (job_tags() if sweep else {})
    name = job_run_name(run_name(cfg), sweep, cfg) if sweep else run_name(cfg)
    with tracking.start_run(name, tags, sweep.parent_run_id if sweep else None) as run_id:
        tracking.log_params(config_schema.flatten(cfg))
        tracking.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        optimizer = train.make_optimizer(model, cfg.trainer.optimizer.value, cfg.trainer.lr,
                                         cfg.trainer.momentum)
        history = train.fit(
            model, dataset.train, dataset.val,
            epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, optimizer=optimizer, loss=loss,
            seed=cfg.seed, progress=cfg.trainer.progress,
            on_epoch_end=lambda epoch, values: tracking.log_metrics(values, step=epoch),
            compile=cfg.trainer.compile, mixed_precision=cfg.trainer.mixed_precision,
        )
        results, codes, labels = _final_metrics(model, dataset, loss)
        embedding, points, point_labels = _embedding_metrics(cfg, codes, labels, cfg.seed)
        results.update(embedding)
        tracking.log_metrics(results)

        examples = plots.pick_one_per_class(dataset.test.labels.cpu().numpy(), RECONSTRUCTION_EXAMPLES)
        originals = train.to_float(dataset.test.images[examples]).cpu().numpy()
        figures = {
            "reconstructions.png": plots.reconstruction_grid(
                originals, train.reconstruct(model, dataset.test.images[examples]).numpy(),
                [dataset.class_names[int(dataset.test.labels[i])] for i in examples]),
            "loss_curves.png": plots.loss_curves(history.train_loss, history.val_loss, loss),
            "tsne.png": plots.embedding_scatter(
                points, point_labels, dataset.class_names,
                f"t-SNE of {cfg.model.name} codes (bottleneck {cfg.model.bottleneck}) on {dataset_name} test "
                f"images\n5-NN acc in 2-D {results['embed_knn_acc']:.3f}, "
                f"trustworthiness {results['embed_trust']:.3f}"),
        }
        for filename, figure in figures.items():
            tracking.log_figure(figure, filename)
            if output_dir is not None:
                figure.savefig(output_dir / filename, dpi=100)
            plots.plt.close(figure)
        model.cpu()
        tracking.log_model(model, originals[:4])
    log.info("test_loss %.4f  test_mse %.4f  test_knn_acc %.3f  embed_knn_acc %.3f  embed_trust %.3f",
             results["test_loss"], results["test_mse"], results["test_knn_acc"], results["embed_knn_acc"],
             results["embed_trust"])
    return RunResult(run_id, experiment_name, tracking_uri, results, history.val_loss[-1])
