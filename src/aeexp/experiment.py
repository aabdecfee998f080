"""One run as a pipeline: config -> data -> model -> fit -> evaluate -> log, each a call into its own module
(:mod:`aeexp.preflight`, :mod:`aeexp.data`, :mod:`aeexp.models`, :mod:`aeexp.training`, :mod:`aeexp.evaluation`,
:mod:`aeexp.run_record` and :mod:`aeexp.tracking`)."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from aeexp import data, files, models, preflight, run_hooks, run_record, tracking
from aeexp.errors import ConfigError, TrackingError
from aeexp.evaluation import health as latent_health
from aeexp.evaluation import lists, pictures, pipeline, stability
from aeexp.models.inference import resolve_device, to_float
from aeexp.naming import model_label, run_name
from aeexp.params import run_params
from aeexp.resumed_run import find_checkpoint, resolve_run_id
from aeexp.sweep import PRUNED_TAG, Sweep, job_tags
from aeexp.training import checkpoint, interrupt, loop, optim, resume
from aeexp.training.early_stopping import EarlyStopping

log = logging.getLogger(__name__)


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
    return resolve_device(wanted)




@dataclass
class _Start:
    """How a run begins: fresh, or from a checkpoint of an existing run (with that run's config)."""

    cfg: DictConfig
    experiment: str
    tracking_uri: str
    resumed: checkpoint.Checkpoint | None = None
    record: tracking.RunRecord | None = None  # the resumed run as MLflow had it
    checked: preflight.Checked | None = None  # (a resumed run's: made from its stored config)


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
    lists.for_resumed_run(resumed_cfg, cfg)  # its own views and metrics (their targets checked when it was read)
    checked = preflight.check(resumed_cfg)
    if run_record.status == "FINISHED" and resumed_cfg.trainer.epochs == state.epoch:
        raise ConfigError(f"resume: run {run_id} already finished its {state.epoch} epochs; give trainer.epochs "
                          f"above {state.epoch} to train it further")
    tracking.configure(tracking_uri, experiment_name)
    return _Start(resumed_cfg, experiment_name, tracking_uri, state, run_record, checked)


def resume_command(run_id: str, tracking_uri: str | None) -> str:
    """The command that continues run ``run_id``."""
    uri = f" tracking.uri={tracking_uri}" if tracking_uri else ""
    return f"python -m aeexp resume={run_id}{uri}"


def run(cfg: DictConfig, output_dir: Path | None = None, sweep: Sweep | None = None,
        overrides: Sequence[str] = (), checked: preflight.Checked | None = None) -> RunResult:
    """Run the experiment ``cfg`` describes; checkpoints and figures go to ``output_dir`` (a temporary folder
    when None).

    In a ``sweep`` the run is a child of the sweep's parent run, in the sweep's experiment. With ``cfg.resume``
    the named run continues from its checkpoint, with its own config and the changeable command-line
    ``overrides`` (see :mod:`aeexp.training.resume`). ``checked``: what :mod:`aeexp.preflight` made of ``cfg`` (the
    command line checks it before its heavy imports); None: checked here. The data is read before the MLflow
    experiment is made: data that cannot be found leaves no empty experiment behind.
    """
    output_dir = output_dir or Path(tempfile.mkdtemp(prefix="aeexp-"))
    start = _resumed_start(cfg, sweep, overrides) if cfg.get("resume") else None
    cfg = start.cfg if start else cfg
    checked = start.checked if start else checked or preflight.check(cfg)
    assert checked is not None
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = models.build(cfg.model, checked.source.image_shape).to(device)
    optimizer = optim.build_optimizer(cfg.optimizer, model)
    interrupt.check()
    dataset = data.load(checked.source, cfg.seed).to(device)
    log.info("%s: %d train, %d val, %d test images of shape %s on %s", dataset.name, len(dataset.train),
             len(dataset.val), len(dataset.test), dataset.image_shape, device)
    start = start or _fresh_start(cfg, sweep)
    schedule = optim.build_schedule(cfg.scheduler, optimizer, cfg.trainer.epochs,
                                    math.ceil(len(dataset.train) / cfg.trainer.batch_size))
    generator = torch.Generator().manual_seed(cfg.seed)
    patience = cfg.trainer.early_stopping.patience
    stopping = EarlyStopping(patience, cfg.trainer.early_stopping.min_delta) if patience is not None else None
    history = loop.History()
    if start.resumed is not None:
        history = checkpoint.restore(start.resumed, model, optimizer, schedule, generator, stopping)
    step = loop.make_step(model, optimizer, device, cfg.trainer.compile, cfg.trainer.mixed_precision)
    log.info("training on the %s path%s", step.path, " with bf16 matrix products" if step.bf16 else "")
    interrupt.check()
    training = _Training(cfg, dataset, model, optimizer, schedule, generator, history, step, stopping, checked.lists)
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
    lists: lists.Lists  # what to measure and draw of its codes

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
    config_yaml = tracking.redact(OmegaConf.to_yaml(cfg, resolve=True))  # it goes to MLflow: no password
    device = next(model.parameters()).device
    tags = run_record.run_tags(cfg, device, training.step.path, training.step.bf16, training.dataset.digest) | (
        job_tags() if sweep else {})
    name = run_name(cfg, sweep.swept if sweep else ())
    resumed_id = start.resumed.run_id if start.resumed else None
    with tracking.start_run(name, tags, sweep.parent_run_id if sweep else None, run_id=resumed_id) as run_id:
        log.info("run %s (%s) %s in experiment %r", run_id, name, "resumed" if resumed_id else "started",
                 start.experiment)
        try:
            params = run_params(cfg, model, training.optimizer, training.schedule)  # the config and what was built
            checkpoints, metric_log = run_record.begin(run_id, cfg, config_yaml, output_dir, params, start.resumed,
                                                       start.record)
            results, history = _train_and_finish(training, start, run_id, config_yaml, checkpoints, metric_log,
                                                 output_dir)
            model.cpu()
            tracking.log_model(model, to_float(training.dataset.test.images[:4]).cpu().numpy(), config_yaml)
        except KeyboardInterrupt as err:  # the stop names the run it ended (the cli says how MLflow recorded it)
            if isinstance(err, interrupt.RunInterrupted):
                raise
            raise interrupt.RunInterrupted(f"interrupted ({err})", run_id,
                                           resume_command(run_id, cfg.tracking.uri)) from None
    log.info("%s", pipeline.summary(results))
    return RunResult(run_id, start.experiment, start.tracking_uri, results, history.val_loss[-1])


def _train_and_finish(training: _Training, start: _Start, run_id: str, config_yaml: str,
                      checkpoints: run_record.Checkpoints, metric_log: run_record.MetricLog, output_dir: Path
                      ) -> tuple[dict[str, float], loop.History]:
    """The epochs still to train (a checkpoint and the metrics after each), then the final metrics and figures;
    whatever stops them, the latest checkpoint is logged to MLflow if it can be, and the error says how to go on."""
    cfg = training.cfg
    go_on = resume_command(run_id, cfg.tracking.uri)
    epoch_health = latent_health.EpochHealth(training.lists.health, training.dataset.val.images)

    def end_of_epoch(epoch: int, values: dict[str, float]) -> None:
        values.update(epoch_health(training.model))  # into the history too: a checkpoint keeps them
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
        results = ended | _evaluate(training, output_dir, metric_log)
        if epoch_health.skips.reasons:
            tracking.set_tags(epoch_health.skips.tags())
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


def _evaluate(training: _Training, output_dir: Path, metric_log: run_record.MetricLog) -> dict[str, float]:
    """The final metrics (at the step of the epochs trained: a run trained further gets them anew at its new length)
    and pictures, logged to the active run with a tag for each thing that could not be computed."""
    cfg, model, dataset = training.cfg, training.model, training.dataset
    evaluation = pipeline.evaluate(model, dataset, training.lists, cfg.embed.n_samples, cfg.seed, interrupt.check)
    metric_log.log(evaluation.metrics, step=len(training.history))
    interrupt.check()
    subject = pictures.Subject(model, dataset, model_label(cfg), cfg.seed)
    codes = stability.write_codes(evaluation.codes, pipeline.labels_of(dataset.test), output_dir)  # sweep report's
    for path in [*pictures.write_all(subject, evaluation, training.history.epochs, output_dir, interrupt.check), codes]:
        tracking.log_artifact(path)  # drawn once, into the output folder; MLflow copies it
    if evaluation.skips.reasons:
        tracking.set_tags(evaluation.skips.tags())
    alarm = latent_health.alarm(evaluation.metrics)
    if alarm:
        log.warning("latent alarm: %s", alarm)
        tracking.set_tags({latent_health.ALARM_TAG: alarm})
    return evaluation.metrics
