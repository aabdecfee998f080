"""The Hydra Sweeper class: asks the study for trials, launches them as jobs, tells it how they ended."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from aeexp.errors import AeexpError

log = logging.getLogger(__name__)


class AeexpOptunaSweeper(Sweeper):
    """A persistent, pruning Optuna study over ``hydra.sweeper.params`` (see :mod:`aeexp.optuna_search`)."""

    def __init__(self, direction: str, study_name: str, storage: str | None, n_trials: int, n_jobs: int,
                 sampler: Any, pruner: Any, params: Any) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, max(1, n_jobs)
        self.sampler, self.pruner = sampler, pruner
        self.params = OmegaConf.to_container(params) if OmegaConf.is_config(params) else dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None

    @staticmethod
    def preflight(config: DictConfig) -> None:
        """Before the sweep's parent run exists (called by aeexp.sweep): refuse a bad setting (direction, trial
        counts, a sampler or pruner that cannot be made), a storage that cannot be opened, and a study that already
        holds its trials unless the sweep is resumed (which only redoes the report)."""
        from aeexp import optuna_search, sweep_resume

        sweeper = config.hydra.sweeper
        optuna_search.check_settings(sweeper)
        url = optuna_search.storage_url(sweeper.storage, config.hydra.sweep.dir)
        done = optuna_search.settled_in(optuna_search.open_storage(url), sweeper.study_name)
        if done >= sweeper.n_trials and not sweep_resume.requested(config):
            raise AeexpError(f"Optuna study {sweeper.study_name!r} in {optuna_search.shown_url(url)} already holds "
                             f"{done} finished trials (hydra.sweeper.n_trials={sweeper.n_trials}); raise "
                             "hydra.sweeper.n_trials to search further, or give another hydra.sweeper.study_name")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def _study(self) -> Any:
        """The study, created or loaded; a continued one's seeded sampler is reseeded so as not to replay its
        earlier suggestions."""
        import optuna
        from hydra.utils import instantiate

        from aeexp import optuna_search

        url = optuna_search.storage_url(self.storage, self.config.hydra.sweep.dir)
        storage = optuna_search.open_storage(url)
        pruner = instantiate(self.pruner) if self.pruner else optuna.pruners.NopPruner()
        study = optuna.create_study(study_name=self.study_name, storage=storage, direction=self.direction,
                                    sampler=instantiate(self.sampler), pruner=pruner, load_if_exists=True)
        done = len(study.get_trials(deepcopy=False))
        seed = OmegaConf.select(OmegaConf.create(self.sampler), "seed", default=None) if self.sampler else None
        if done and seed is not None:
            study.sampler = instantiate(self.sampler, seed=int(seed) + done)
        log.info("Optuna study %r in %s: %d trials so far, %d wanted", self.study_name,
                 optuna_search.shown_url(url), done, self.n_trials)
        return study

    def sweep(self, arguments: list[str]) -> None:
        from aeexp import optuna_search

        distributions, fixed = optuna_search.search_space(self.params, arguments)
        study = self._study()
        interrupted = optuna_search.take_over_interrupted(study)
        if interrupted:
            log.info("trials %s were cut short by a killed sweep: running them again", interrupted)
        live = optuna_search.running_elsewhere(study)
        if live:
            log.info("trials %s run in another sweep of this study now: left to it", live)
        while (remaining := self.n_trials - optuna_search.settled(study)) > 0:
            trials = [optuna_search.ask(study, distributions) for _ in range(min(self.n_jobs, remaining))]
            overrides = [optuna_search.trial_overrides(trial, fixed) for trial in trials]
            with optuna_search.pruning(trials, trials[0].number) as pruning:
                returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            for trial, job in zip(trials, returns, strict=True):
                state = optuna_search.tell(study, trial, lambda job=job: job.return_value,
                                           trial.number in pruning.pruned)
                log.info("trial %d: %s", trial.number, state)
        self._report(study)

    def _report(self, study: Any) -> None:
        """optimization_results.yaml in the sweep dir, optuna_history.png beside the comparison report (logged to the
        parent run with it), the best trial as the parent's tags."""
        from aeexp import optuna_search, sweep, sweep_insight, tracking
        from aeexp.evaluation import figures

        directory = Path(self.config.hydra.sweep.dir)
        found = optuna_search.results(study)
        optuna_search.write_results(found, directory / "optimization_results.yaml")
        optuna_search.write_results(found, directory / sweep.REPORT_DIR / "optimization_results.yaml")
        numbers, values, pruned = optuna_search.history(study)
        if numbers:
            figure = figures.optimization_history(numbers, values, pruned, optuna_search.OBJECTIVE,
                                                  minimize=self.direction == "minimize")
            figure.savefig(directory / sweep.REPORT_DIR / "optuna_history.png", dpi=100)
            figures.plt.close(figure)
        log.info("Optuna study %r: %d trials (%d complete, %d pruned, %d failed); best %s", study.study_name,
                 found["n_trials"], found["complete"], found["pruned"], found["failed"],
                 found.get("best_params", "none"))
        parent = sweep.load_sweep(directory)
        if parent is None or "best_params" not in found:
            return
        tags = {"optuna.study": study.study_name, "optuna.best_trial": str(found["best_trial"]),
                "optuna.best_value": f"{found['best_value']:.6g}",
                **{f"optuna.best.{key}": str(value) for key, value in found["best_params"].items()},
                **sweep_insight.optuna_importance_tags(study)}  # the report's importance section
        for key, value in tags.items():
            tracking.set_run_tag(parent.parent_run_id, key, value)
