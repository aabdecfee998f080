"""One run as a pipeline: config -> data -> model -> fit -> evaluate -> log to MLflow."""

from __future__ import annotations

import logging
import math
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from aeexp import baseline, data, embed, metrics, models, plots, tracking
from aeexp import config as config_schema
from aeexp.errors import ConfigError, TrackingError
from aeexp.sweep import Sweep, job_run_name, job_tags
from aeexp.training import checkpoint, interrupt, loop, optim, resume
from aeexp.training.early_stopping import EarlyStopping

log = logging.getLogger(__name__)

RECONSTRUCTION_EXAMPLES = 12


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
    return loop.resolve_device(wanted)


def model_label(cfg: DictConfig) -> str:
    """The model's name: ``model.name``, else its class's (a YAML of one's own may leave the name out)."""
    return str(cfg.model.get("name") or str(cfg.model.get("_target_", "model")).rsplit(".", 1)[-1])


def run_name(cfg: DictConfig) -> str:
    """The run's name in MLflow, e.g. ``ae25-b8-mnist``."""
    bottleneck = cfg.model.get("bottleneck")
    return cfg.tracking.run_name or "-".join(
        [model_label(cfg), *([f"b{bottleneck}"] if bottleneck is not None else []), str(cfg.dataset.name)])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _final_metrics(model: models.Autoencoder, dataset: data.Dataset, seed: int
                   ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Test-split losses and what the codes keep of the classes (:func:`aeexp.metrics.code_metrics`, as
    ``test_*``); also return the test codes and labels."""
    test_images = dataset.test.images
    train_codes = loop.encode_all(model, dataset.train.images).numpy()
    test_codes = loop.encode_all(model, test_images).numpy()
    train_labels = dataset.train.labels.cpu().numpy()
    test_labels = dataset.test.labels.cpu().numpy()
    results = {
        "test_loss": loop.evaluate_loss(model, test_images),
        "test_mse": loop.reconstruction_mse(model, test_images),  # comparable to PCA's
    }
    codes = metrics.code_metrics(train_codes, train_labels, test_codes, test_labels, seed)
    results.update({f"test_{name}": value for name, value in codes.items()})
    return results, test_codes, test_labels


VIEW_NAMES = {"tsne": "t-SNE", "pca": "PCA", "umap": "UMAP"}


@dataclass
class _Views:
    """2-D views of a stratified sample of the test codes: ``points[method]``, rows ``chosen`` of the test split."""

    points: dict[str, np.ndarray]
    chosen: np.ndarray
    labels: np.ndarray


def _embedding_metrics(cfg: DictConfig, codes: np.ndarray, labels: np.ndarray, seed: int
                       ) -> tuple[dict[str, float], _Views]:
    """Each of ``embed.methods`` on the same sample: ``embed_<method>_{knn_acc,trust,time}``, and the first
    method's also as ``embed_knn_acc``, ``embed_trust``, ``embed_time``."""
    n_samples = cfg.embed.n_samples
    if n_samples > len(labels):
        log.info("embed.n_samples=%d is more than the %d test images: embedding all of them",
                 n_samples, len(labels))
    chosen = metrics.stratified_sample(labels, n_samples, seed)
    codes, labels = codes[chosen], labels[chosen]
    results: dict[str, float] = {}
    views: dict[str, np.ndarray] = {}
    for i, method in enumerate(m.value for m in cfg.embed.methods):
        interrupt.check()
        started = time.perf_counter()
        points = embed.embed_2d(codes, method, cfg.embed.perplexity, seed, n_iter=cfg.embed.n_iter,
                                early_exaggeration_iter=cfg.embed.early_exaggeration_iter,
                                n_neighbors=cfg.embed.n_neighbors, min_dist=cfg.embed.min_dist)
        measured = {"time": time.perf_counter() - started,
                    "knn_acc": metrics.cv_knn_accuracy(points, labels, seed=seed),
                    "trust": metrics.trustworthiness(codes, points)}
        results.update({f"embed_{method}_{key}": value for key, value in measured.items()})
        if i == 0:
            results.update({f"embed_{key}": value for key, value in measured.items()})
        views[method] = points
    return results, _Views(views, chosen, labels)


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


def _run_tags(cfg: DictConfig, device: torch.device, step: loop.TrainingStep) -> dict[str, str]:
    import hydra

    import aeexp

    return {
        "dataset": cfg.dataset.name,
        "model": model_label(cfg),
        "device": str(device),
        "train.path": step.path,
        "train.bf16": str(step.bf16).lower(),
        "versions.aeexp": aeexp.__version__,
        "versions.torch": torch.__version__,
        "versions.mlflow": tracking.MLFLOW_VERSION,
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


@dataclass
class _Parts:
    """What a run trains: the dataset's source (nothing read yet), the model, its optimizer."""

    source: data.ImageDataset
    model: models.Autoencoder
    optimizer: torch.optim.Optimizer


def _build(cfg: DictConfig, device: torch.device) -> _Parts:
    """The configured dataset source, model (seeded) and optimizer, each checked; no file is read yet."""
    source = data.build(cfg.dataset)
    _seed_everything(cfg.seed)
    model = models.build(cfg.model, source.image_shape).to(device)
    optimizer = optim.build_optimizer(cfg.optimizer, model)
    optim.check_scheduler(cfg.scheduler, cfg.trainer.epochs)
    return _Parts(source, model, optimizer)


def run(cfg: DictConfig, output_dir: Path | None = None, sweep: Sweep | None = None,
        overrides: Sequence[str] = ()) -> RunResult:
    """Run the experiment ``cfg`` describes; checkpoints and figures go to ``output_dir`` (a temporary folder
    when None).

    In a ``sweep`` the run is a child of the sweep's parent run, in the sweep's experiment. With ``cfg.resume``
    the named run continues from its checkpoint, with its own config and the changeable command-line
    ``overrides`` (see :mod:`aeexp.training.resume`).
    """
    config_schema.validate(cfg)
    if output_dir is None:
        output_dir = Path(tempfile.mkdtemp(prefix="aeexp-"))
    if cfg.get("resume"):
        start = _resumed_start(cfg, sweep, overrides, output_dir)
        parts = _build(start.cfg, _device(start.cfg))
    else:
        parts = _build(cfg, _device(cfg))  # a bad setting is refused before the tracking store is touched
        start = _fresh_start(cfg, sweep)
    cfg = start.cfg
    device = _device(cfg)
    interrupt.check()
    dataset = data.load(parts.source, cfg.seed).to(device)
    log.info("%s: %d train, %d val, %d test images of shape %s on %s", dataset.name, len(dataset.train),
             len(dataset.val), len(dataset.test), dataset.image_shape, device)
    model, optimizer = parts.model, parts.optimizer
    schedule = optim.build_schedule(cfg.scheduler, optimizer, cfg.trainer.epochs,
                                    math.ceil(len(dataset.train) / cfg.trainer.batch_size))
    generator = torch.Generator().manual_seed(cfg.seed)
    history = loop.History()
    patience = cfg.trainer.early_stopping.patience
    stopping = EarlyStopping(patience, cfg.trainer.early_stopping.min_delta) if patience is not None else None
    if start.resumed is not None:
        history = checkpoint.restore(start.resumed, model, optimizer, schedule, generator, stopping)
    step = loop.make_step(model, optimizer, device, cfg.trainer.compile, cfg.trainer.mixed_precision)
    log.info("training on the %s path%s", step.path, " with bf16 matrix products" if step.bf16 else "")
    interrupt.check()
    training = _Training(cfg, dataset, model, optimizer, schedule, generator, history, step, stopping)
    return _tracked_run(training, start, sweep, output_dir)


@dataclass
class _Training:
    """Everything a run's training needs, made and (on resume) restored."""

    cfg: DictConfig
    dataset: data.Dataset
    model: models.Autoencoder
    optimizer: torch.optim.Optimizer
    schedule: optim.Schedule
    generator: torch.Generator
    history: loop.History
    step: loop.TrainingStep
    early_stopping: EarlyStopping | None

    def fit(self, on_epoch_end: loop.EpochHook) -> loop.History:
        trainer = self.cfg.trainer
        return loop.fit(self.model, self.dataset.train, self.dataset.val, epochs=trainer.epochs,
                        batch_size=trainer.batch_size, optimizer=self.optimizer, seed=self.cfg.seed,
                        schedule=self.schedule, step=self.step, grad_clip=trainer.grad_clip,
                        early_stopping=self.early_stopping,
                        progress=trainer.progress, on_epoch_end=on_epoch_end, history=self.history,
                        generator=self.generator)

    def checkpoint(self, run_id: str, epoch: int, config_yaml: str) -> checkpoint.Checkpoint:
        return checkpoint.capture(run_id, epoch, config_yaml, self.model, self.optimizer, self.schedule,
                                  self.generator, self.history, self.early_stopping)

    def finish_training(self) -> dict[str, float]:
        """Put back the best epoch's weights (early stopping); the metrics saying where training ended."""
        ended = {"stopped_epoch": float(len(self.history))}
        if self.early_stopping is not None and self.early_stopping.best_weights is not None:
            self.early_stopping.restore_best(self.model)
            ended["best_epoch"] = float(self.early_stopping.best_epoch)
        return ended


def _tracked_run(training: _Training, start: _Start, sweep: Sweep | None, output_dir: Path) -> RunResult:
    """Train, evaluate and log inside the MLflow run (a new one, or the resumed one)."""
    cfg, model = training.cfg, training.model
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    checkpoint_path = output_dir / checkpoint.FILENAME
    device = next(model.parameters()).device
    tags = (_run_tags(cfg, device, training.step) | (job_tags() if sweep else {})
            | {tracking.CHECKPOINT_TAG: str(checkpoint_path)})
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
            checkpoint.save(training.checkpoint(run_id, epoch, config_yaml), checkpoint_path)
            try:
                tracking.log_metrics(values, step=epoch)
            except Exception as err:
                raise TrackingError(
                    f"lost the tracking store {start.tracking_uri} after epoch {epoch} ({type(err).__name__}); "
                    f"training so far is saved in {checkpoint_path}: once MLflow is back, continue with "
                    f"`{resume_command(run_id, cfg.tracking.uri)}`") from None

        try:
            history = training.fit(end_of_epoch)
            ended = training.finish_training()
            tracking.log_metrics(ended)
            results = ended | _finish(cfg, model, training.dataset, history, output_dir)
        except interrupt.Interrupted as err:
            _log_checkpoint(checkpoint_path)
            raise interrupt.RunInterrupted(
                f"interrupted ({err}) after epoch {len(training.history)} of {cfg.trainer.epochs}; the MLflow run "
                f"{run_id} was marked KILLED; continue with `{resume_command(run_id, cfg.tracking.uri)}`") from None
        except TrackingError:
            raise
        except BaseException:
            _log_checkpoint(checkpoint_path)
            raise
        _log_checkpoint(checkpoint_path)
        model.cpu()
        tracking.log_model(model, loop.to_float(training.dataset.test.images[:4]).cpu().numpy())
    log.info("test_loss %.4f  test_mse %.4f (PCA %.4f)  test_knn_acc %.3f (PCA %.3f)  embed_knn_acc %.3f  "
             "embed_trust %.3f", results["test_loss"], results["test_mse"], results["pca_test_mse"],
             results["test_knn_acc"], results["pca_knn_acc"], results["embed_knn_acc"], results["embed_trust"])
    return RunResult(run_id, start.experiment, start.tracking_uri, results, history.val_loss[-1])


INTERPOLATION_STEPS = 9
PRIOR_SAMPLES = (4, 8)


@torch.no_grad()
def _interpolations(model: models.Autoencoder, dataset: data.Dataset, examples: np.ndarray
                    ) -> tuple[np.ndarray, list[str]]:
    """Decoded points on the line between the codes of pairs of test images of different classes:
    ``(pairs, steps, C, H, W)`` and a label per pair."""
    model.eval()
    labels = dataset.test.labels.cpu().numpy()
    pairs = [(int(examples[i]), int(examples[i + 1])) for i in range(0, min(len(examples) - 1, 8), 2)]
    rows, names = [], []
    weights = torch.linspace(0.0, 1.0, INTERPOLATION_STEPS, device=dataset.test.images.device)[:, None]
    for a, b in pairs:
        codes = model.encode(loop.to_float(dataset.test.images[[a, b]]))
        line = (1 - weights) * codes[0] + weights * codes[1]
        rows.append(model.decode(line).cpu().numpy())
        names.append(f"{dataset.class_names[labels[a]]} -> {dataset.class_names[labels[b]]}")
    return np.stack(rows), names


@torch.no_grad()
def _noisy_examples(model: models.Autoencoder, originals: torch.Tensor, seed: int) -> torch.Tensor | None:
    """The examples as the model sees them in training (seeded, leaving the global RNG as it was); None when it
    trains on them as they are."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        noisy = model.corrupt(originals)
    return None if noisy is originals else noisy


@torch.no_grad()
def _prior_samples(model: models.Autoencoder, seed: int) -> np.ndarray | None:
    """Decoded draws from the model's prior, ``(rows, columns, C, H, W)``, for models that can draw them (a
    ``sample(n, generator)`` method); else None."""
    sample = getattr(model, "sample", None)
    if not callable(sample):
        return None
    model.eval()
    rows, columns = PRIOR_SAMPLES
    images = sample(rows * columns, torch.Generator().manual_seed(seed)).float().cpu().numpy()
    return images.reshape(rows, columns, *images.shape[1:])


def _log_checkpoint(path: Path) -> None:
    """Log the latest checkpoint (if any) to the active run, so that a resume finds it without the local file."""
    if not path.is_file():
        return
    try:
        tracking.log_artifact(path, "checkpoint")
    except Exception as err:
        log.warning("could not log the checkpoint to MLflow (%s); it stays in %s", err, path)


def _finish(cfg: DictConfig, model: models.Autoencoder, dataset: data.Dataset, history: loop.History,
            output_dir: Path) -> dict[str, float]:
    """Final metrics, the embedding and the figures, logged to the active run."""
    interrupt.check()
    results, codes, labels = _final_metrics(model, dataset, cfg.seed)
    interrupt.check()
    results.update(baseline.cached_pca_metrics(dataset.train.images, dataset.train.labels.cpu().numpy(),
                                               dataset.test.images, labels, model.bottleneck))
    interrupt.check()
    embedding, views = _embedding_metrics(cfg, codes, labels, cfg.seed)
    results.update(embedding)
    tracking.log_metrics(results)
    interrupt.check()
    for filename, figure in _figures(cfg, model, dataset, history, views, results).items():
        figure.savefig(output_dir / filename, dpi=100)  # drawn once, into the output folder; MLflow copies it
        plots.plt.close(figure)
        tracking.log_artifact(output_dir / filename)
    interrupt.check()
    _log_explorer(cfg, model, dataset, views, output_dir)
    return results


def _figures(cfg: DictConfig, model: models.Autoencoder, dataset: data.Dataset, history: loop.History,
             views: _Views, results: dict[str, float]) -> dict[str, plots.Figure]:
    """Every figure of a run, by file name."""
    label = f"{model_label(cfg)} (bottleneck {model.bottleneck})"
    examples = plots.pick_one_per_class(dataset.test.labels.cpu().numpy(), RECONSTRUCTION_EXAMPLES)
    originals = loop.to_float(dataset.test.images[examples])
    noisy = _noisy_examples(model, originals, cfg.seed)
    interpolations, pair_names = _interpolations(model, dataset, examples)
    with torch.no_grad():
        model.eval()
        outputs = model(noisy if noisy is not None else originals).float().cpu().numpy()
    figures = {
        "reconstructions.png": plots.reconstruction_grid(
            originals.cpu().numpy(), outputs, [dataset.class_names[int(dataset.test.labels[i])] for i in examples],
            noisy=None if noisy is None else noisy.cpu().numpy()),
        "loss_curves.png": plots.loss_curves(history.train_loss, history.val_loss, getattr(model, "loss", "")),
        "interpolation.png": plots.image_grid(interpolations, f"{label}: decoded codes between two test images",
                                              pair_names),
    }
    for method, points in views.points.items():
        figures[f"{method}.png"] = plots.embedding_scatter(
            points, views.labels, dataset.class_names,
            f"{VIEW_NAMES[method]} of {label} codes on {dataset.name} test images\n5-NN acc in 2-D "
            f"{results[f'embed_{method}_knn_acc']:.3f}, trustworthiness {results[f'embed_{method}_trust']:.3f}")
    samples = _prior_samples(model, cfg.seed)
    if samples is not None:
        figures["prior_samples.png"] = plots.image_grid(samples, f"{model_label(cfg)}: decoded samples of its prior")
    return figures


def _log_explorer(cfg: DictConfig, model: models.Autoencoder, dataset: data.Dataset, views: _Views,
                  output_dir: Path) -> None:
    """``explorer.html``: the first view, each point showing its test image and reconstruction on hover."""
    from aeexp.explorer import explorer_html

    method, points = next(iter(views.points.items()))
    images = dataset.test.images[torch.as_tensor(views.chosen, device=dataset.test.images.device)]
    reconstructions = loop.reconstruct(model, images)
    html = explorer_html(points, views.labels, dataset.class_names, images.cpu().numpy(), reconstructions.numpy(),
                         f"{VIEW_NAMES[method]} of {model_label(cfg)} codes (bottleneck {model.bottleneck}) on "
                         f"{dataset.name}: hover a point for its image and reconstruction, click the legend "
                         "to hide a class")
    (output_dir / "explorer.html").write_text(html, encoding="utf-8")
    tracking.log_artifact(output_dir / "explorer.html")
