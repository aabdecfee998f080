"""aeexp's Hydra plugins (``src/hydra_plugins/``) made known to Hydra in every install.

Hydra finds plugins by walking the ``hydra_plugins`` namespace package, which works for an installed aeexp but not
for an editable one (setuptools' editable finder gives the namespace a path entry that ``pkgutil`` cannot walk).
Registering them here, through Hydra's public ``Plugins.register`` and ConfigStore, works for both.
"""

from __future__ import annotations

import importlib

# (config module, plugin class) of each plugin; the config module registers its ConfigStore entry on import.
PLUGINS = (
    ("hydra_plugins.aeexp_optuna_sweeper.config",
     "hydra_plugins.aeexp_optuna_sweeper.optuna_sweeper.AeexpOptunaSweeper"),
    ("hydra_plugins.aeexp_ray_launcher.config", "hydra_plugins.aeexp_ray_launcher.ray_launcher.AeexpRayLauncher"),
)


def register() -> None:
    """Register each plugin's config and class with Hydra (idempotent)."""
    from hydra.core.plugins import Plugins

    classes = []
    for config_module, class_path in PLUGINS:  # imported before Hydra's plugin scan, which then reuses them
        importlib.import_module(config_module)
        module, name = class_path.rsplit(".", 1)
        classes.append(getattr(importlib.import_module(module), name))
    for plugin in classes:
        Plugins.instance().register(plugin)
