"""The metric and view lists of a config (``metrics``, ``embed.views``), built from their ``_target_`` entries.

An entry names a function (``_target_`` with ``_partial_: true``; or a class whose instances are called) and gives
its settings; its other parameters are the inputs aeexp passes, recognised by name. A metric may take
``train_codes``, ``test_codes``, ``train_labels``, ``test_labels`` and ``seed`` and returns ``{name: value}``; a
view takes ``codes`` (and ``seed``, ``labels``) and returns 2-D points. One that takes labels is left out on
unlabelled images: it said so by its parameters. A view's entry may also give a ``title`` for its figures. A latent
health component (``health``, :mod:`.health`) may take ``codes``, ``model`` and ``images`` and returns
``{name: value}``.

Each entry is checked when its list is built, before any data is read: the target imports, every key is a parameter
of it of the right type (:mod:`aeexp.components`) and within its declared bounds (:mod:`.bounds`), and no setting is
missing. Lists are built from the config being run or composed now, never from a config stored with a run.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aeexp import components
from aeexp.errors import ConfigError, InvalidParameter
from aeexp.evaluation.bounds import check_bounds

METRIC_INPUTS = ("train_codes", "test_codes", "train_labels", "test_labels", "seed")
VIEW_INPUTS = ("codes", "seed", "labels")
HEALTH_INPUTS = ("codes", "model", "images")
LABEL_INPUTS = ("train_labels", "test_labels", "labels")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Files every run writes: a view of one of these names would overwrite one with its <name>.png.
RESERVED_VIEW_NAMES = ("reconstructions", "loss_curves", "interpolation", "prior_samples", "explorer")


@dataclass(frozen=True)
class Component:
    """One built entry: its name (the entry's key), what to call, and the inputs it takes by name."""

    name: str
    compute: Callable[..., Any]
    needs: tuple[str, ...]

    @property
    def needs_labels(self) -> bool:
        return any(name in LABEL_INPUTS for name in self.needs)

    def __call__(self, **inputs: Any) -> Any:
        """Call it with the inputs it takes (of those given)."""
        return self.compute(**{name: inputs[name] for name in self.needs})


@dataclass(frozen=True)
class View(Component):
    """A 2-D view: a :class:`Component` with the title its figures give it."""

    title: str = ""


def _required(signature: inspect.Signature) -> list[str]:
    return [name for name, p in signature.parameters.items()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _build(entry: Any, key: str, inputs: Sequence[str], exclude: Sequence[str] = ()
           ) -> tuple[Callable[..., Any], tuple[str, ...]]:
    """What entry ``entry`` (at config key ``key``) describes, checked, and the inputs it takes."""
    if not hasattr(entry, "items"):  # a mapping: a dict or a DictConfig
        raise ConfigError(f"{key}={entry!r} is invalid: give an entry with _target_ (and _partial_: true for a "
                          "function)")
    target = components.target_of(entry, key)
    if not inspect.isclass(target) and not entry.get("_partial_"):
        raise ConfigError(f"{key}._partial_ is missing: {entry.get('_target_')} is a function, called later with the "
                          f"codes; give {key}._partial_=true")
    given = components.parameters_of(entry, exclude)
    passed = [name for name in given if name in inputs]
    if passed:
        raise ConfigError(f"{key}.{passed[0]} is not a setting: aeexp passes it ({', '.join(inputs)} are passed by "
                          "name); remove it")
    built = components.build(entry, key, exclude=exclude)
    if not callable(built):
        raise ConfigError(f"{key}._target_={entry.get('_target_')} is invalid: it made a {type(built).__name__}, "
                          "not something to call; give _partial_: true for a function")
    signature = inspect.signature(built)
    missing = [name for name in _required(signature) if name not in inputs]
    if missing:
        raise ConfigError(f"{key}.{missing[0]} is missing: {entry.get('_target_')} needs it (give {key}.{missing[0]}"
                          f"=...); the inputs aeexp passes by name are {', '.join(inputs)}")
    try:
        check_bounds(target.__init__ if inspect.isclass(target) else target, given)
    except InvalidParameter as err:
        raise ConfigError(f"{key}.{err.name}={err.value!r} is invalid: {err.expected}.") from None
    return built, tuple(name for name in signature.parameters if name in inputs)


def _entries(node: Any, key: str) -> list[tuple[str, Any]]:
    """The named entries of a list node (a mapping), in order; ``null`` entries (one removed) left out."""
    if node is None:
        return []
    if not hasattr(node, "items"):
        raise ConfigError(f"{key}={node!r} is invalid: give entries by name, e.g. {key}.<name>._target_=...")
    named = []
    for name, entry in node.items():
        if not NAME.fullmatch(str(name)):
            raise ConfigError(f"{key}.{name} is an invalid name: use letters, digits, _ and - (it names metrics and "
                              "files)")
        if entry is not None:
            named.append((str(name), entry))
    return named


def build_metrics(node: Any, key: str = "metrics") -> dict[str, Component]:
    """The metrics of config node ``node`` (``cfg.metrics``), by name, in order; ConfigError naming a bad key."""
    return {name: Component(name, *_build(entry, f"{key}.{name}", METRIC_INPUTS))
            for name, entry in _entries(node, key)}


def build_views(node: Any, key: str = "embed.views") -> dict[str, View]:
    """The views of config node ``node`` (``cfg.embed.views``), by name, in order; ConfigError naming a bad key."""
    views = {}
    for name, entry in _entries(node, key):
        if name in RESERVED_VIEW_NAMES:
            raise ConfigError(f"{key}.{name}: a view cannot be named {name} (a run's {name} file has that name); "
                              "rename it")
        compute, needs = _build(entry, f"{key}.{name}", VIEW_INPUTS, exclude=("title",))
        views[name] = View(name, compute, needs, str(entry.get("title") or name))
    return views


def build_health(node: Any, key: str = "health") -> dict[str, Component]:
    """The latent health components of config node ``node`` (``cfg.health``), by name, in order."""
    return {name: Component(name, *_build(entry, f"{key}.{name}", HEALTH_INPUTS))
            for name, entry in _entries(node, key)}


@dataclass(frozen=True)
class Lists:
    """What a run measures and draws of its codes: the metrics, the 2-D views and the latent health components (each
    epoch and at the end), each by name, in order."""

    metrics: dict[str, Component]
    views: dict[str, View]
    health: dict[str, Component] = field(default_factory=dict)


def build(cfg: Any) -> Lists:
    """The lists of config ``cfg`` (its ``metrics``, ``embed.views`` and ``health``)."""
    return Lists(build_metrics(cfg.get("metrics")), build_views(cfg.embed.get("views")),
                 build_health(cfg.get("health")))


def compose(overrides: Sequence[str] = (), config_dir: Path | None = None) -> Any:
    """aeexp's packaged config composed with ``overrides`` (e.g. ``embed=[tsne,isomap]``), a user's ``config_dir``
    searched too, through Hydra's compose API: what ``python -m aeexp --config-dir DIR OVERRIDES`` would run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from aeexp.config import register_configs

    register_configs()
    search = [f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]"] if config_dir else []
    try:
        with initialize_config_module(config_module="aeexp.conf", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=[*search, *overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).splitlines()[0]) from None


def shipped(views: str = "all", metrics: str = "default") -> Lists:
    """The lists aeexp ships (``embed=<views>``, ``metrics=<metrics>``), for scripts and tests that do not compose a
    whole config: ``shipped().views["tsne"](codes=codes, seed=0)``."""
    return build(compose([f"embed={views}", f"metrics={metrics}"]))


def _shipped_entries(group: str, within: str | None = None) -> dict[str, Any]:
    """The entries of the metric or view configs aeexp ships (``conf/<group>/*.yaml``, under ``within``), by name,
    read from its YAML files as data."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    entries: dict[str, Any] = {}
    for file in files("aeexp.conf").joinpath(group).iterdir():
        if file.name.endswith(".yaml"):
            config = OmegaConf.create(file.read_text(encoding="utf-8"))
            node = config.get(within) if within else config
            entries.update({str(name): entry for name, entry in (node or {}).items() if name != "defaults"})
    return entries


@functools.cache
def shipped_targets() -> frozenset[str]:
    """The ``_target_`` of every metric, view and latent health component aeexp ships (``conf/metrics/*.yaml``,
    ``conf/embed/*.yaml``, ``conf/health/*.yaml``): the functions a stored config may name for them
    (:mod:`aeexp.stored_config`)."""
    return frozenset(_targets(_shipped_entries("embed", "views")) | _targets(_shipped_entries("metrics"))
                     | _targets(_shipped_entries("health")))


def _targets(node: Any) -> set[str]:
    return {str(entry.get("_target_")) for entry in (node or {}).values() if hasattr(entry, "get")}


def for_resumed_run(stored: Any, cfg: Any) -> None:
    """Make ``stored``, the config a run stored, measure as that run did: its own views and metrics (``cfg``'s where
    the resuming command chose them: ``resume.resumed_config`` put them in). Their targets were checked when it was
    read (:mod:`aeexp.stored_config`: aeexp's own, given again by the resuming command, or allowed). A run logged
    before the lists (``embed.methods``, which :func:`aeexp.stored_config.with_schema` makes entries of
    ``embed.views`` by name only) gets aeexp's views of those names; one logged before the metric list, aeexp's."""
    views = stored.embed.views or {}
    if views and not any(hasattr(entry, "get") and entry.get("_target_") for entry in views.values()):
        shipped = _shipped_entries("embed", "views")
        stored.embed.views = {str(name): shipped[str(name)] for name in views if str(name) in shipped}
    if not stored.metrics:  # logged before the metric list: it measured what aeexp's default list measures
        stored.metrics = cfg.metrics
    if not stored.get("health"):  # logged before the health list: the resuming command's
        stored.health = cfg.health
