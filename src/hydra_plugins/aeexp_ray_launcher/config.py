"""The launcher's config, registered as ``hydra/launcher=ray`` (imported by Hydra's plugin scan)."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside sys.modules, where
# dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class AeexpRayLauncherConf:
    """``hydra.launcher.*``: which Ray cluster, and what each job asks of it."""

    _target_: str = "hydra_plugins.aeexp_ray_launcher.ray_launcher.AeexpRayLauncher"
    # null: start a Ray instance on this machine for the sweep; "host:port" (the head's GCS port, 6379 by default)
    # or "auto": a running cluster. Its nodes must share the sweep dir's disk and reach the tracking server.
    address: str | None = None
    # CPUs of a local instance (null: all of this machine's)
    num_cpus: int | None = None
    # ray.remote options of each job: num_cpus, num_gpus, memory, ...
    remote: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})
    # further ray.init arguments (e.g. runtime_env)
    init: dict[str, Any] = field(default_factory=dict)
    # seconds to wait for a cluster at `address` to answer before the sweep is refused
    connect_timeout_s: float = 10.0


ConfigStore.instance().store(group="hydra/launcher", name="ray", node=AeexpRayLauncherConf, provider="aeexp")
