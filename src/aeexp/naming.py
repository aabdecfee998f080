"""Run names: what tells a run from its siblings, short enough to read in MLflow's runs table.

``ae32-b4-digits`` for the defaults; each setting that differs from the shipped defaults adds a word:
``ae32-b4-digits radam lr=0.003 cosine warmup2 masking0.3 seed=1``. A sweep's job adds each swept value its name
does not show yet (``ae32-b4-digits epochs=20``, ``ae32-b4-digits seed=0``). ``tracking.run_name`` replaces the
default name (a sweep's jobs still add their swept values to it). The defaults are read from the shipped configs
(``aeexp.conf``), the one place they are set.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Swept keys the name shows by its own words (whatever their value), and the word each falls under (the dataset's
# name is in the model's word).
SHOWN_BY = {"model": "model", "model.name": "model", "model._target_": "model", "model.bottleneck": "model",
            "dataset": "model", "dataset.name": "model", "optimizer": "optimizer",
            "optimizer._target_": "optimizer", "optimizer.lr": "lr", "scheduler": "scheduler",
            "scheduler._target_": "scheduler", "scheduler.warmup_epochs": "warmup", "model.noise": "noise",
            "model.noise_level": "noise", "seed": "seed"}


def model_label(cfg: DictConfig) -> str:
    """The model's name: ``model.name``, else its class's (a YAML of one's own may leave the name out)."""
    return str(cfg.model.get("name") or str(cfg.model.get("_target_", "model")).rsplit(".", 1)[-1])


def run_name(cfg: DictConfig, swept: Sequence[str] = ()) -> str:
    """The run's name in MLflow: ``tracking.run_name`` when given, else the default name (see the module); a sweep's
    job (``swept``: the keys its sweep varies) adds the swept values the name does not show."""
    given = cfg.tracking.get("run_name")
    words = {} if given else dict(_words(cfg))
    name = given or " ".join(words.values())
    extra = [_swept_value(cfg, key) for key in swept
             if not key.startswith("hydra") and SHOWN_BY.get(key) not in words]
    return " ".join([name, *extra])


def _words(cfg: DictConfig) -> Iterator[tuple[str, str]]:
    """``(what, word)`` for each part of the default name: the model with its bottleneck and the dataset, then each
    setting that differs from the defaults."""
    bottleneck = cfg.model.get("bottleneck")
    yield "model", "-".join([model_label(cfg), *([f"b{bottleneck}"] if bottleneck is not None else []),
                             str(cfg.dataset.name)])
    optimizer = str(cfg.optimizer.get("_target_"))
    if optimizer != _default("optimizer").get("_target_"):
        yield "optimizer", _short_name("optimizer", optimizer)
    reference = _preset_of("optimizer", optimizer) or _default("optimizer")
    lr = cfg.optimizer.get("lr")
    if lr is not None and lr != reference.get("lr"):
        yield "lr", f"lr={lr:.4g}"
    scheduler = cfg.scheduler.get("_target_")
    if scheduler:
        yield "scheduler", _short_name("scheduler", str(scheduler))
    if cfg.scheduler.get("warmup_epochs"):
        yield "warmup", f"warmup{cfg.scheduler.warmup_epochs}"
    noise = str(cfg.model.get("noise") or "none")
    if noise != "none":
        level = cfg.model.get("noise_level")
        yield "noise", noise + (f"{level:g}" if level is not None else "")
    if cfg.seed != _defaults_file().get("seed", 0):
        yield "seed", f"seed={cfg.seed}"


def _swept_value(cfg: DictConfig, key: str) -> str:
    """``key=value`` of a swept key, e.g. ``epochs=20`` (the key's last part; a group by its chosen option)."""
    value: Any = _group_choice(key)
    if value is None:
        value = OmegaConf.select(cfg, key, default=None)
    if isinstance(value, DictConfig) and "_target_" in value:  # a group outside a Hydra job: as its preset's name
        value = _short_name(key, str(value._target_)) if value._target_ else "none"
    elif OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    elif isinstance(value, float):
        value = f"{value:.4g}"
    return f"{key.rsplit('.', 1)[-1]}={value}"


def _group_choice(key: str) -> str | None:
    """The option chosen for the config group ``key`` in this Hydra job (``embed`` -> ``all``), if there is one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(key)


def _short_name(group: str, target: str) -> str:
    """A class as the name of the shipped preset that builds it (``torch.optim.SGD`` -> ``sgd``), else its own
    name in lower case (``torch.optim.RAdam`` -> ``radam``)."""
    for name, preset in _presets(group).items():
        if preset.get("_target_") == target:
            return name
    return target.rsplit(".", 1)[-1].lower()


def _preset_of(group: str, target: str) -> dict[str, Any] | None:
    """The shipped preset of ``group`` that builds ``target``, if any."""
    return next((preset for preset in _presets(group).values() if preset.get("_target_") == target), None)


def _default(group: str) -> dict[str, Any]:
    """The preset of ``group`` that the shipped ``config.yaml`` chooses by default."""
    for entry in _defaults_file().get("defaults", []):
        if isinstance(entry, dict) and group in entry:
            return _presets(group).get(str(entry[group]), {})
    return {}


@functools.cache
def _defaults_file() -> dict[str, Any]:
    return _load(resources.files("aeexp.conf") / "config.yaml")


@functools.cache
def _presets(group: str) -> dict[str, dict[str, Any]]:
    """The shipped presets of a config group, by name."""
    folder = resources.files("aeexp.conf") / group
    return {entry.name.removesuffix(".yaml"): _load(entry) for entry in folder.iterdir()
            if entry.name.endswith(".yaml")}


def _load(path: Any) -> dict[str, Any]:
    loaded = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=False)
    return loaded if isinstance(loaded, dict) else {}
