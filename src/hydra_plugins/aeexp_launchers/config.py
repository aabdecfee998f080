"""The launchers' configs: ``hydra/launcher=basic`` (Hydra's default), ``joblib``, ``submitit_local`` and
``submitit_slurm`` (and aeexp's ``slurm`` preset, which extends ``submitit_slurm``) are the plugins' own configs with
aeexp's subclasses (:mod:`.launchers`) as their ``_target_``, stored under the plugins' names in place of theirs."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules, where
# dataclasses cannot resolve string annotations.
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_launcher import BasicLauncherConf as HydraBasicLauncherConf
from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

LAUNCHERS = "hydra_plugins.aeexp_launchers.launchers"


@dataclass
class BasicLauncherConf(HydraBasicLauncherConf):
    """``hydra/launcher=basic``, Hydra's default: no settings."""

    _target_: str = f"{LAUNCHERS}.BasicLauncher"


@dataclass
class JoblibLauncherConf(JobLibLauncherConf):
    """``hydra/launcher=joblib``: hydra-joblib-launcher's settings."""

    _target_: str = f"{LAUNCHERS}.JoblibLauncher"


@dataclass
class SubmititLocalLauncherConf(LocalQueueConf):
    """``hydra/launcher=submitit_local``: hydra-submitit-launcher's settings."""

    _target_: str = f"{LAUNCHERS}.SubmititLocalLauncher"


@dataclass
class SubmititSlurmLauncherConf(SlurmQueueConf):
    """``hydra/launcher=submitit_slurm``: hydra-submitit-launcher's settings."""

    _target_: str = f"{LAUNCHERS}.SubmititSlurmLauncher"


CONFIGS = {"basic": BasicLauncherConf, "joblib": JoblibLauncherConf, "submitit_local": SubmititLocalLauncherConf,
           "submitit_slurm": SubmititSlurmLauncherConf}


def store() -> None:
    """Store the configs under the plugins' names, replacing the plugins' own. Call it after Hydra's plugin scan:
    the scan runs every plugin module again, the plugins' config modules too, which store theirs anew."""
    for name, node in CONFIGS.items():
        ConfigStore.instance().store(group="hydra/launcher", name=name, node=node, provider="aeexp")
