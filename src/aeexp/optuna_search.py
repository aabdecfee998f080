"""An Optuna study driven by a Hydra sweep (aeexp's ``aeexp_optuna`` sweeper): the search space from
``hydra.sweeper.params``, a persistent study that a killed sweep continues, trials pruned from their per-epoch
``val_loss``, and the best trial and ``optuna_history.png`` for the sweep's parent run.

Built on Optuna's ask-and-tell API (Optuna 3 and later): hydra-optuna-sweeper 1.3 pins ``optuna<3``, whose RDB
storage fails under SQLAlchemy 2, so its studies could only live in memory and never pruned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from aeexp import processes, run_hooks
from aeexp.errors import AeexpError, ConfigError

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"  # the default storage: a sqlite file in the sweep's folder
INTERRUPTED_ATTR = "aeexp.interrupted_trials"  # study attribute: trials a killed sweep left RUNNING
OBJECTIVE = "val_loss"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(storage: str | None, sweep_dir: str) -> str:
    """``storage`` as a database URL: null -> ``sqlite:///<sweep dir>/optuna.db``, a plain path -> a sqlite file."""
    if not storage:
        return f"sqlite:///{Path(sweep_dir).resolve() / STORAGE_FILE}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage).resolve()}"
    return storage


def shown_url(url: str) -> str:
    """A storage URL without its password, for messages and tags."""
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's storage at ``url`` (tables made if new); AeexpError naming it if it cannot be opened."""
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:
        reason = str(err).splitlines()[0][:300]
        raise AeexpError(f"hydra.sweeper.storage={shown_url(url)}: cannot open the Optuna study storage "
                         f"({type(err).__name__}: {reason}); give a sqlite:///path/to/file.db in a writable folder "
                         "or the URL of a reachable database") from None


def _distribution(override: Override) -> BaseDistribution:
    """One swept override as an Optuna distribution: choice -> categorical, range -> int/float steps, interval ->
    float (``tag(log, ...)``: log scale; ``tag(int, ...)``: integers)."""
    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values) and len(values) > 1:
            return IntDistribution(values[0], values[-1], step=values[1] - values[0])
        return CategoricalDistribution(values)
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags:
            return IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ConfigError(f"hydra.sweeper.params: {override.input_line} is not a sweep Optuna can search; use "
                      "choice(...), range(...), interval(...) or tag(log, interval(...))")


def search_space(params: dict[str, Any], arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions of the swept keys (``hydra.sweeper.params`` and sweeps on the command line) and the
    command line's fixed overrides, passed to every trial."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    distributions: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_sweep_override():
            distributions[key] = _distribution(override)
        else:
            distributions.pop(key, None)  # the command line fixes a key the preset searches
            fixed = [f for f in fixed if not f.startswith(f"{key}=")] + [override.input_line]
    return distributions, fixed


def trial_overrides(trial: optuna.trial.Trial, fixed: Sequence[str]) -> list[str]:
    return [f"{name}={value}" for name, value in trial.params.items()] + list(fixed)


def settled(study: optuna.Study) -> int:
    """Trials that count toward ``n_trials``: complete, pruned or failed, not those a killed sweep interrupted."""
    interrupted = set(study.user_attrs.get(INTERRUPTED_ATTR, []))
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in interrupted)
               for t in study.get_trials(deepcopy=False))


def settled_in(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """:func:`settled` of the study ``study_name`` in ``storage``; 0 if there is none yet."""
    if study_name not in optuna.study.get_all_study_names(storage):
        return 0
    return settled(optuna.load_study(study_name=study_name, storage=storage))


DIRECTIONS = ("minimize", "maximize")


def check_settings(sweeper: Any) -> None:
    """Refuse, in one line naming the key, a setting of ``hydra.sweeper`` that cannot work: an unknown direction, no
    trial or job, a sampler or pruner that cannot be made (an unknown class, a value it refuses)."""
    from aeexp import components

    if sweeper.direction not in DIRECTIONS:
        raise ConfigError(f"hydra.sweeper.direction={sweeper.direction!r} is invalid: choose minimize or maximize")
    for key in ("n_trials", "n_jobs"):
        if not isinstance(sweeper[key], int) or sweeper[key] < 1:
            raise ConfigError(f"hydra.sweeper.{key}={sweeper[key]!r} is invalid: it must be a positive integer")
    for key in ("sampler", "pruner"):
        if sweeper[key] is not None:
            components.build(sweeper[key], f"hydra.sweeper.{key}")


OWNER_ATTR = "aeexp.owner"  # trial attribute: the host and process of the sweep that asked for it


def ask(study: optuna.Study, distributions: dict[str, BaseDistribution]) -> optuna.trial.Trial:
    """A new trial, marked with the process that runs it (so that another sweep of the study leaves it alone)."""
    trial = study.ask(distributions)
    trial.set_user_attr(OWNER_ATTR, processes.me())
    return trial


def running_elsewhere(study: optuna.Study) -> list[int]:
    """Trials RUNNING in another live sweep of the study (see :func:`take_over_interrupted`)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if processes.alive(t.user_attrs.get(OWNER_ATTR))]


def take_over_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a killed sweep (its process no longer runs): marked failed and queued again with the
    same parameters (a job then continues its MLflow run from the checkpoint, with ``sweep.resume``). A trial that
    another sweep of the study runs now is left alone. Returns their numbers."""
    left = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not processes.alive(t.user_attrs.get(OWNER_ATTR))]
    for trial in left:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
    if left:
        study.set_user_attr(INTERRUPTED_ATTR, study.user_attrs.get(INTERRUPTED_ATTR, []) + [t.number for t in left])
    return [t.number for t in left]


@dataclass
class Pruning:
    """Reports each job's per-epoch ``val_loss`` to its trial (jobs run in this process) and stops the hopeless."""

    trials: dict[int, optuna.trial.Trial]  # by Hydra job number
    pruned: dict[int, int] = field(default_factory=dict)  # trial number -> epoch

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        trial = self.trials.get(int(HydraConfig.get().job.num))
        value = metrics.get(OBJECTIVE)
        if trial is None or value is None or not math.isfinite(value):
            return
        try:
            trial.report(value, epoch)
        except optuna.exceptions.UpdateFinishedTrialError:  # ended by another process: nothing left to prune
            return
        if trial.should_prune():
            self.pruned[trial.number] = epoch
            raise run_hooks.RunPruned(epoch, f"pruned by Optuna at epoch {epoch} ({OBJECTIVE} {value:.4g}, trial "
                                             f"{trial.number})")


@contextmanager
def pruning(trials: Sequence[optuna.trial.Trial], first_job: int) -> Iterator[Pruning]:
    listener = Pruning({first_job + i: trial for i, trial in enumerate(trials)})
    with run_hooks.listening(listener):
        yield listener


def tell(study: optuna.Study, trial: optuna.trial.Trial, result: Callable[[], Any], pruned: bool) -> str:
    """Tell the study how a trial ended (``result()``: the job's return value, which may raise); the state's name."""
    try:
        value = float(result())
    except Exception as err:  # the job raised past aeexp's own handling
        log.warning("trial %d failed: %s", trial.number, err)
        value = math.nan
    state = "PRUNED" if pruned else "COMPLETE" if math.isfinite(value) else "FAIL"
    try:
        if state == "COMPLETE":
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState[state])
    except optuna.exceptions.UpdateFinishedTrialError:
        ended = study.get_trials(deepcopy=False)[trial.number].state.name
        log.warning("trial %d was ended %s by another process before this one could record it %s", trial.number,
                    ended, state)
        return ended
    return state


def history(study: optuna.Study) -> tuple[list[int], list[float], list[bool]]:
    """Per finished trial: its number, its value (a pruned trial's last reported one) and whether it was pruned."""
    numbers, values, pruned = [], [], []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        was_pruned = trial.state == TrialState.PRUNED
        steps = trial.intermediate_values
        value = steps[max(steps)] if was_pruned and steps else trial.value
        if value is not None:
            numbers.append(trial.number)
            values.append(float(value))
            pruned.append(was_pruned)
    return numbers, values, pruned


def results(study: optuna.Study) -> dict[str, Any]:
    """``optimization_results.yaml``: the best trial's parameters and value, and the study's counts."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    found: dict[str, Any] = {"name": study.study_name, "n_trials": len(states),
                             "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
                             "failed": states.count(TrialState.FAIL)}
    if found["complete"]:
        best = study.best_trial
        found.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params))
    return found


def write_results(found: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(found, sort_keys=False))
