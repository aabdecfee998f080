"""The Hydra entry point: compose the config, run one experiment, report where it went in one line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from aeexp.config import register_configs, validate
from aeexp.errors import AeexpError

log = logging.getLogger("aeexp")

register_configs()


def _ui_hint(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)"


@hydra.main(version_base="1.3", config_path="pkg://aeexp.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        validate(cfg)  # before the heavy imports below: a bad value is refused in a second
        from aeexp import experiment

        result = experiment.run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except AeexpError as err:
        log.error("error: %s", err)
        sys.exit(1)
    log.info("run %s in experiment %r at %s", result.run_id, result.experiment, result.tracking_uri)
    log.info("to compare runs: %s", _ui_hint(result.tracking_uri))
    return result.metrics["test_loss"]


def main() -> None:
    """Console-script entry point (``aeexp``), same as ``python -m aeexp``."""
    _hydra_main()


if __name__ == "__main__":
    main()
