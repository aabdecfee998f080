"""A stored config read as data: a checkpoint's, a run's ``config.yaml``, a logged model's ``config.yaml``.

Such a file may come from someone else, so nothing in it is executed or resolved. :func:`read` parses its YAML
(OmegaConf's safe loader: no Python objects), refuses any ``${...}`` interpolation in it without resolving it (aeexp
writes its configs resolved, so one there was put there by hand: ``${oc.env:VAR}`` would read the environment), and
checks every ``_target_`` it would build, at any depth, before anything is imported, built, written or run. A target
passes when it is

- what aeexp builds from its own configs: a model class of :mod:`aeexp.models`, a dataset class of
  :mod:`aeexp.data`, a ``torch.optim`` optimizer or a ``torch.optim.lr_scheduler`` schedule;
- the target the current command line's config names at the same key (your own model, given again:
  ``model=mine`` with ``--config-dir``);
- or on the allow-list: ``allow_targets=[mymodels.SparseAE]`` on aeexp's command line, ``--allow-target`` for
  ``aeexp evaluate`` and ``aeexp encode`` (:func:`allowing`).

Anything else is refused in one line naming the key and the target (:class:`StoredConfigError`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Collection, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aeexp.errors import ConfigError

ALLOW_KEY = "allow_targets"  # the command line's allow-list (aeexp.config.Config)
_allowed: set[str] = set()  # the allow-list of the evaluate/encode command under way (allowing)


class StoredConfigError(ConfigError):
    """A stored config is unreadable, holds an interpolation, or names a target aeexp will not build from it."""


@contextlib.contextmanager
def allowing(targets: Collection[str]) -> Iterator[None]:
    """Inside the block, ``targets`` (dotted paths, e.g. ``mymodels.SparseAE``) are on the allow-list of every stored
    config read (the ``--allow-target`` option of ``aeexp evaluate`` and ``aeexp encode``)."""
    added = {str(target) for target in targets} - _allowed
    _allowed.update(added)
    try:
        yield
    finally:
        _allowed.difference_update(added)


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(key, value)`` of a plain container, depth first: ``("model.widths.0", 64)``, dict keys included as
    values of their parent (``("model", {...})``)."""
    yield key, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, value in items:
        yield from _walk(value, f"{key}.{name}" if key else str(name))


def _refuse_interpolations(container: Any, where: str) -> None:
    for key, value in _walk(container):
        if isinstance(value, str) and "${" in value:
            raise StoredConfigError(
                f"{where} holds the interpolation {key}: {value[:120]!r}, which aeexp never writes (it stores configs "
                "resolved) and never resolves in a stored config: refused, nothing was read or run")


def parse(text: str, where: str) -> DictConfig:
    """The config in ``text`` (YAML) as a DictConfig, nothing resolved; StoredConfigError (one line naming
    ``where``) if it is not a YAML mapping or holds an interpolation."""
    try:
        config = OmegaConf.create(text)
    except Exception as err:  # one of YAML's and OmegaConf's many parse errors
        raise StoredConfigError(f"{where} is unreadable ({_one_line(err)})") from None
    if not isinstance(config, DictConfig):
        raise StoredConfigError(f"{where} is not a config (a YAML mapping); it was not written by aeexp")
    _refuse_interpolations(OmegaConf.to_container(config, resolve=False), where)
    return config


def targets(config: DictConfig) -> list[tuple[str, Any]]:
    """Every ``_target_`` in ``config``, at any depth: ``[("model", "aeexp.models.DenseAutoencoder"), ...]``
    (``key`` is the node that holds it; ``""`` for the top)."""
    found = []
    for key, node in _walk(OmegaConf.to_container(config, resolve=False)):
        if isinstance(node, dict) and "_target_" in node:
            found.append((key, node["_target_"]))
    return found


@functools.cache
def _shipped_classes() -> frozenset[str]:
    """The dotted paths of aeexp's own model and dataset classes, as its configs name them and as their modules do,
    and of its metric, view and latent health functions."""
    from aeexp import data, models
    from aeexp.evaluation import lists

    paths = set(lists.shipped_targets())  # the metric, view and health functions of aeexp's own configs
    for package, base in ((models, models.Autoencoder), (data, data.ImageDataset)):
        for name in package.__all__:
            found = getattr(package, name)
            if inspect.isclass(found) and issubclass(found, base):
                paths.update({f"{package.__name__}.{name}", f"{found.__module__}.{found.__qualname__}"})
    return frozenset(paths)


def _torch_optim_class(path: str) -> bool:
    """Whether ``path`` names an optimizer class of ``torch.optim`` or a schedule of ``torch.optim.lr_scheduler``
    (looked up in those modules only: nothing else is imported)."""
    import torch.optim

    parts = path.split(".")
    if parts[:2] != ["torch", "optim"] or len(parts) < 3:
        return False
    found: Any = torch.optim
    for name in parts[2:]:
        found = getattr(found, name, None)
        if found is None:
            return False
    schedules = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    return inspect.isclass(found) and issubclass(found, (torch.optim.Optimizer, *schedules))


def shipped(path: str) -> bool:
    """Whether ``path`` is something aeexp builds from its own configs (see the module's docstring)."""
    return path in _shipped_classes() or _torch_optim_class(path)


def _given_again(current: DictConfig | None, key: str, path: str) -> bool:
    if current is None:
        return False
    node = f"{key}._target_" if key else "_target_"
    return OmegaConf.select(current, node, default=None, throw_on_resolution_failure=False) == path


def check_targets(config: DictConfig, where: str, current: DictConfig | None = None,
                  allowed: Collection[str] = ()) -> None:
    """Refuse (StoredConfigError naming the key and the target) a ``_target_`` of the stored ``config`` that is not
    aeexp's own, not the one the ``current`` config names at that key and not in ``allowed`` or the allow-list
    (:func:`allowing`); nothing named is imported."""
    trusted = set(allowed) | _allowed
    for key, path in targets(config):
        if path is None:  # e.g. scheduler._target_: null, no schedule
            continue
        node = f"{key}._target_" if key else "_target_"
        if not isinstance(path, str):
            raise StoredConfigError(f"{where} has {node}={path!r}, not a dotted path; it was not written by aeexp")
        if shipped(path) or path in trusted or _given_again(current, key, path):
            continue
        raise StoredConfigError(
            f"{where} has {node}={path}: from a stored config aeexp builds only its own classes (aeexp.models, "
            f"aeexp.data, torch.optim), one given again on the command line ({key}=...) or one allowed "
            f"({ALLOW_KEY}=[{path}]; --allow-target {path} for evaluate and encode); nothing was built or run")


def read(text: str, where: str, current: DictConfig | None = None, allowed: Collection[str] = ()) -> DictConfig:
    """The stored config in ``text``, parsed as data and its targets checked (:func:`parse`, :func:`check_targets`)."""
    config = parse(text, where)
    check_targets(config, where, current, allowed)
    return config


def with_schema(config: DictConfig, where: str) -> DictConfig:
    """A stored run config merged into aeexp's schema (defaults for keys an older aeexp did not write; the keys
    that moved out of ``trainer`` and ``embed``, which runs made before stored, dropped: :data:`aeexp.config.MOVED`,
    :data:`aeexp.config.MOVED_EMBED`; the views of a run stored before the view lists, its ``embed.methods``, become
    entries of ``embed.views`` by name only, filled on resume with aeexp's own views:
    :func:`aeexp.evaluation.lists.for_resumed_run`); StoredConfigError (one line) for a value the schema refuses."""
    from aeexp.config import MOVED, MOVED_EMBED, Config

    for group, moved in (("trainer", MOVED), ("embed", MOVED_EMBED)):
        node = config.get(group)
        if OmegaConf.is_dict(node):
            values = {key: node.pop(key, None) for key in moved}
            if group == "embed" and OmegaConf.is_list(values["methods"]) and not node.get("views"):
                node.views = {str(method): {} for method in values["methods"]}
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), config)
    except Exception as err:  # OmegaConf's validation errors
        raise StoredConfigError(f"{where} does not fit aeexp's config ({_one_line(err)})") from None
