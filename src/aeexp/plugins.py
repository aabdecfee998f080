"""aeexp's Hydra plugins (``src/hydra_plugins/``) made known to Hydra in every install.

Hydra finds plugins by walking the ``hydra_plugins`` namespace package, which works for an installed aeexp but not
for an editable one (setuptools' editable finder gives the namespace a path entry that ``pkgutil`` cannot walk).
Registering them here, through Hydra's public ``Plugins.register`` and ConfigStore, works for both.
"""

from __future__ import annotations

import importlib

# The plugins' config modules, each registering its ConfigStore entries on import. Imported before Hydra's plugin
# scan, which runs each plugin module again but, for one already in sys.modules, inside it (dataclasses need that).
CONFIG_MODULES = ("hydra_plugins.aeexp_optuna_sweeper.config", "hydra_plugins.aeexp_ray_launcher.config",
                  "hydra_plugins.aeexp_launchers.config")
# The plugin classes, imported after the scan, so that the launchers subclass the plugin classes it leaves.
CLASSES = ("hydra_plugins.aeexp_optuna_sweeper.optuna_sweeper.AeexpOptunaSweeper",
           "hydra_plugins.aeexp_ray_launcher.ray_launcher.AeexpRayLauncher",
           *(f"hydra_plugins.aeexp_launchers.launchers.{name}"
             for name in ("JoblibLauncher", "SubmititLocalLauncher", "SubmititSlurmLauncher")))
# The config module whose entries replace other plugins' (joblib's, submitit's), stored again after the scan.
REPLACING_CONFIGS = "hydra_plugins.aeexp_launchers.config"


def register() -> None:
    """Register each plugin's config and class with Hydra (idempotent)."""
    from hydra.core.plugins import Plugins

    for config_module in CONFIG_MODULES:
        importlib.import_module(config_module)
    plugins = Plugins.instance()  # (the plugin scan, at the first call)
    for class_path in CLASSES:
        module, name = class_path.rsplit(".", 1)
        plugins.register(getattr(importlib.import_module(module), name))
    importlib.import_module(REPLACING_CONFIGS).store()
