"""aeexp's Hydra configs, shipped inside the package as ``aeexp.conf``."""
