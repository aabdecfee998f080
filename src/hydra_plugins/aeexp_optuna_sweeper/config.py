"""The sweeper's config, registered as ``hydra/sweeper=aeexp_optuna`` (imported by Hydra's plugin scan)."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules, where
# dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class AeexpOptunaSweeperConf:
    """``hydra.sweeper.*``: the study, its search space (``params``, Hydra's sweep syntax), sampler and pruner."""

    _target_: str = "hydra_plugins.aeexp_optuna_sweeper.optuna_sweeper.AeexpOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds its sampler and pruner itself (a continued study reseeds)
    direction: str = "minimize"
    study_name: str = "aeexp"
    # null: sqlite:///<sweep dir>/optuna.db; else any database URL Optuna takes, or a path to a sqlite file.
    storage: str | None = None
    # Trials the study holds when the sweep ends (those of earlier, killed attempts included).
    n_trials: int = 20
    # Trials asked at a time (the launcher may run them in parallel; pruning needs them in this process).
    n_jobs: int = 1
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # null: no pruning. The pruner sees each trial's val_loss after every epoch.
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 5,
                                                 "n_warmup_steps": 2})
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="aeexp_optuna", node=AeexpOptunaSweeperConf,
                             provider="aeexp")
