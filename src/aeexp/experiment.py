"""One experiment from a composed config: validate, load data, train, measure, embed, log to MLflow."""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from aeexp import baseline, checkpoint, data, embed, interrupt, metrics, models, plots, resume, tracking, train
from aeexp import config as config_schema
from aeexp.errors import ConfigError, TrackingError
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


def _git_commit() -> dict[str, str]:
    """The project's git commit (and whether the tree had changes), when aeexp runs from a git checkout."""
    import subprocess

    where = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def _run_tags(cfg: DictConfig, device: torch.device) -> dict[str, str]:
    import hydra
    import mlflow

    import aeexp

    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "device": str(device),
        "versions.aeexp": aeexp.__version__,
        "versions.torch": torch.__version__,
        "versions.mlflow": mlflow.__version__,
        "versions.hydra": hydra.__version__,
        "host.python": platform.python_version(),
        **_git_commit(),
        **{str(k): str(v) for k, v in cfg.tags.items()},
    }


@dataclass
class _Start:
    """How a run begins: fresh, or from a checkpoint of an existing run (with that run's config)."""

    cfg: DictConfig
    experiment: str
    tracking_uri: str
    resumed: checkpoint.Checkpoint | None = None


def _fresh_start(cfg: DictConfig, sweep: Sweep | None) -> _Start:
    experiment_name = sweep.experiment if sweep else cfg.tracking.experiment
    tracking_uri = tracking.configure(sweep.tracking_uri if sweep else cfg.tracking.uri, experiment_name)
    return _Start(cfg, experiment_name, tracking_uri)


def _resumed_start(cfg: DictConfig, sweep: Sweep | None, overrides: Sequence[str], work_dir: Path) -> _Start:
    if sweep is not None:
        raise ConfigError("resume= continues one run; it cannot be part of a sweep (drop -m)")
    tracking_uri = tracking.configure_uri(cfg.tracking.uri)
    run_id = resume.resolve_run_id(str(cfg.resume))
    run_record, experiment_name = tracking.find_run(run_id)
    state = resume.find_checkpoint(run_record, work_dir)
    resumed_cfg = resume.resumed_config(cfg, state.config, overrides, run_id, state.epoch)
    config_schema.validate(resumed_cfg)
    if run_record.status == "FINISHED" and resumed_cfg.trainer.epochs == state.epoch:
        raise ConfigError(f"resume: run {run_id} already finished its {state.epoch} epochs; give trainer.epochs "
                          f"above {state.epoch} to train it further")
    tracking.configure(tracking_uri, experiment_name)
    return _Start(resumed_cfg, experiment_name, tracking_uri, state)


def resume_command(run_id: str, tracking_uri: str | None) -> str:
    """The command that continues run ``run_id``."""
    uri = f" tracking.uri={tracking_uri}" if tracking_uri else ""
    return f"python -m aeexp resume={run_id}{uri}"


def run(cfg: DictConfig, output_dir: Path | None = None, sweep: Sweep | None = None,
        overrides: Sequence[str] = ()) -> RunResult:
    """Run the experiment ``cfg`` describes; checkpoints and figures go to ``output_dir`` (a temporary folder
    when None).

    In a ``sweep`` the run is a child of the sweep's parent run, in the sweep's experiment. With ``cfg.resume``
    the named run continues from its checkpoint, with its own config and the changeable command-line
    ``overrides`` (see :mod:`aeexp.resume`).
    """
    config_schema.validate(cfg)
    if output_dir is None:
        output_dir = Path(tempfile.mkdtemp(prefix="aeexp-"))
    start = _resumed_start(cfg, sweep, overrides, output_dir) if cfg.get("resume") else _fresh_start(cfg, sweep)
    cfg = start.cfg
    device = _device(cfg)
    dataset_name = cfg.dataset.name
    interrupt.check()
    _seed_everything(cfg.seed)
    dataset = data.load(dataset_name, cfg.dataset.root, cfg.dataset.download, cfg.dataset.val_fraction,
                        cfg.seed).to(device)
    log.info("%s: %d train, %d val, %d test images of shape %s on %s", dataset_name, len(dataset.train),
             len(dataset.val), len(dataset.test), dataset.image_shape, device)
    model = models.build(dataset.image_shape, cfg.model.widths, cfg.model.bottleneck).to(device)
    loss = cfg.trainer.loss.value
    optimizer = train.make_optimizer(model, cfg.trainer.optimizer.value, cfg.trainer.lr, cfg.trainer.momentum)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = train.History()
    if start.resumed is not None:
        history = checkpoint.restore(start.resumed, model, optimizer, generator)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    checkpoint_path = output_dir / checkpoint.FILENAME
    interrupt.check()

    tags = _run_tags(cfg, device) | (job_tags() if sweep else {}) | {tracking.CHECKPOINT_TAG: str(checkpoint_path)}
    name = job_run_name(run_name(cfg), sweep, cfg) if sweep else run_name(cfg)
    resumed_id = start.resumed.run_id if start.resumed else None
    with tracking.start_run(name, tags, sweep.parent_run_id if sweep else None, run_id=resumed_id) as run_id:
        log.info("run %s (%s) %s in experiment %r", run_id, name, "resumed" if resumed_id else "started",
                 start.experiment)
        if resumed_id is None:
            tracking.log_params(config_schema.flatten(cfg))
        else:
            tracking.set_tags({"resumed_from_epoch": str(start.resumed.epoch)})
        tracking.log_text(config_yaml, "config.yaml")

        def end_of_epoch(epoch: int, values: dict[str, float]) -> None:
            # The checkpoint first: whatever happens to MLflow next, the epoch is not lost.
            checkpoint.save(checkpoint.capture(run_id, epoch, config_yaml, model, optimizer, generator, history),
                            checkpoint_path)
            try:
                tracking.log_metrics(values, step=epoch)
            except Exception as err:
                raise TrackingError(
                    f"lost the tracking store {start.tracking_uri} after epoch {epoch} ({type(err).__name__}); "
                    f"training so far is saved in {checkpoint_path}: once MLflow is back, continue with "
                    f"`{resume_command(run_id, cfg.tracking.uri)}`") from None

        try:
            history = train.fit(
                model, dataset.train, dataset.val,
                epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, optimizer=optimizer, loss=loss,
                seed=cfg.seed, progress=cfg.trainer.progress, on_epoch_end=end_of_epoch,
                compile=cfg.trainer.compile, mixed_precision=cfg.trainer.mixed_precision,
                history=history, generator=generator,
            )
            results = _finish(cfg, model, dataset, history, output_dir, loss)
        except interrupt.Interrupted as err:
            _log_checkpoint(checkpoint_path)
            done = len(history.train_loss)
            raise interrupt.RunInterrupted(
                f"interrupted ({err}) after epoch {done} of {cfg.trainer.epochs}; the MLflow run {run_id} was "
                f"marked KILLED; continue with `{resume_command(run_id, cfg.tracking.uri)}`") from None
        except TrackingError:
            raise
        except BaseException:
            _log_checkpoint(checkpoint_path)
            raise
        _log_checkpoint(checkpoint_path)
        model.cpu()
        tracking.log_model(model, train.to_float(dataset.test.images[:4]).cpu().numpy())
    log.info("test_loss %.4f  test_mse %.4f (PCA %.4f)  test_knn_acc %.3f (PCA %.3f)  embed_knn_acc %.3f  "
             "embed_trust %.3f", results["test_loss"], results["test_mse"], results["pca_test_mse"],
             results["test_knn_acc"], results["pca_knn_acc"], results["embed_knn_acc"], results["embed_trust"])
    return RunResult(run_id, start.experiment, start.tracking_uri, results, history.val_loss[-1])


def _log_checkpoint(path: Path) -> None:
    """Log the latest checkpoint (if any) to the active run, so that a resume finds it without the local file."""
    if not path.is_file():
        return
    try:
        tracking.log_artifact(path, "checkpoint")
    except Exception as err:
        log.warning("could not log the checkpoint to MLflow (%s); it stays in %s", err, path)


def _finish(cfg: DictConfig, model: models.DenseAutoencoder, dataset: data.Dataset, history: train.History,
            output_dir: Path, loss: str) -> dict[str, float]:
    """Final metrics, the embedding and the figures, logged to the active run."""
    interrupt.check()
    results, codes, labels = _final_metrics(model, dataset, loss)
    interrupt.check()
    results.update(baseline.pca_metrics(dataset.train.images, dataset.train.labels.cpu().numpy(),
                                        dataset.test.images, labels, cfg.model.bottleneck))
    interrupt.check()
    embedding, points, point_labels = _embedding_metrics(cfg, codes, labels, cfg.seed)
    results.update(embedding)
    tracking.log_metrics(results)
    interrupt.check()

    examples = plots.pick_one_per_class(dataset.test.labels.cpu().numpy(), RECONSTRUCTION_EXAMPLES)
    originals = train.to_float(dataset.test.images[examples]).cpu().numpy()
    figures = {
        "reconstructions.png": plots.reconstruction_grid(
            originals, train.reconstruct(model, dataset.test.images[examples]).numpy(),
            [dataset.class_names[int(dataset.test.labels[i])] for i in examples]),
        "loss_curves.png": plots.loss_curves(history.train_loss, history.val_loss, loss),
        "tsne.png": plots.embedding_scatter(
            points, point_labels, dataset.class_names,
            f"t-SNE of {cfg.model.name} codes (bottleneck {cfg.model.bottleneck}) on {cfg.dataset.name} test "
            f"images\n5-NN acc in 2-D {results['embed_knn_acc']:.3f}, "
            f"trustworthiness {results['embed_trust']:.3f}"),
    }
    for filename, figure in figures.items():
        tracking.log_figure(figure, filename)
        figure.savefig(output_dir / filename, dpi=100)
        plots.plt.close(figure)
    interrupt.check()
    return results
