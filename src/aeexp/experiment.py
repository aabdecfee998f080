"""One run as a pipeline: config -> data -> model -> fit -> evaluate -> log to MLflow."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import platform
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from aeexp import baseline, data, embed, files, metrics, models, plots, report, run_hooks, threads, tracking
from aeexp import config as config_schema
from aeexp.data.sampling import sample_indices
from aeexp.errors import ConfigError, TrackingError
from aeexp.models import inference
from aeexp.naming import model_label, run_name
from aeexp.params import run_params
from aeexp.resumed_run import changed_settings, find_checkpoint, resolve_run_id
from aeexp.sweep import PRUNED_TAG, Sweep, job_tags
from aeexp.training import checkpoint, interrupt, loop, optim, resume
from aeexp.training.early_stopping import EarlyStopping

log = logging.getLogger(__name__)

RECONSTRUCTION_EXAMPLES = 12
EXPLORER = "explorer.html"  # the interactive page of the first 2-D view


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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def labels_of(split: data.Split) -> np.ndarray | None:
    """A split's labels as a numpy array; None for unlabelled images."""
    return None if split.labels is None else split.labels.cpu().numpy()


UNLABELLED_NOTICE = ("%s has no labels: the metrics of the codes' classes (test_knn_acc, test_probe_acc, "
                     "test_kmeans_*, their pca_* twins) and the embeddings' kNN accuracies are left out, and the "
                     "figures and the explorer do not colour points by class")


def final_metrics(model: models.Autoencoder, dataset: data.Dataset, seed: int
                  ) -> tuple[dict[str, float], np.ndarray]:
    """Test-split losses and, with labels, what the codes keep of the classes (:func:`aeexp.metrics.code_metrics`,
    as ``test_*``); also return the test codes."""
    test_images = dataset.test.images
    test_codes = inference.encode_all(model, test_images).numpy()
    results = {
        "test_loss": inference.evaluate_loss(model, test_images),
        "test_mse": inference.reconstruction_mse(model, test_images),  # comparable to PCA's
    }
    train_labels, test_labels = labels_of(dataset.train), labels_of(dataset.test)
    if train_labels is not None and test_labels is not None:
        train_codes = inference.encode_all(model, dataset.train.images).numpy()
        codes = metrics.code_metrics(train_codes, train_labels, test_codes, test_labels, seed)
        results.update({f"test_{name}": value for name, value in codes.items()})
    return results, test_codes


VIEW_NAMES = {"tsne": "t-SNE", "pca": "PCA", "umap": "UMAP"}


@dataclass
class Views:
    """2-D views of a stratified sample of the test codes: ``points[method]``, rows ``chosen`` of the test split, and
    their labels (None: unlabelled)."""

    points: dict[str, np.ndarray]
    chosen: np.ndarray
    labels: np.ndarray | None


def embedding_metrics(cfg: DictConfig, codes: np.ndarray, labels: np.ndarray | None, seed: int
                      ) -> tuple[dict[str, float], Views]:
    """Each of ``embed.methods`` on the same sample: ``embed_<method>_{knn_acc,trust,time}`` (no ``knn_acc``
    without labels), and the first method's also as ``embed_knn_acc``, ``embed_trust``, ``embed_time``."""
    n_samples = cfg.embed.n_samples
    if n_samples > len(codes):
        log.info("embed.n_samples=%d is more than the %d test images: embedding all of them",
                 n_samples, len(codes))
    chosen = sample_indices(labels, len(codes), n_samples, seed)
    codes = codes[chosen]
    labels = None if labels is None else labels[chosen]
    results: dict[str, float] = {}
    views: dict[str, np.ndarray] = {}
    for i, method in enumerate(m.value for m in cfg.embed.methods):
        interrupt.check()
        started = time.perf_counter()
        points = embed.embed_2d(codes, method, cfg.embed.perplexity, seed, n_iter=cfg.embed.n_iter,
                                early_exaggeration_iter=cfg.embed.early_exaggeration_iter,
                                n_neighbors=cfg.embed.n_neighbors, min_dist=cfg.embed.min_dist)
        measured = {"time": time.perf_counter() - started, "trust": metrics.trustworthiness(codes, points)}
        if labels is not None:
            measured["knn_acc"] = metrics.cv_knn_accuracy(points, labels, seed=seed)
        results.update({f"embed_{method}_{key}": value for key, value in measured.items()})
        if i == 0:
            results.update({f"embed_{key}": value for key, value in measured.items()})
        views[method] = points
    return results, Views(views, chosen, labels)


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
        "threads": str(threads.current()),
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
    record: tracking.RunRecord | None = None  # the resumed run as MLflow had it


def _fresh_start(cfg: DictConfig, sweep: Sweep | None) -> _Start:
    experiment_name = sweep.experiment if sweep else cfg.tracking.experiment
    tracking_uri = tracking.configure(sweep.tracking_uri if sweep else cfg.tracking.uri, experiment_name)
    return _Start(cfg, experiment_name, tracking_uri)


def _resumed_start(cfg: DictConfig, sweep: Sweep | None, overrides: Sequence[str]) -> _Start:
    tracking_uri = tracking.configure_uri(sweep.tracking_uri if sweep else cfg.tracking.uri)
    run_id = resolve_run_id(str(cfg.resume))
    run_record, experiment_name = tracking.find_run(run_id)
    if sweep is not None and run_record.tags.get("mlflow.parentRunId") != sweep.parent_run_id:
        # (a resumed sweep continues its own children: aeexp.sweep_resume)
        raise ConfigError("resume= continues one run; it cannot be part of a sweep (drop -m, or finish a sweep "
                          "with sweep.resume=<parent run id>)")
    state = find_checkpoint(run_record)
    resumed_cfg = resume.resumed_config(cfg, state.config, overrides, run_id, state.epoch)
    config_schema.validate(resumed_cfg)
    if run_record.status == "FINISHED" and resumed_cfg.trainer.epochs == state.epoch:
        raise ConfigError(f"resume: run {run_id} already finished its {state.epoch} epochs; give trainer.epochs "
                          f"above {state.epoch} to train it further")
    tracking.configure(tracking_uri, experiment_name)
    return _Start(resumed_cfg, experiment_name, tracking_uri, state, run_record)


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
        start = _resumed_start(cfg, sweep, overrides)
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
    if not dataset.labelled:
        log.info(UNLABELLED_NOTICE, dataset.name)
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


class _Checkpoints:
    """The run's checkpoint: saved locally after every epoch (whole or not at all), logged to MLflow every
    ``trainer.checkpoint_every`` epochs and when the run ends or stops.

    Each MLflow copy goes to a folder of its own epoch, and only once it is whole does the tag
    ``aeexp.checkpoint.logged`` name it; then the copy before it is deleted. A run stopped during an upload keeps
    its last whole copy, whatever the artifact store.
    """

    def __init__(self, path: Path, every: int, logged: str | None) -> None:
        self.path, self.every = path, every
        self.saved_epoch: int | None = None
        self.named = False  # whether the tag aeexp.checkpoint names self.path
        self.logged = logged  # the artifact path of the latest whole copy in MLflow, if any
        self.logged_epoch = _artifact_epoch(logged)

    def save(self, state: checkpoint.Checkpoint) -> None:
        checkpoint.save(state, self.path)
        self.saved_epoch = state.epoch

    def name_in_run(self) -> None:
        """Tag the run with the local checkpoint once it exists."""
        if not self.named and self.saved_epoch is not None:
            tracking.set_tags({tracking.CHECKPOINT_TAG: str(self.path)})
            self.named = True

    def after_epoch(self, epoch: int) -> None:
        if self.every and epoch % self.every == 0:
            self.upload()

    def upload(self) -> None:
        """Log the latest saved checkpoint to MLflow unless it already is; a failure is a warning (the local file
        stays)."""
        epoch = self.saved_epoch
        if epoch is None or epoch == self.logged_epoch:
            return
        folder = checkpoint.artifact_folder(epoch)
        try:
            tracking.log_artifact(self.path, folder)
            tracking.set_tags({checkpoint.ARTIFACT_TAG: f"{folder}/{checkpoint.FILENAME}"})
        except Exception as err:
            log.warning("could not log the checkpoint of epoch %d to MLflow (%s); it stays in %s", epoch,
                        tracking.short_error(err), self.path)
            return
        previous = self.logged_epoch
        self.logged, self.logged_epoch = f"{folder}/{checkpoint.FILENAME}", epoch
        if previous is not None:
            try:
                tracking.delete_artifacts(checkpoint.artifact_folder(previous))
            except Exception as err:  # a store that cannot delete keeps both copies
                log.debug("could not delete the checkpoint of epoch %d in MLflow: %s", previous, err)


def _artifact_epoch(artifact: str | None) -> int | None:
    """The epoch of a checkpoint logged to ``checkpoint/epoch-<k>/...``; None for none or the older layout."""
    match = re.fullmatch(r"checkpoint/epoch-(\d+)/.*", artifact or "")
    return int(match.group(1)) if match else None


class MetricLog:
    """The run's metrics in MLflow, each (metric, step) logged once: a resume logs what its checkpoint's history
    holds and MLflow lacks (epochs a kill or a lost store kept from MLflow), and nothing twice. They go to the
    active run, or to run ``run_id`` without making it active (``aeexp evaluate``: its status stays as it is)."""

    def __init__(self, logged: dict[str, set[int]] | None = None, run_id: str | None = None) -> None:
        self.logged = logged or {}
        self.run_id = run_id

    def log(self, values: dict[str, float], step: int) -> dict[str, float]:
        """Log those of ``values`` not yet logged at ``step``; return them."""
        missing = {key: value for key, value in values.items() if step not in self.logged.get(key, set())}
        if missing:
            if self.run_id is None:
                tracking.log_metrics(missing, step=step)
            else:
                tracking.log_metrics_to(self.run_id, missing, step=step)
            for key in missing:
                self.logged.setdefault(key, set()).add(step)
        return missing

    def backfill(self, history: loop.History) -> None:
        for epoch, values in enumerate(history.epochs, start=1):
            self.log(values, epoch)


def _begin(start: _Start, run_id: str, cfg: DictConfig, config_yaml: str, output_dir: Path, params: dict[str, str]
           ) -> tuple[_Checkpoints, MetricLog]:
    """Record the run's start in MLflow: its params (a new run), or (a resumed one) what changed, the metrics its
    checkpoint holds that MLflow lacks, and a copy of the checkpoint in this run's output folder."""
    path = checkpoint.local_path(output_dir, run_id)
    every = cfg.trainer.checkpoint_every
    if start.resumed is None or start.record is None:
        tracking.log_params(params)
        checkpoints, metric_log = _Checkpoints(path, every, None), MetricLog()
    else:
        record = start.record
        _record_resume(record, start.resumed.epoch, run_id, cfg)
        checkpoints = _Checkpoints(path, every, record.tags.get(checkpoint.ARTIFACT_TAG))
        checkpoints.save(dataclasses.replace(start.resumed, config=config_yaml))  # the tag names a file that exists
        checkpoints.name_in_run()
        metric_log = MetricLog(tracking.metric_steps(run_id, record.metrics))
        metric_log.backfill(start.resumed.history)
    tracking.log_text(config_yaml, "config.yaml")
    return checkpoints, metric_log


def _record_resume(record: tracking.RunRecord, epoch: int, run_id: str, cfg: DictConfig) -> None:
    """Tags that describe the resumed run as it now is: ``resumed_from_epoch``, ``resumed.<key>`` for each setting
    that differs from its params (which MLflow keeps as they were logged), and no ``error`` of an earlier failure."""
    changed = changed_settings(record.params, cfg)
    tracking.set_tags({"resumed_from_epoch": str(epoch),
                       **{f"resumed.{key}": value[:5000] for key, value in changed.items()}})
    stale = [key for key in record.tags
             if key == "error" or (key.startswith("resumed.") and key.removeprefix("resumed.") not in changed)]
    for key in stale:
        tracking.delete_tag(run_id, key)


def _tracked_run(training: _Training, start: _Start, sweep: Sweep | None, output_dir: Path) -> RunResult:
    """Train, evaluate and log inside the MLflow run (a new one, or the resumed one)."""
    cfg, model = training.cfg, training.model
    config_yaml = tracking.redact(OmegaConf.to_yaml(cfg, resolve=True))  # it goes to MLflow: no password
    device = next(model.parameters()).device
    tags = _run_tags(cfg, device, training.step) | (job_tags() if sweep else {})
    name = run_name(cfg, sweep.swept if sweep else ())
    resumed_id = start.resumed.run_id if start.resumed else None
    with tracking.start_run(name, tags, sweep.parent_run_id if sweep else None, run_id=resumed_id) as run_id:
        log.info("run %s (%s) %s in experiment %r", run_id, name, "resumed" if resumed_id else "started",
                 start.experiment)
        try:
            params = run_params(cfg, model, training.optimizer, training.schedule)  # the config and what was built
            checkpoints, metric_log = _begin(start, run_id, cfg, config_yaml, output_dir, params)
            results, history = _train_and_finish(training, start, run_id, config_yaml, checkpoints, metric_log,
                                                 output_dir)
            model.cpu()
            tracking.log_model(model, inference.to_float(training.dataset.test.images[:4]).cpu().numpy(), config_yaml)
        except KeyboardInterrupt as err:  # the stop names the run it ended (the cli says how MLflow recorded it)
            if isinstance(err, interrupt.RunInterrupted):
                raise
            raise interrupt.RunInterrupted(f"interrupted ({err})", run_id,
                                           resume_command(run_id, cfg.tracking.uri)) from None
    log.info("%s", _summary(results))
    return RunResult(run_id, start.experiment, start.tracking_uri, results, history.val_loss[-1])


def _summary(results: dict[str, float]) -> str:
    """The final metrics in one line: ``test_loss 0.1 test_mse 0.02 (PCA 0.03) ...`` (those measured)."""
    shown = [("test_loss", ".4f", None), ("test_mse", ".4f", "pca_test_mse"), ("test_knn_acc", ".3f", "pca_knn_acc"),
             ("embed_knn_acc", ".3f", None), ("embed_trust", ".3f", None)]
    parts = []
    for name, spec, pca in shown:
        if name in results:
            parts.append(f"{name} {results[name]:{spec}}" + (f" (PCA {results[pca]:{spec}})" if pca else ""))
    return "  ".join(parts)


def _train_and_finish(training: _Training, start: _Start, run_id: str, config_yaml: str, checkpoints: _Checkpoints,
                      metric_log: MetricLog, output_dir: Path) -> tuple[dict[str, float], loop.History]:
    """The epochs still to train (a checkpoint and the metrics after each), then the final metrics and figures;
    whatever stops them, the latest checkpoint is logged to MLflow if it can be, and the error says how to go on."""
    cfg = training.cfg
    go_on = resume_command(run_id, cfg.tracking.uri)

    def end_of_epoch(epoch: int, values: dict[str, float]) -> None:
        # The checkpoint first: whatever happens to MLflow next, the epoch is not lost (a resume logs its metrics).
        checkpoints.save(training.checkpoint(run_id, epoch, config_yaml))
        try:
            checkpoints.name_in_run()
            metric_log.log(values, epoch)
        except Exception as err:
            raise TrackingError(
                f"lost the tracking store {start.tracking_uri} after epoch {epoch} ({tracking.short_error(err)}); "
                f"training so far is saved in {checkpoints.path}: once MLflow is back, continue with `{go_on}`"
            ) from None
        checkpoints.after_epoch(epoch)
        run_hooks.epoch_ended(epoch, values)  # e.g. an Optuna pruner, which may stop the run here

    try:
        history = training.fit(end_of_epoch)
        ended = training.finish_training()  # the best epoch's weights back (early stopping)
        metric_log.log(ended, step=len(history))
        results = ended | _finish(cfg, training.model, training.dataset, history, output_dir, metric_log)
    except run_hooks.RunPruned as err:
        tracking.set_tags({PRUNED_TAG: str(err.epoch)})
        checkpoints.upload()
        raise
    except KeyboardInterrupt as err:  # at a safe point (Interrupted), or at once (a second Ctrl-C)
        checkpoints.upload()
        raise interrupt.RunInterrupted(f"interrupted ({err}) after epoch {len(training.history)} of "
                                       f"{cfg.trainer.epochs}", run_id, go_on) from None
    except TrackingError:
        raise
    except OSError as err:
        checkpoints.upload()
        failure = files.write_error(err)
        if failure is None:
            raise
        saved = (f"training up to epoch {checkpoints.saved_epoch} is saved in {checkpoints.path}: once that is "
                 f"fixed, continue with `{go_on}`") if checkpoints.saved_epoch else "start it again once that is fixed"
        raise files.WriteError(f"{failure}; the MLflow run {run_id} was marked FAILED; {saved}") from None
    except BaseException:
        checkpoints.upload()
        raise
    checkpoints.upload()
    return results, history


INTERPOLATION_STEPS = 9
PRIOR_SAMPLES = (4, 8)


def _image_name(dataset: data.Dataset, index: int) -> str:
    """What a figure calls test image ``index``: its class, or its number when the images have no labels."""
    labels = dataset.test.labels
    return dataset.class_names[int(labels[index])] if labels is not None else f"#{index}"


@torch.no_grad()
def _interpolations(model: models.Autoencoder, dataset: data.Dataset, examples: np.ndarray
                    ) -> tuple[np.ndarray, list[str]]:
    """Decoded points on the line between the codes of pairs of test images (of different classes, when labelled):
    ``(pairs, steps, C, H, W)`` and a label per pair."""
    model.eval()
    pairs = [(int(examples[i]), int(examples[i + 1])) for i in range(0, min(len(examples) - 1, 8), 2)]
    rows, names = [], []
    weights = torch.linspace(0.0, 1.0, INTERPOLATION_STEPS, device=dataset.test.images.device)[:, None]
    for a, b in pairs:
        codes = model.encode(inference.to_float(dataset.test.images[[a, b]]))
        line = (1 - weights) * codes[0] + weights * codes[1]
        rows.append(model.decode(line).cpu().numpy())
        names.append(f"{_image_name(dataset, a)} -> {_image_name(dataset, b)}")
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


def final_and_baseline_metrics(model: models.Autoencoder, dataset: data.Dataset, seed: int
                               ) -> tuple[dict[str, float], np.ndarray]:
    """:func:`final_metrics` and the PCA baseline of the same size (``pca_*``); also return the test codes."""
    interrupt.check()
    results, codes = final_metrics(model, dataset, seed)
    interrupt.check()
    results.update(baseline.cached_pca_metrics(dataset.train.images, labels_of(dataset.train), dataset.test.images,
                                               labels_of(dataset.test), model.bottleneck))
    interrupt.check()
    return results, codes


def save_figure(figure: plots.Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` as a PNG (whole or not at all) and close it."""
    try:
        files.write_atomically([(path, functools.partial(figure.savefig, format="png", dpi=100))])
    finally:
        plots.plt.close(figure)


def _finish(cfg: DictConfig, model: models.Autoencoder, dataset: data.Dataset, history: loop.History,
            output_dir: Path, metric_log: MetricLog) -> dict[str, float]:
    """Final metrics (at the step of the epochs trained: a run trained further gets them anew at its new length),
    the embedding and the figures, logged to the active run."""
    results, codes = final_and_baseline_metrics(model, dataset, cfg.seed)
    embedding, views = embedding_metrics(cfg, codes, labels_of(dataset.test), cfg.seed)
    results.update(embedding)
    metric_log.log(results, step=len(history))
    interrupt.check()
    for filename, figure in _figures(cfg, model, dataset, history, views, results).items():
        save_figure(figure, output_dir / filename)  # drawn once, into the output folder; MLflow copies it
        tracking.log_artifact(output_dir / filename)
    write_reconstruction_examples(model, dataset, output_dir / report.RECONSTRUCTIONS)
    tracking.log_artifact(output_dir / report.RECONSTRUCTIONS)
    interrupt.check()
    write_explorer(cfg, model, dataset, views, output_dir / EXPLORER)
    tracking.log_artifact(output_dir / EXPLORER)
    return results


@torch.no_grad()
def write_reconstruction_examples(model: models.Autoencoder, dataset: data.Dataset, path: Path) -> None:
    """``reconstructions.npz`` at ``path``: the first test image of each class in turn (the first images when
    unlabelled; the same images for every run on the dataset) and the model's outputs of them, for the sweep report's
    panel."""
    labels = labels_of(dataset.test)
    examples = (np.arange(min(RECONSTRUCTION_EXAMPLES, len(dataset.test))) if labels is None
                else plots.pick_one_per_class(labels, RECONSTRUCTION_EXAMPLES))
    inputs = inference.to_float(dataset.test.images[examples])
    model.eval()
    outputs = model(inputs).float().cpu().numpy()
    arrays = {"indices": examples, "inputs": inputs.cpu().numpy().astype(np.float16),
              "outputs": outputs.astype(np.float16)}
    files.write_atomically([(path, lambda file: np.savez_compressed(file, **arrays))])


def _figures(cfg: DictConfig, model: models.Autoencoder, dataset: data.Dataset, history: loop.History,
             views: Views, results: dict[str, float]) -> dict[str, plots.Figure]:
    """Every figure of a run, by file name."""
    label = f"{model_label(cfg)} (bottleneck {model.bottleneck})"
    test_labels = labels_of(dataset.test)
    examples = (plots.pick_one_per_class(test_labels, RECONSTRUCTION_EXAMPLES) if test_labels is not None
                else np.arange(min(RECONSTRUCTION_EXAMPLES, len(dataset.test))))
    originals = inference.to_float(dataset.test.images[examples])
    noisy = _noisy_examples(model, originals, cfg.seed)
    interpolations, pair_names = _interpolations(model, dataset, examples)
    with torch.no_grad():
        model.eval()
        outputs = model(noisy if noisy is not None else originals).float().cpu().numpy()
    figures = {
        "reconstructions.png": plots.reconstruction_grid(
            originals.cpu().numpy(), outputs, [_image_name(dataset, i) for i in examples],
            noisy=None if noisy is None else noisy.cpu().numpy()),
        "loss_curves.png": plots.loss_curves(history.train_loss, history.val_loss, getattr(model, "loss", "")),
        "interpolation.png": plots.image_grid(interpolations, f"{label}: decoded codes between two test images",
                                              pair_names),
    }
    figures.update(view_figures(cfg, model, dataset, views, results))
    samples = _prior_samples(model, cfg.seed)
    if samples is not None:
        figures["prior_samples.png"] = plots.image_grid(samples, f"{model_label(cfg)}: decoded samples of its prior")
    return figures


def view_figures(cfg: DictConfig, model: models.Autoencoder, dataset: data.Dataset, views: Views,
                 results: dict[str, float]) -> dict[str, plots.Figure]:
    """``<method>.png`` of each 2-D view: the test codes coloured by class, titled with the view's metrics."""
    label = f"{model_label(cfg)} (bottleneck {model.bottleneck})"
    figures = {}
    for method, points in views.points.items():
        measured = [f"5-NN acc in 2-D {results[f'embed_{method}_knn_acc']:.3f}"] if views.labels is not None else []
        measured.append(f"trustworthiness {results[f'embed_{method}_trust']:.3f}")
        figures[f"{method}.png"] = plots.embedding_scatter(
            points, views.labels, dataset.class_names,
            f"{VIEW_NAMES[method]} of {label} codes on {dataset.name} test images\n{', '.join(measured)}")
    return figures


def write_explorer(cfg: DictConfig, model: models.Autoencoder, dataset: data.Dataset, views: Views,
                   path: Path) -> None:
    """``explorer.html`` at ``path``: the first view, each point showing its test image and reconstruction on hover."""
    from aeexp.explorer import explorer_html

    method, points = next(iter(views.points.items()))
    images = dataset.test.images[torch.as_tensor(views.chosen, device=dataset.test.images.device)]
    reconstructions = inference.reconstruct(model, images)
    html = explorer_html(points, views.labels, dataset.class_names, images.cpu().numpy(), reconstructions.numpy(),
                         f"{VIEW_NAMES[method]} of {model_label(cfg)} codes (bottleneck {model.bottleneck}) on "
                         f"{dataset.name}: hover a point for its image and reconstruction"
                         + (", click the legend to hide a class" if views.labels is not None else ""))
    files.write_atomically([(path, lambda file: file.write(html.encode("utf-8")))])
