"""aeexp's Hydra launchers (a Hydra plugin: Hydra instantiates launchers only from the ``hydra_plugins`` package)."""
